"""The remote probes of ``gridctl health``: GPUs over SSH, site endpoints over HTTP.

Each probe returns the pure layer's readings (``NodeProbe``, ``EndpointProbe``);
classification happens in ``gridctl.core.health``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from gridctl import __version__
from gridctl.core.health import EndpointProbe, NodeProbe, build_node_probe_command, parse_node_probe
from gridctl.core.health.thresholds import DEFAULT, Thresholds
from gridctl.core.inventory.model import Site
from gridctl.fleet.ssh import Session
from gridctl.net.tls import TlsFileError, load_client_context


def probe_gpus(session: Session, deadline: float, thresholds: Thresholds = DEFAULT) -> NodeProbe:
    """Run the nvidia-smi/kernel-log probe on the node (one command) and parse it."""
    left = max(1.0, deadline - time.monotonic() - 1.0)
    script = build_node_probe_command(timeout_s=min(thresholds.smi_timeout_s, left))
    result = session.run(script, deadline)
    if result.timed_out:
        return NodeProbe(smi_error=f"the GPU probe did not finish before the {left + 1.0:.0f}s deadline")
    return parse_node_probe(result.stdout, result.stderr, result.rc)


class EndpointClient:
    """GET requests for the endpoint probes, on the standard library's http.client.

    Two GETs per site need nothing more, and http.client costs ~3 ms of start-up
    where httpx costs ~30 ms (its import and its first request), time during
    which ``gridctl health`` has not yet reached its nodes. Like the
    ``httpx.Client(trust_env=False, follow_redirects=False)`` it replaces: no
    proxy from the environment, redirects are answers, not followed, and https
    is verified against certifi's CA bundle (the context built on first use:
    plain-HTTP runs never load the bundle). Safe to share between threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def connection(
        self, url: str, timeout: float, tls: ssl.SSLContext | None = None
    ) -> http.client.HTTPConnection:
        """An unopened connection to ``url``'s host (http.client opens it, and reopens it
        when the server closed it after a response); ``tls``: the site's own context (its
        ``tls_ca``, client certificate), else certifi's bundle."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=tls or self._context())
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                import certifi

                self._tls = ssl.create_default_context(cafile=certifi.where())
            return self._tls


class _ConnectFailed(Exception):
    pass


def _get(conn: http.client.HTTPConnection, path: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
    if conn.sock is None:
        try:
            conn.connect()
        except OSError as exc:  # refused, unreachable, TLS refused, timed out
            raise _ConnectFailed(exc) from exc
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
        tls = load_client_context(site.tls.ca, site.tls.cert, site.tls.key)
    except TlsFileError as exc:
        return EndpointProbe(error=f"{base}{site.health_path}: {exc}")
    conn = client.connection(base, timeout, tls)
    try:
        try:
            start = time.perf_counter()
            status, _ = _get(conn, prefix + site.health_path, headers)
            rtt_ms = (time.perf_counter() - start) * 1000
        except (_ConnectFailed, OSError, http.client.HTTPException) as exc:
            return EndpointProbe(error=f"{base}{site.health_path}: {_describe(exc)}")
        models: tuple[str, ...] | None = None
        try:
            code, body = _get(conn, prefix + "/v1/models", headers)
            if code == 200:
                data = json.loads(body).get("data", [])
                models = tuple(m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))
        except (_ConnectFailed, OSError, http.client.HTTPException, ValueError, AttributeError):
            models = None
        return EndpointProbe(health_status_code=status, models=models, rtt_ms=rtt_ms)
    finally:
        conn.close()


def _describe(exc: Exception) -> str:
    cause = exc.__cause__ if isinstance(exc, _ConnectFailed) else exc
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(exc, _ConnectFailed):
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
