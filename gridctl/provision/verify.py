"""Wait, bounded, until a provisioned endpoint answers and serves the expected models.

Uses the probe and classifier of ``gridctl health``: the endpoint is up when
its health route answers 2xx and ``/v1/models`` lists every expected model
(slow answers count as up; ``gridctl health`` reports them as degraded).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gridctl.core.health import Status, classify_endpoint
from gridctl.core.inventory.model import Location, Site
from gridctl.fleet.http_client import EndpointClient
from gridctl.fleet.probes import probe_endpoint
from gridctl.provision.render import VerifyTarget

POLL_S = 0.5
REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Verified:
    ok: bool
    seconds: float
    error: str | None  # the endpoint's last answer when it never came up


def _as_site(target: VerifyTarget) -> Site:
    """probe_endpoint reads a site's endpoint, health route, API key variable and TLS files."""
    return Site(
        name="provision-verify",
        kind="edge",
        region="-",
        jurisdiction="US",
        location=Location(0.0, 0.0),
        endpoint=target.url,
        health_path=target.health_path,
        api_key_env=target.api_key_env,
        tls=target.tls,
    )


def check_api_key(target: VerifyTarget, environ: Mapping[str, str]) -> str | None:
    """Why the endpoint's API key cannot be sent (a control character in it), or None."""
    return _as_site(target).api_key_problem(environ)


def wait_for_endpoint(
    target: VerifyTarget,
    environ: Mapping[str, str],
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Verified:
    """Poll until up, ``target.timeout`` seconds, or ``deadline``, whichever comes first."""
    start = clock()
    until = min(deadline, start + target.timeout)
    site = _as_site(target)
    problem = site.api_key_problem(environ)
    if problem:  # no wait: the key will not change while we poll
        return Verified(False, clock() - start, f"{target.url}: {problem}")
    error = "not checked"
    client = EndpointClient()
    while True:
        left = until - clock()
        if left <= 0:
            break
        probe = probe_endpoint(client, site, environ, min(REQUEST_TIMEOUT_S, max(left, 0.1)))
        health = classify_endpoint(probe, list(target.models))
        if health.status in (Status.OK, Status.DEGRADED):
            return Verified(True, clock() - start, None)
        error = "; ".join(health.reasons) or health.status.value
        sleep(min(POLL_S, max(0.0, until - clock())))
    return Verified(False, clock() - start, error if target.url in error else f"{target.url}: {error}")
