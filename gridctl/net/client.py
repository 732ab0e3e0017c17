"""A small HTTP/1.1 client on asyncio for one job: the daemon's requests to its sites.

One ``asyncio.Protocol`` per connection, kept alive and pooled per (scheme, host, port).
What it does, and nothing more:

- ``await pool.request(method, url, headers, body, ...)`` writes the request in one send
  and returns when the response head has arrived (1xx heads are skipped); the body is then
  read whole (``read()``) or piece by piece as it arrives (``chunks()``), de-chunked;
- bodies by Content-Length, chunked, or up to the close; HEAD/204/304 have none;
- timeouts: to connect, until the response head, and between two pieces of the body;
- a connection goes back to the pool only when its response was read to the end and both
  sides keep it alive; idle connections expire after ``idle_s``, and one the peer has closed
  is never reused (it is dropped when the next request to that site looks for one);
- a reused connection that the site closed while it sat idle (the request raced the close)
  is retried once on a new connection, when not a byte of the answer had arrived;
- back-pressure: reading pauses while more than ``_HIGH_WATER`` bytes wait to be consumed;
- https with the system's trust store.

Errors are :class:`UpstreamError` subclasses (``ConnectError``, ``UpstreamTimeout``,
``ProtocolError``, ``Disconnected``), so a caller tells a dead site from a slow one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from typing import Any
from urllib.parse import urlsplit

from gridctl.net.syntax import CONTROL, TOKEN, ChunkedDecoder, ChunkError

_MAX_HEAD = 64 << 10
_HIGH_WATER = 256 << 10
_NO_BODY_STATUS = frozenset({204, 304})
_CHUNK_ERRORS = {
    "line": "malformed chunk size line from the site",
    "size": "malformed chunk size from the site",
    "crlf": "malformed chunk from the site",
    "trailers": f"chunked body trailers from the site over {_MAX_HEAD} bytes",
}
# a reused connection closed this soon after the request was written was closed by the site
# while idle (the two crossed): the request is sent again. Later, the site had it: never again.
_STALE_WINDOW_S = 0.5


class UpstreamError(Exception):
    """The site could not be reached, or broke off, or answered what is not HTTP."""


class ConnectError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class ProtocolError(UpstreamError):
    pass


class Disconnected(UpstreamError):
    """The connection closed before the response (or its body) was complete."""


class _ClosedBeforeAnswer(Disconnected):
    """Closed before a byte of the answer (``after`` seconds after the request was written)."""

    def __init__(self, message: str, after: float) -> None:
        super().__init__(message)
        self.after = after


class _Conn(asyncio.Protocol):
    __slots__ = (
        "loop",
        "key",
        "transport",
        "buf",
        "waiter",
        "eof",
        "error",
        "paused",
        "idle_since",
        "pooled",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False  # the peer closed (or the connection was lost)
        self.error: BaseException | None = None
        self.paused = False
        self.idle_since = 0.0
        self.pooled = False  # idle in the pool: no byte may arrive

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        if self.pooled:  # unasked-for bytes would be read as the next request's answer
            self.close()
            return
        self.buf += data
        if len(self.buf) > _HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    # -- used by Response -------------------------------------------------------------------

    async def more(self, timeout: float, what: str, limit: float | None = None) -> None:
        """Wait until more bytes arrive or the peer closes; raise on timeout (the message
        names ``limit``, the caller's whole allowance, when the wait is what is left of it)."""
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        fut = self.loop.create_future()
        self.waiter = fut
        timer = self.loop.call_later(timeout, _expire, fut, f"no {what} within {limit or timeout:g} s")
        try:
            await fut
        finally:
            timer.cancel()
            self.waiter = None

    def alive(self) -> bool:
        return not self.eof and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.eof = True


def _expire(fut: asyncio.Future[None], message: str) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout(message))


