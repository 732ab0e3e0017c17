"""A small, fast HTTP/1.1 server on asyncio: one ``asyncio.Protocol`` per connection.

Generic, with no knowledge of what it serves: a handler takes a :class:`Request`
and returns a :class:`Response` (sent with Content-Length) or a
:class:`StreamingResponse` (sent chunk by chunk with chunked transfer encoding,
as Server-Sent Events need). What it does:

- keep-alive by default (HTTP/1.1), ``Connection: close`` and HTTP/1.0 honoured;
  pipelined requests answered in order; an idle connection closed after
  ``keepalive_s``;
- request bodies by Content-Length or chunked; bodies over ``max_body`` get 413
  and heads over ``max_head`` get 431, before the body is read; malformed
  requests get 400; the connection is then closed after the client has read
  the answer (the rest of its upload is discarded, not reset);
- ``Expect: 100-continue`` answered;
- back-pressure: a stream waits while the transport's buffer is full; reading
  pauses while too many pipelined requests are queued;
- a handler or stream raising :class:`DropConnection` closes the connection
  mid-response (for simulated failures); a client that goes away cancels
  its handler (so a queued or hung request frees its resources);
- ``stop()`` stops accepting, lets in-flight responses finish within a grace
  period, then aborts what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from gridctl.net.syntax import CONTROL, TOKEN, ChunkedDecoder, ChunkError

log = logging.getLogger("gridctl.net.server")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_MAX_QUEUED = 16  # pipelined requests held before reading pauses
_NO_BODY = frozenset({204, 304})
_LINGER_S = 2.0  # how long an erroring connection discards input before closing


class Request:
    """One parsed request. Header names are lower-case; repeated headers are joined by ", "."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "body", "keep_alive")

    def __init__(
        self, method: str, target: str, version: str, headers: dict[str, str], body: bytes, keep_alive: bool
    ) -> None:
        self.method, self.target, self.version = method, target, version
        self.path, _, self.query = target.partition("?")
        self.headers, self.body, self.keep_alive = headers, body, keep_alive

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return json.loads(self.body)


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, tuple(headers)


class StreamingResponse:
    """A response whose body is produced over time; each item is written as it comes."""

    __slots__ = ("status", "chunks", "content_type", "headers")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        content_type: str = "text/event-stream",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.chunks, self.status, self.content_type, self.headers = (
            chunks,
            status,
            content_type,
            tuple(headers),
        )


class DropConnection(Exception):
    """Raised by a handler or a stream: close the connection now, mid-response, sending nothing more
    (what was already written still arrives, then the end of the stream)."""


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


def json_response(data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode(), "application/json", headers)


