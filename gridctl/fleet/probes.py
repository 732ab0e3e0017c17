"""The remote probes of ``gridctl health``: GPUs over SSH, site endpoints over HTTP.

Each probe returns the pure layer's readings (``NodeProbe``, ``EndpointProbe``);
classification happens in ``gridctl.health``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from gridctl.fleet.libs import load_httpx
from gridctl.fleet.ssh import Session
from gridctl.health import EndpointProbe, NodeProbe, build_node_probe_command, parse_node_probe
from gridctl.health.thresholds import DEFAULT, Thresholds
from gridctl.inventory.model import Site


def probe_gpus(session: Session, deadline: float, thresholds: Thresholds = DEFAULT) -> NodeProbe:
    """Run the nvidia-smi/kernel-log probe on the node (one command) and parse it."""
    left = max(1.0, deadline - time.monotonic() - 1.0)
    script = build_node_probe_command(timeout_s=min(thresholds.smi_timeout_s, left))
    result = session.run(script, deadline)
    if result.timed_out:
        return NodeProbe(smi_error=f"the GPU probe did not finish before the {left + 1.0:.0f}s deadline")
    return parse_node_probe(result.stdout, result.stderr, result.rc)


def probe_endpoint(client: object, site: Site, environ: Mapping[str, str], timeout: float) -> EndpointProbe:
    """GET the site's health route (timed: the round trip) and /v1/models."""
    import httpx

    assert isinstance(client, httpx.Client)
    headers = site.auth_headers(environ)
    base = site.endpoint.rstrip("/")
    try:
        start = time.perf_counter()
        health = client.get(base + site.health_path, headers=headers, timeout=timeout)
        rtt_ms = (time.perf_counter() - start) * 1000
    except httpx.HTTPError as exc:
        return EndpointProbe(error=f"{base}{site.health_path}: {_describe(exc)}")
    models: tuple[str, ...] | None = None
    try:
        resp = client.get(base + "/v1/models", headers=headers, timeout=timeout)
        if resp.status_code == 200:
            data = resp.json().get("data", [])
            models = tuple(m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))
    except (httpx.HTTPError, ValueError, AttributeError):
        models = None
    return EndpointProbe(health_status_code=health.status_code, models=models, rtt_ms=rtt_ms)


def _describe(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectTimeout | httpx.ReadTimeout | httpx.PoolTimeout):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _tls_context(sites: Sequence[Site]) -> ssl.SSLContext | bool:
    """httpx's default (``True``: a context holding certifi's CA bundle, ~25 ms of CPU
    to build) when any endpoint uses TLS. Otherwise a context that verifies just as
    strictly but trusts no CA: plain-HTTP requests never touch it, and with
    redirects not followed no request can reach TLS, so none needs the bundle."""
    if any(s.endpoint.lower().startswith("https:") for s in sites):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on


def probe_endpoints(
    sites: Sequence[Site],
    environ: Mapping[str, str],
    timeout: float,
    workers: int = 32,
    on_done: Callable[[Site, EndpointProbe], None] | None = None,
) -> list[EndpointProbe]:
    """Probe every site's endpoint concurrently; results in input order."""
    if not sites:
        return []
    load_httpx()  # the first import of httpx in a run: see libs
    import httpx

    # trust_env=False: endpoints are reached directly, never through a proxy from the environment
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(sites))))
    verify = _tls_context(sites)
    with httpx.Client(trust_env=False, follow_redirects=False, verify=verify) as client, pool:
        futures = [pool.submit(probe_endpoint, client, s, environ, timeout) for s in sites]
        results = []
        for site, fut in zip(sites, futures, strict=True):
            probe = fut.result()
            if on_done is not None:
                on_done(site, probe)
            results.append(probe)
    return results
