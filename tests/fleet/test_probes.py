"""Endpoint probes: TLS verification is never weakened by skipping the CA bundle."""

from __future__ import annotations

import ssl
import time
from dataclasses import replace

from gridctl.fleet.probes import _tls_context
from gridctl.inventory.load import load_inventory
from tests.conftest import EXAMPLE


def test_tls_endpoints_get_httpx_default_verification() -> None:
    sites = list(load_inventory(EXAMPLE).sites)
    plain = [replace(s, endpoint="http://127.0.0.1:9") for s in sites[:2]]
    assert any(s.endpoint.startswith("https://") for s in sites)
    assert _tls_context([*plain, sites[0]]) is True
    assert _tls_context([replace(sites[0], endpoint="HTTPS://x.example.net")]) is True


def test_plain_http_endpoints_get_a_strict_context_without_cas() -> None:
    sites = list(load_inventory(EXAMPLE).sites)
    ctx = _tls_context([replace(s, endpoint="http://127.0.0.1:9") for s in sites[:2]])
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == 0  # trusts nobody: TLS through it would fail, never pass


def test_endpoint_check_started_early_counts_every_site_once() -> None:
    from gridctl.fleet.healthcheck import EndpointCheck
    from tests.fleet.endpoint import FakeEndpoint

    good, slow = FakeEndpoint(), FakeEndpoint(delay_s=0.5)
    try:
        sites = list(load_inventory(EXAMPLE).sites)[:2]
        sites = [replace(sites[0], endpoint=good.url), replace(sites[1], endpoint=slow.url)]
        check = EndpointCheck(sites, {}, 5.0)
        deadline = time.monotonic() + 5
        while not good.requests or len(good.requests) < 2:  # the fast site is done, the slow one not
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ticks: list[int] = []
        check.watch(lambda: ticks.append(1))  # the one done already is counted at once
        probes = check.result()
        check.close()
        assert [p.health_status_code for p in probes] == [200, 200]
        assert len(ticks) == 2
    finally:
        good.close()
        slow.close()
