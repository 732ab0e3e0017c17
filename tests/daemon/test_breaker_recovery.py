"""A site's circuit comes back after its half-open trial is ended by the client (issue 13).

Against the real daemon and a scripted site on loopback: the site fails until its circuit
opens; after the cooldown the trial request's client hangs up, (a) before the head arrives
(its timeout) and then (b) mid-stream (stop pressed). Neither says anything about the site:
it stays half-open, the next request is the trial, and it closes the circuit."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.daemon.conftest import M8, DaemonProc, chat, start_daemon, write_inventory
from tests.daemon.upstream import TimedUpstream

SOLO = "solo-h100"
SOLO_INV = {SOLO: {"gpu": "H100", "gpus": 1, "capacity": 8, "cost": 2.0, "rtt_ms": 1.0}}
COOLDOWN_S = 10.0  # DaemonConfig.breaker_cooldown_s


class FlakySite(TimedUpstream):
    """A TimedUpstream that answers 503 while ``failing`` (its health route stays 200, so only
    the breaker keeps it out)."""

    def __init__(self) -> None:
        self.failing = False
        super().__init__(first_ms=0.0, interval_ms=1.0)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.failing:
            await request.read()
            self.requests += 1
            return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=503)
        return await super()._chat(request)


def site_status(d: DaemonProc) -> dict:
    return next(s for s in httpx.get(d.url + "/grid/status").json()["sites"] if s["site"] == SOLO)


def wait_for(d: DaemonProc, check, timeout: float) -> dict:  # type: ignore[no-untyped-def]
    """The site's status once ``check(status)`` holds (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        status = site_status(d)
        if check(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


@pytest.fixture
def solo(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = write_inventory(tmp_path / "inv", SOLO_INV)
    site = FlakySite()
    try:
        path = root / "sites" / f"{SOLO}.yaml"
        path.write_text(re.sub(r"endpoint: .*", f"endpoint: {site.url}", path.read_text()))
        d = start_daemon(root, "--region", "metro")
        try:
            yield d, site
        finally:
            d.stop()
    finally:
        site.close()


def test_a_trial_ended_by_its_client_leaves_the_site_half_open_and_the_next_request_is_the_trial(
    solo,  # type: ignore[no-untyped-def]
) -> None:
    d, site = solo
    assert d.post(chat()).status_code == 200
    site.failing = True
    for _ in range(3):  # DaemonConfig.breaker_failures
        r = d.post(chat())
        assert r.status_code == 502, r.text
    status = site_status(d)
    assert status["breaker"] == "open" and status["failures"] == 3
    site.failing = False
    status = wait_for(d, lambda s: s["breaker"] == "half-open", COOLDOWN_S + 5)
    assert status["breaker"] == "half-open" and status["probe_ok"] is True
    sent = site.requests

    # (a) the trial's client gives up before the head: the answer takes 5 s, the client 0.3 s
    site.interval_ms = 5000.0 / 7
    with pytest.raises(httpx.ReadTimeout):
        d.post(chat(max_tokens=8), timeout=0.3)
    assert site.requests == sent + 1  # it was sent: the trial
    status = wait_for(d, lambda s: s["in_flight"] == 0, 10)
    assert status["in_flight"] == 0
    assert status["breaker"] == "half-open" and status["failures"] == 3  # neither failure nor success

    # (b) the next request is the trial; its client presses stop after the first token
    site.interval_ms = 200.0  # 50 tokens: 10 s of stream
    with httpx.stream("POST", d.url + "/v1/chat/completions", json=chat(stream=True, max_tokens=50)) as r:
        assert r.status_code == 200 and r.headers["x-grid-site"] == SOLO
        first = next(r.iter_raw())
        assert first.startswith(b"data: ")
    assert site.requests == sent + 2
    status = wait_for(d, lambda s: s["in_flight"] == 0, 10)
    assert status["in_flight"] == 0
    assert status["breaker"] == "half-open" and status["failures"] == 3

    # the next request is the trial again, it succeeds, and the circuit closes
    site.interval_ms = 1.0
    r = d.post(chat(), timeout=10)
    assert r.status_code == 200 and r.headers["x-grid-site"] == SOLO, r.text
    status = site_status(d)
    assert status["breaker"] == "closed" and status["failures"] == 3  # the site's total, kept
    for i in range(3):
        r = d.post(chat(f"after {i}", stream=bool(i % 2)), timeout=10)
        assert r.status_code == 200, r.text
    metrics = httpx.get(d.url + "/metrics").text
    # the two clients that left (before the head, then mid-stream) count as 499, "client closed request"
    gone = rf'gridctl_requests_total{{model="{M8}",site="{SOLO}",status="4xx"}} 2\b'
    assert re.search(gone, metrics), metrics
