"""The HTTP client of the CLI's probes toward sites: ``gridctl health``'s endpoint probes,
``provision verify``, ``route probe`` and ``route test --live`` all open their connections here.

One library for all of them, the standard library's ``http.client``, not httpx (a dependency,
used by the lab and the demo). Each probe is a GET or two, or one streamed POST, on one
connection per site: nothing there needs a pool, HTTP/2 or redirects. What decides is start-up:
``import http.client, ssl`` costs ~3 ms, httpx's import plus the first ``Client()`` (which loads
certifi's bundle even for plain HTTP) ~30 ms on a quiet machine (3x to 5x that on a loaded one:
``python -c 'import time; t=time.perf_counter(); import httpx; httpx.Client(trust_env=False);
print(time.perf_counter()-t)'``), paid by ``gridctl health`` in the single-threaded window
before its SSH fan-out starts (it made health 1.14x ``xargs ssh`` at 50 nodes).

What every connection made here does, as the ``httpx.Client(trust_env=False)`` it replaced did:

- no proxy from the environment (``http.client`` reads none), redirects are answers, not followed;
- ALPN: none offered, unless the caller names it (route probe and --live offer ``http/1.1``,
  as httpx did on every context, the site's own included; health never offered any);
- https verified against the site's own context when its inventory names ``tls_ca`` /
  ``tls_cert`` (:func:`site_context`, built by ``gridctl.net.tls``), else certifi's CA bundle,
  loaded on first use only, so plain-HTTP runs never read it;
- the connection's timeout bounds the TCP connect and the TLS handshake, and each read and
  write after it (a wait for the next bytes, not for the whole answer) unless
  :func:`open_connection` is given a ``read_timeout`` of its own.

A connection that cannot be made raises :class:`ConnectFailed` (its ``__cause__`` the
``OSError``: refused, unreachable, TLS refused, timed out), so callers tell "could not reach
it" from "it stopped answering". The daemon has its own client (``gridctl.net``).
"""

from __future__ import annotations

import http.client
import ssl
import threading
from urllib.parse import urlsplit

from gridctl.core.inventory.model import Site
from gridctl.net.tls import load_client_context


class ConnectFailed(Exception):
    """The TCP connect or the TLS handshake failed; ``__cause__`` says how."""


class EndpointClient:
    """Connections to site endpoints, sharing certifi's context (built on first use). Safe to
    share between threads; each connection is used by one thread at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def connection(
        self,
        url: str,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        alpn: tuple[str, ...] = (),
    ) -> http.client.HTTPConnection:
        """An unopened connection to ``url``'s host, each wait bounded by ``timeout``
        (:func:`open_connection` opens it; http.client reopens it when the server closed it
        after a response); ``tls``: the site's own context (:func:`site_context`), else
        certifi's bundle; ``alpn``: the protocols its TLS handshake offers (none: no ALPN)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "https":
            context = tls or self._context()
            if alpn:
                context.set_alpn_protocols(list(alpn))
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                import certifi

                self._tls = ssl.create_default_context(cafile=certifi.where())
            return self._tls


def site_context(site: Site) -> ssl.SSLContext | None:
    """The context of the site's ``tls_ca`` / ``tls_cert`` / ``tls_key``, or None (certifi's
    bundle). Raises ``gridctl.net.tls.TlsFileError``."""
    return load_client_context(site.tls.ca, site.tls.cert, site.tls.key)


def open_connection(conn: http.client.HTTPConnection, read_timeout: float | None = None) -> None:
    """Connect ``conn`` unless it is open (within its own timeout), then, given
    ``read_timeout``, let each later read and write wait that long instead; raises
    :class:`ConnectFailed` when it cannot be connected."""
    if _is_open(conn):
        return
    try:
        conn.connect()
    except OSError as exc:  # refused, unreachable, TLS refused, timed out
        raise ConnectFailed(exc) from exc
    if read_timeout is not None:
        conn.sock.settimeout(read_timeout)


def _is_open(conn: http.client.HTTPConnection) -> bool:
    return conn.sock is not None


def request_path(url: str) -> str:
    """The path (and query) http.client sends for ``url``."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
