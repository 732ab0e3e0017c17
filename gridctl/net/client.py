"""A small HTTP/1.1 client on asyncio for one job: the daemon's requests to its sites.

One ``asyncio.Protocol`` per connection, kept alive and pooled per (scheme, host, port);
answers parsed by llhttp (``httptools``, Node.js's parser), one parser per connection, every
leniency off. What it does, and nothing more:

- ``await pool.request(method, url, headers, body, ...)`` writes the request in one send
  and returns when the response head has arrived (1xx heads are skipped); the body is then
  read whole (``read()``) or piece by piece as it arrives (``chunks()``), de-chunked;
- bodies by Content-Length, chunked, or up to the close; HEAD/204/304 have none;
- a head llhttp refuses, or one it takes but RFC 9112 does not (a status outside 100-599,
  101, Transfer-Encoding split over two lines or beside HTTP/1.0, a transfer coding other
  than chunked), or over the limits of ``gridctl.net.syntax`` (64 KiB, 100 header lines, 8 KiB
  for one), is a ``ProtocolError``; so is a malformed chunked body;
- timeouts: to connect, until the response head, and between two pieces of the body;
  ``Response.wait_body(timeout)`` bounds the wait for a body's first byte (a stream's first
  token), ``read(limit=...)`` the size of a body read whole (``AnswerTooLarge``);
- at most ``MAX_INTERIM`` 1xx heads before the answer (a flood of them is a ``ProtocolError``);
- a connection goes back to the pool only when its response was read to the end and both
  sides keep it alive; idle connections expire after ``idle_s``, and one the peer has closed
  is never reused (it is dropped when the next request to that site looks for one); a byte
  nobody asked for (behind an answer, or on an idle connection) closes it;
- a reused connection that the site closed while it sat idle (the request raced the close)
  is retried once on a new connection, when not a byte of the answer had arrived;
- back-pressure: reading pauses while more than ``_HIGH_WATER`` bytes wait to be consumed;
- https with the system's trust store, or the ``tls`` context a request names (a site's private
  CA and client certificate): connections are pooled per context too, so one opened with a
  site's client certificate never carries another site's request.

Errors are :class:`UpstreamError` subclasses (``ConnectError``, ``UpstreamTimeout``,
``ProtocolError``, ``Disconnected``), so a caller tells a dead site from a slow one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from gridctl.net.errors import (
    ClosedBeforeAnswer,
    ConnectError,
    Disconnected,
    ProtocolError,
)
from gridctl.net.response import HEAD, Conn, Key, Response
from gridctl.net.syntax import CONTROL, TOKEN

# a reused connection closed this soon after the request was written was closed by the site
# while idle (the two crossed): the request is sent again. Later, the site had it: never again.
_STALE_WINDOW_S = 0.5
# the header names that passed TOKEN, kept: at most this many, of at most this length (a longer
# one is checked each time), so a client sending new 8 KiB names holds 1 MiB, not 32 MiB
NAMES_MAX = 4096
NAME_KEPT_LEN = 256


class Pool:
    """Keep-alive connections to sites, reused across requests."""

    def __init__(self, connect_timeout: float = 2.0, idle_s: float = 30.0, max_idle: int = 256) -> None:
        self.connect_timeout = connect_timeout
        self.idle_s = idle_s
        self.max_idle = max_idle  # per (scheme, host, port)
        self._idle: dict[Key, deque[Conn]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._targets: dict[str, tuple[tuple[str, str, int], str, str]] = {}
        self._names: set[str] = set()  # header names that passed TOKEN
        self.connects = 0  # new connections opened (for tests and the benchmark)
        self.closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        head_timeout: float = 30.0,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Response:
        """Send one request; return when the response head is in. Raises UpstreamError.
        ``tls``: the context for an https URL (None: the system's trust store)."""
        (scheme, hostname, port), target, host = self._target(url)
        key = (scheme, hostname, port, tls if scheme == "https" else None)
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n"]
        names = self._names  # header names that passed TOKEN once: a few, kept (bounded)
        for name, value in headers:
            if name not in names:
                if TOKEN.fullmatch(name) is None:
                    raise _bad_header(name)
                if len(names) < NAMES_MAX and len(name) <= NAME_KEPT_LEN:
                    names.add(name)
            if not value.isprintable() and CONTROL.search(value):  # printable: no control character
                raise _bad_header(name)
            lines.append(f"{name}: {value}\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}\r\n")
        lines.append("\r\n")
        try:
            wire = "".join(lines).encode("latin-1") + body
        except UnicodeEncodeError:
            raise ProtocolError("refusing to send a header that is not latin-1 text") from None
        conn = self._get(key)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(key, connect_timeout or self.connect_timeout)
        deadline = time.monotonic() + head_timeout  # one allowance, even across a resend
        try:
            return await self._exchange(
                conn, wire, method, deadline, head_timeout, read_timeout or head_timeout
            )
        except ClosedBeforeAnswer as exc:
            if not reused or exc.after > _STALE_WINDOW_S:
                raise Disconnected(str(exc)) from None
        # the site closed the idle connection as we sent on it: once more, on a new one
        conn = await self._connect(key, connect_timeout or self.connect_timeout)
        try:
            return await self._exchange(
                conn, wire, method, deadline, head_timeout, read_timeout or head_timeout
            )
        except ClosedBeforeAnswer as exc:
            raise Disconnected(str(exc)) from None

    async def _exchange(
        self,
        conn: Conn,
        wire: bytes,
        method: str,
        deadline: float,
        head_timeout: float,
        read_timeout: float,
    ) -> Response:
        assert conn.transport is not None
        conn.begin(method == "HEAD")
        try:
            conn.transport.write(wire)
            conn.sent = time.monotonic()
            while conn.state == HEAD:  # until the final head is in (1xx heads are skipped)
                await conn.more(
                    conn.left(deadline, head_timeout, "response head"), "response head", head_timeout
                )
        except BaseException:
            conn.close()
            raise
        return Response(self, conn, read_timeout)

    def _target(self, url: str) -> tuple[tuple[str, str, int], str, str]:
        hit = self._targets.get(url)
        if hit is not None:
            return hit
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]  # as in the URL: with the port only when it has one
        hit = ((parts.scheme, parts.hostname, port), target, host)
        if len(self._targets) < 4096:
            self._targets[url] = hit
        return hit

    def _get(self, key: Key) -> Conn | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            if conn.alive() and now - conn.idle_since < self.idle_s:
                return conn
            conn.close()
        return None

    def _put(self, conn: Conn) -> None:
        if self.closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, deque())
        if len(idle) >= self.max_idle:
            idle.popleft().close()
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _connect(self, key: Key, timeout: float) -> Conn:
        loop = asyncio.get_running_loop()
        scheme, host, port, tls = key
        kwargs: dict[str, Any] = {}
        if scheme == "https":
            if tls is None:
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()
                tls = self._ssl
            kwargs = {"ssl": tls, "server_hostname": host}
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: Conn(loop, key), host, port, **kwargs)
        except TimeoutError:
            raise ConnectError(f"connect to {host}:{port} timed out after {timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(
                f"TLS with {host}:{port}: its certificate is not trusted ({exc.verify_message}); "
                "for a private CA, set tls_ca (the site's, or grid.yaml's defaults) to its certificate"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS with {host}:{port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self.connects += 1
        return conn

    def idle_count(self) -> int:
        return sum(len(q) for q in self._idle.values())

    def close(self) -> None:
        """Close every idle connection; connections in use close when their response is done."""
        self.closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


def _bad_header(name: str) -> ProtocolError:
    # a CR or LF here would end the head early and smuggle what follows
    return ProtocolError(f"refusing to send header {name[:40]!r}: a control character in it")
