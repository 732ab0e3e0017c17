"""The remote probes of ``gridctl health``: GPUs over SSH, site endpoints over HTTP.

Each probe returns the pure layer's readings (``NodeProbe``, ``EndpointProbe``);
classification happens in ``gridctl.core.health``.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from gridctl import __version__
from gridctl.core.health import EndpointProbe, NodeProbe, build_node_probe_command, parse_node_probe
from gridctl.core.health.thresholds import DEFAULT, Thresholds
from gridctl.core.inventory.model import Site
from gridctl.fleet.http_client import ConnectFailed, EndpointClient, open_connection, site_context
from gridctl.fleet.ssh import Session
from gridctl.net.tls import TlsFileError


def probe_gpus(session: Session, deadline: float, thresholds: Thresholds = DEFAULT) -> NodeProbe:
    """Run the nvidia-smi/kernel-log probe on the node (one command) and parse it."""
    left = max(1.0, deadline - time.monotonic() - 1.0)
    script = build_node_probe_command(timeout_s=min(thresholds.smi_timeout_s, left))
    result = session.run(script, deadline)
    if result.timed_out:
        return NodeProbe(smi_error=f"the GPU probe did not finish before the {left + 1.0:.0f}s deadline")
    return parse_node_probe(result.stdout, result.stderr, result.rc)


def _get(conn: http.client.HTTPConnection, path: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
    open_connection(conn)
    conn.request("GET", path, headers={"User-Agent": USER_AGENT, **headers})
    response = conn.getresponse()
    return response.status, response.read()


USER_AGENT = f"gridctl/{__version__}"


def probe_endpoint(
    client: EndpointClient, site: Site, environ: Mapping[str, str], timeout: float
) -> EndpointProbe:
    """GET the site's health route (timed: the round trip) and /v1/models."""
    base = site.endpoint.rstrip("/")
    problem = site.api_key_problem(environ)
    if problem:  # http.client would raise ValueError, quoting the key
        return EndpointProbe(error=f"{base}{site.health_path}: {problem}")
    headers = site.auth_headers(environ)
    prefix = urlsplit(base).path
    try:
        tls = site_context(site)
    except TlsFileError as exc:
        return EndpointProbe(error=f"{base}{site.health_path}: {exc}")
    conn = client.connection(base, timeout, tls)
    try:
        try:
            start = time.perf_counter()
            status, _ = _get(conn, prefix + site.health_path, headers)
            rtt_ms = (time.perf_counter() - start) * 1000
        except (ConnectFailed, OSError, http.client.HTTPException) as exc:
            return EndpointProbe(error=f"{base}{site.health_path}: {_describe(exc)}")
        models: tuple[str, ...] | None = None
        try:
            code, body = _get(conn, prefix + "/v1/models", headers)
            if code == 200:
                data = json.loads(body).get("data", [])
                models = tuple(m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))
        except (ConnectFailed, OSError, http.client.HTTPException, ValueError, AttributeError):
            models = None
        return EndpointProbe(health_status_code=status, models=models, rtt_ms=rtt_ms)
    finally:
        conn.close()


def _describe(exc: Exception) -> str:
    cause = exc.__cause__ if isinstance(exc, ConnectFailed) else exc
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectFailed):
        return f"cannot connect ({cause})"
    return f"{type(exc).__name__}: {exc}"


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
    client = EndpointClient()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(sites)))) as pool:
        futures = [pool.submit(probe_endpoint, client, s, environ, timeout) for s in sites]
        results = []
        for site, fut in zip(sites, futures, strict=True):
            probe = fut.result()
            if on_done is not None:
                on_done(site, probe)
            results.append(probe)
    return results