class Response:
    """A response whose head has arrived. Read its body with ``read()`` or ``chunks()``,
    or call ``release()``; either way the connection goes back to the pool only when the
    body was read to its end."""

    __slots__ = (
        "status",
        "headers",
        "content_length",
        "_conn",
        "_pool",
        "_mode",
        "_left",
        "_keep",
        "_done",
        "_read_timeout",
        "_chunks",
    )

    def __init__(
        self,
        pool: Pool,
        conn: _Conn,
        status: int,
        headers: list[tuple[str, str]],
        mode: str,
        length: int | None,
        keep: bool,
        read_timeout: float,
    ) -> None:
        self.status = status
        self.headers = headers  # (lower-case name, value), in the site's order
        self.content_length = length if mode == "length" else None
        self._pool, self._conn = pool, conn
        self._mode = mode  # "none" | "length" | "chunked" | "close"
        self._left = length or 0
        self._chunks = ChunkedDecoder()
        self._keep = keep
        self._done = mode == "none" or (mode == "length" and not length)
        self._read_timeout = read_timeout
        if self._done:
            self._finish()

    @property
    def has_body(self) -> bool:
        """False for answers that cannot have one: HEAD, 204, 304."""
        return self._mode != "none"

    def header(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return default

    async def read(self) -> bytes:
        parts = [piece async for piece in self.chunks()]
        return b"".join(parts)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body, de-chunked, in the pieces it arrives in."""
        conn = self._conn
        try:
            while not self._done:
                piece = self._take()
                if piece:
                    yield piece
                    continue
                if self._done:
                    break
                if conn.eof:
                    # the body ends at a clean close; a reset (conn.error) cuts it short
                    if self._mode == "close" and not conn.buf and conn.error is None:
                        self._done = True
                        self._keep = False
                        break
                    raise Disconnected("the site closed the connection in the middle of the body")
                await conn.more(self._read_timeout, "body bytes")
        except BaseException:
            self.release()
            raise
        self._finish()

    def _take(self) -> bytes:
        """Consume what the buffer holds of the body; sets ``_done`` at its end."""
        buf = self._conn.buf
        if not buf:
            return b""
        if self._mode == "length":
            n = min(self._left, len(buf))
            piece = bytes(buf[:n])
            del buf[:n]
            self._left -= n
            self._done = self._left == 0
            return piece
        if self._mode == "close":
            piece = bytes(buf)
            buf.clear()
            return piece
        out = bytearray()
        try:
            self._chunks.feed(buf, out, 4096, _MAX_HEAD)
        except ChunkError as exc:
            raise ProtocolError(_CHUNK_ERRORS[exc.kind]) from None
        self._done = self._chunks.done
        return bytes(out)

    def _finish(self) -> None:
        self._done = True
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is None:
            return
        if self._keep and not conn.buf and conn.alive():
            if conn.paused and conn.transport is not None:  # else it would not see the peer close it
                conn.transport.resume_reading()
                conn.paused = False
            self._pool._put(conn)
        else:
            conn.close()

    def release(self) -> None:
        """Done with this response: a body not read to its end closes the connection."""
        if self._conn is None:
            return
        if not self._done:
            self._keep = False
        self._finish()


def _is_digits(text: str) -> bool:
    # isdigit() alone takes latin-1's superscripts ("\xb2"), which int() refuses
    return text.isascii() and text.isdigit()


def _parse_head(raw: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _is_digits(parts[1]):
        raise ProtocolError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or CONTROL.search(line):  # a bare LF or CR would pass on to the client
            raise ProtocolError(f"malformed header line from the site: {line[:80]!r}")
        headers.append((name.strip().lower(), value.strip(" \t")))
    return int(parts[1]), parts[0], headers


class Pool:
    """Keep-alive connections to sites, reused across requests."""

    def __init__(self, connect_timeout: float = 2.0, idle_s: float = 30.0, max_idle: int = 256) -> None:
        self.connect_timeout = connect_timeout
        self.idle_s = idle_s
        self.max_idle = max_idle  # per (scheme, host, port)
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._targets: dict[str, tuple[tuple[str, str, int], str, str]] = {}
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
    ) -> Response:
        """Send one request; return when the response head is in. Raises UpstreamError."""
        key, target, host = self._target(url)
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n"]
        for name, value in headers:
            if not TOKEN.fullmatch(name) or CONTROL.search(value):
                # a CR or LF here would end the head early and smuggle what follows
                raise ProtocolError(f"refusing to send header {name[:40]!r}: a control character in it")
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
        except _ClosedBeforeAnswer as exc:
            if not reused or exc.after > _STALE_WINDOW_S:
                raise Disconnected(str(exc)) from None
        # the site closed the idle connection as we sent on it: once more, on a new one
        conn = await self._connect(key, connect_timeout or self.connect_timeout)
        try:
            return await self._exchange(
                conn, wire, method, deadline, head_timeout, read_timeout or head_timeout
            )
        except _ClosedBeforeAnswer as exc:
            raise Disconnected(str(exc)) from None

    async def _exchange(
        self,
        conn: _Conn,
        wire: bytes,
        method: str,
        deadline: float,
        head_timeout: float,
        read_timeout: float,
    ) -> Response:
        assert conn.transport is not None
        conn.buf.clear()
        try:
            conn.transport.write(wire)
            sent = time.monotonic()
            scan = 0
            interim = False  # a 1xx head came: the site has the request, which must not be sent again
            while True:
                end = conn.buf.find(b"\r\n\r\n", scan)
                if end < 0:
                    if len(conn.buf) > _MAX_HEAD:
                        raise ProtocolError(f"response head over {_MAX_HEAD} bytes")
                    if conn.eof and not conn.buf and not interim:
                        raise _ClosedBeforeAnswer(
                            "the site closed the connection before answering", time.monotonic() - sent
                        )
                    if conn.eof:
                        raise Disconnected(
                            "the site closed the connection in the middle of its answer's head"
                        )
                    scan = max(0, len(conn.buf) - 3)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise UpstreamTimeout(f"no response head within {head_timeout:g} s")
                    await conn.more(left, "response head", head_timeout)
                    continue
                status, version, headers = _parse_head(bytes(conn.buf[:end]))
                del conn.buf[: end + 4]
                scan = 0
                if 100 <= status < 200 and status != 101:
                    interim = True
                    continue  # 100 Continue, 103 Early Hints: the real answer follows
                break
        except BaseException:
            conn.close()
            raise
        mode, length = "close", None
        te = cl = None
        connection = ""
        for k, v in headers:
            if k == "transfer-encoding":
                te = v.lower()
            elif k == "content-length":
                cl = v
            elif k == "connection":
                connection = v.lower()
        if method == "HEAD" or status in _NO_BODY_STATUS:
            mode = "none"
        elif te is not None:
            if te != "chunked":
                conn.close()
                raise ProtocolError(f"unsupported Transfer-Encoding {te!r} from the site")
            mode = "chunked"
        elif cl is not None:
            if not _is_digits(cl):
                conn.close()
                raise ProtocolError(f"bad Content-Length {cl[:20]!r} from the site")
            mode, length = "length", int(cl)
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        keep = keep and mode != "close"
        return Response(self, conn, status, headers, mode, length, keep, read_timeout)

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

    def _get(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            conn.pooled = False
            if conn.alive() and now - conn.idle_since < self.idle_s:
                return conn
            conn.close()
        return None

    def _put(self, conn: _Conn) -> None:
        if self.closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, deque())
        if len(idle) >= self.max_idle:
            old = idle.popleft()
            old.pooled = False
            old.close()
        conn.idle_since = time.monotonic()
        conn.pooled = True
        idle.append(conn)

    async def _connect(self, key: tuple[str, str, int], timeout: float) -> _Conn:
        loop = asyncio.get_running_loop()
        scheme, host, port = key
        kwargs: dict[str, Any] = {}
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            kwargs = {"ssl": self._ssl, "server_hostname": host}
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Conn(loop, key), host, port, **kwargs)
        except TimeoutError:
            raise ConnectError(f"connect to {host}:{port} timed out after {timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(
                f"TLS with {host}:{port}: its certificate is not trusted ({exc.verify_message}); "
                "for a private CA, point SSL_CERT_FILE at its certificate"
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
