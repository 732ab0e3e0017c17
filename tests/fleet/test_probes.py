"""Endpoint probes: TLS verification is never weakened by skipping the CA bundle."""

from __future__ import annotations

import ssl
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