def error_response(status: int, message: str) -> Response:
    """The server's own errors (400, 413, 431, 500...), in the OpenAI error shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json_response({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, chosen by the kernel
    max_body: int = 4 << 20
    max_head: int = 64 << 10
    keepalive_s: float = 75.0
    backlog: int = 1024
    reuse_port: bool = False  # several processes on one port (the daemon's --workers)
    # called with each request's head (method, path, lower-case headers) before its body is
    # read: a Response refuses the request at once (e.g. a missing token), None lets it in
    gate: Callable[[str, str, dict[str, str]], Response | None] | None = None


class _HttpError(Exception):
    def __init__(self, status: int, message: str, response: Response | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.response = status, message, response


_CHUNK_ERRORS = {
    "line": (400, "malformed chunk size line"),
    "size": (400, "malformed chunk size"),
    "crlf": (400, "malformed chunk"),
    "trailers": (431, "chunked body trailers too long"),
}


_date_cache: list[Any] = [0, ""]


def _http_date() -> str:
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache[0], _date_cache[1] = second, formatdate(second, usegmt=True)
    return str(_date_cache[1])


def _head(
    status: int,
    content_type: str,
    headers: tuple[tuple[str, str], ...],
    length: int | None,
    keep: bool,
) -> bytes:
    """The response head. ``length`` None: chunked; negative: neither (the body ends at close)."""
    reason = _REASONS.get(status, "Unknown")
    parts = [f"HTTP/1.1 {status} {reason}\r\ndate: {_http_date()}\r\nserver: gridctl\r\n"]
    if content_type:
        parts.append(f"content-type: {content_type}\r\n")
    if length is None:
        parts.append("transfer-encoding: chunked\r\n")
    elif length >= 0:
        parts.append(f"content-length: {length}\r\n")
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n")
    if not keep:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


class HttpServer:
    """``await start()``, ``port``, ``await stop()``; or ``async with HttpServer(...)``."""

    def __init__(self, handler: Handler, config: ServerConfig | None = None) -> None:
        self.handler = handler
        self.config = config or ServerConfig()
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        c = self.config
        self._server = await loop.create_server(
            lambda: _Connection(self),
            c.host,
            c.port,
            backlog=c.backlog,
            reuse_address=True,
            reuse_port=c.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def stop(self, grace: float = 2.0) -> int:
        """Stop accepting; finish in-flight responses within ``grace`` seconds; abort the rest.
        Returns how many connections were aborted while answering."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        busy = sum(not conn.idle for conn in self.connections)
        tasks = [conn.task for conn in self.connections if conn.task is not None]
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)
        if tasks:  # let the cancelled handlers run their cleanup (accounting) before returning
            await asyncio.wait(tasks, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        return busy

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.config = server.config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.scan = 0  # where to resume looking for the end of the head
        self.head: tuple[str, str, str, dict[str, str], int, bool, bool] | None = None
        self.chunked: tuple[ChunkedDecoder, bytearray] | None = None
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.error: _HttpError | None = None
        self.no_more = False  # no more requests will be read (close, error or EOF)
        self.lost = False
        self.discarding = False
        self.reading_paused = False
        self.write_paused = False
        self.drain: asyncio.Future[None] | None = None
        self.last_active = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        self.server.connections.add(self)
        self._arm_timer(self.config.keepalive_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.timer is not None:
            self.timer.cancel()
        if self.drain is not None and not self.drain.done():
            self.drain.set_exception(ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def eof_received(self) -> bool:
        return False  # the client is gone (half-closed clients are not supported): close, cancel its handler

    def data_received(self, data: bytes) -> None:
        if self.discarding or self.no_more:
            return
        self.last_active = self.loop.time()
        self.buf += data
        try:
            while not self.no_more:
                req = self._next_request()
                if req is None:
                    break
                self.queue.append(req)
                if not req.keep_alive:
                    self.no_more = True
        except _HttpError as exc:
            self.error, self.no_more = exc, True
            self.buf.clear()
        if self.task is None and (self.queue or self.error):
            self.task = self.loop.create_task(self._serve())
        if len(self.queue) > _MAX_QUEUED and not self.reading_paused and self.transport:
            self.transport.pause_reading()
            self.reading_paused = True

    # -- parsing -------------------------------------------------------------------------

    def _next_request(self) -> Request | None:
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n", self.scan)
            if end < 0:
                if len(self.buf) > self.config.max_head:
                    raise _HttpError(431, f"request head over {self.config.max_head} bytes")
                self.scan = max(0, len(self.buf) - 3)
                return None
            if end > self.config.max_head:
                raise _HttpError(431, f"request head over {self.config.max_head} bytes")
            self.head = self._parse_head(bytes(self.buf[:end]))
            del self.buf[: end + 4]
            self.scan = 0
            gate = self.config.gate
            if gate is not None:
                refused = gate(self.head[0], self.head[1].partition("?")[0], self.head[3])
                if refused is not None:
                    raise _HttpError(refused.status, "refused", refused)
            if self.head[6] and self.transport is not None:  # Expect: 100-continue
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, target, version, headers, length, chunked, _ = self.head
        if chunked:
            body = self._chunked_body()
            if body is None:
                return None
        else:
            if len(self.buf) < length:
                return None
            body = bytes(self.buf[:length])
            del self.buf[:length]
        self.head = None
        tokens = headers.get("connection", "").lower()
        keep = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        return Request(method, target, version, headers, body, keep)

    def _parse_head(self, raw: bytes) -> tuple[str, str, str, dict[str, str], int, bool, bool]:
        text = raw.decode("latin-1").lstrip("\r\n")
        bad = CONTROL.search(text.replace("\r\n", " "))
        if bad is not None:
            raise _HttpError(400, f"control character {bad.group()!r} in the request head")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
            raise _HttpError(400, f"malformed request line {lines[0][:80]!r}")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _HttpError(505 if version.startswith("HTTP/") else 400, f"unsupported version {version!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not TOKEN.fullmatch(name):
                raise _HttpError(400, f"malformed header line {line[:80]!r}")
            name, value = name.lower(), value.strip(" \t")
            if name in headers:
                if name == "content-length" and headers[name] != value:
                    raise _HttpError(400, "conflicting Content-Length headers")
                if name != "content-length":
                    headers[name] += ", " + value
            else:
                headers[name] = value
        chunked, length = False, 0
        te = headers.get("transfer-encoding")
        if te is not None:
            if te.lower() != "chunked":
                raise _HttpError(501, f"unsupported Transfer-Encoding {te!r}")
            if "content-length" in headers:
                raise _HttpError(400, "both Transfer-Encoding and Content-Length")
            chunked = True
        elif "content-length" in headers:
            text = headers["content-length"]
            if not (text.isascii() and text.isdigit()):
                raise _HttpError(400, f"bad Content-Length {text[:20]!r}")
            length = int(text)
            if length > self.config.max_body:
                raise _HttpError(
                    413, f"request body of {length} bytes is over the limit of {self.config.max_body}"
                )
        expect = headers.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1"
        return method, target, version, headers, length, chunked, expect

    def _chunked_body(self) -> bytes | None:
        """The whole chunked body once it has all arrived, else None (what has arrived is
        consumed and remembered in ``self.chunked``)."""
        if self.chunked is None:
            self.chunked = (ChunkedDecoder(), bytearray())
        decoder, body = self.chunked
        limit = self.config.max_body

        def check(size: int) -> None:
            if len(body) + size > limit:
                raise _HttpError(413, f"request body over the limit of {limit} bytes")
            if decoder.framing > 16384 + len(body) // 2:  # framing, not data: tiny chunks are a flood
                raise _HttpError(413, "request body in too many small chunks")

        try:
            decoder.feed(self.buf, body, 1024, self.config.max_head, check)
        except ChunkError as exc:
            raise _HttpError(*_CHUNK_ERRORS[exc.kind]) from None
        if not decoder.done:
            return None
        self.chunked = None
        return bytes(body)

    # -- answering ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.task is None and not self.queue

    async def _serve(self) -> None:
        try:
            await self._answer()
        except Exception:  # a bug here must not leave the client waiting forever
            log.exception("connection failed")
            self.abort()
        finally:
            self.task = None
            self.last_active = self.loop.time()

    async def _answer(self) -> None:
        while self.queue and not self.lost:
            req = self.queue.popleft()
            if self.reading_paused and len(self.queue) < _MAX_QUEUED // 2 and self.transport:
                self.transport.resume_reading()
                self.reading_paused = False
            try:
                resp = await self.server.handler(req)
            except DropConnection:
                self.close()
                return
            except Exception:
                log.exception("handler failed for %s %s", req.method, req.path)
                resp = error_response(500, "internal error in the server; see its log")
            if self.lost:
                if isinstance(resp, StreamingResponse):
                    await _aclose(resp.chunks)  # it may hold resources until it is closed
                return
            keep = req.keep_alive and not self.server.stopping
            if isinstance(resp, StreamingResponse) and (resp.status in _NO_BODY or req.method == "HEAD"):
                await _aclose(resp.chunks)  # no body may follow this head (nor a length: unknown)
                ctype = "" if resp.status in _NO_BODY else resp.content_type  # HEAD: what GET sends
                head = _head(resp.status, ctype, resp.headers, -1, keep)
                assert self.transport is not None
                self.transport.write(head)
            elif isinstance(resp, StreamingResponse):
                keep = await self._stream(req, resp, keep)
            else:
                self._write(req, resp, keep)
            if not keep:
                self.close()
                return
        if self.error is not None and not self.lost:
            self._write_error(self.error)
        elif self.no_more or self.server.stopping:
            self.close()

    def _write(self, req: Request, resp: Response, keep: bool) -> None:
        assert self.transport is not None
        if resp.status in _NO_BODY:  # neither a body nor framing headers (RFC 9110)
            self.transport.write(_head(resp.status, "", resp.headers, -1, keep))
            return
        body = resp.body
        head = _head(resp.status, resp.content_type, resp.headers, len(body), keep)
        self.transport.write(head if req.method == "HEAD" or not body else head + body)

    async def _stream(self, req: Request, resp: StreamingResponse, keep: bool) -> bool:
        assert self.transport is not None
        chunked = req.version == "HTTP/1.1"
        keep = keep and chunked  # HTTP/1.0: the body ends when the connection closes
        length = None if chunked else -1
        self.transport.write(_head(resp.status, resp.content_type, resp.headers, length, keep))
        chunks = resp.chunks
        try:
            async for chunk in chunks:
                if self.lost:
                    return False
                if chunk:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self.write_paused:
                    self.drain = self.loop.create_future()
                    await self.drain
        except DropConnection:
            # without chunked framing a graceful close would end the body as if it were whole
            self.close() if chunked else self.reset()
            return False
        except ConnectionError:
            return False
        except Exception:
            log.exception("stream failed for %s %s", req.method, req.path)
            self.reset()
            return False
        finally:
            await _aclose(chunks)
        if self.lost:
            return False
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        return keep

    def _write_error(self, exc: _HttpError) -> None:
        """Answer a request we could not read, then discard input until the client closes."""
        assert self.transport is not None
        resp = exc.response or error_response(exc.status, exc.message)
        self.transport.write(_head(resp.status, resp.content_type, resp.headers, len(resp.body), False))
        self.transport.write(resp.body)
        self.discarding = True
        if self.reading_paused:
            self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.close)

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def reset(self) -> None:
        """Abort with a TCP reset (SO_LINGER 0): a plain abort still ends in a FIN, which a
        client reading to the close takes for the end of a whole body."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    def _arm_timer(self, delay: float) -> None:
        self.timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        if self.lost:
            return
        idle_for = self.loop.time() - self.last_active
        if self.idle and idle_for >= self.config.keepalive_s:
            self.close()
        else:
            self._arm_timer(
                max(0.05, self.config.keepalive_s - idle_for if self.idle else self.config.keepalive_s)
            )
