"""One connection of :class:`gridctl.net.server.HttpServer`: llhttp's callbacks and the limits
it has no notion of (``ServerConfig``'s, Host, framing), one timer for every deadline (head,
body, send, keep-alive), the answers written in order, a stream with back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter, deque
from typing import Protocol

import httptools

from gridctl.net.messages import (
    DropConnection,
    Handler,
    HttpError,
    Request,
    Response,
    ServerConfig,
    StreamingResponse,
    aclose,
    build_head,
    busy_response,
    error_response,
    head_too_large,
    parse_error,
    transfer_encoding_error,
)
from gridctl.net.syntax import STRICT, valid_host

log = logging.getLogger("gridctl.net.server")

_MAX_QUEUED = 16  # pipelined requests held before reading pauses
_NO_BODY = frozenset({204, 304})
_LINGER_S = 2.0  # how long an erroring connection discards input before closing
_VERSIONS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
# a chunked body's framing (size lines, extensions, CRLFs, trailers) may exceed this plus half its
# data only in a flood of tiny chunks: each chunk costs a callback, whatever its size
_FRAMING_FREE = 16384
_CHUNK_MIN = 5  # the framing of the smallest chunk: "1\r\n" and the CRLF after its byte


class Listener(Protocol):
    """What a connection uses of its server."""

    handler: Handler
    config: ServerConfig
    connections: set[Connection]
    stopping: bool
    parse_errors: Counter[str]


class _Stop(Exception):
    """Raised in a parser callback to stop parsing: nothing after this request is read."""


class Connection(asyncio.Protocol):
    def __init__(self, server: Listener) -> None:
        self.server = server
        c = self.config = server.config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(**STRICT)
        self.max_body, self.max_head, self.max_headers = c.max_body, c.max_head, c.max_headers
        self.max_line, self.max_target = c.max_header_line, c.max_target
        # the request being read (reset when it is complete)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []  # its body as it arrives
        self.head: tuple[str, str, str, bool] | None = None  # method, target, version, keep-alive
        self.in_body = False  # its head is in
        self.n_headers = 0
        self.head_size = 0  # bytes of its head (and trailers) that the callbacks have seen whole
        self.pending = 0  # bytes of its head received but not yet seen whole: the header being read
        self.body_len = 0
        self.chunked = False
        self.chunks = 0
        self.framing = 0  # bytes of its chunked body that were not data (reads wholly inside the body)
        self.expect = False  # it asked for 100 Continue, not sent yet
        self.crossed = False  # a request ended during this read
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.error: HttpError | None = None
        self.no_more = False  # no more requests will be read (close, error or EOF)
        self.lost = False
        self.discarding = False
        self.reading_paused = False
        self.write_paused = False
        self.drain: asyncio.Future[None] | None = None
        self.last_active = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.head_at: float | None = None  # when the head being read began
        self.fresh = True  # no byte yet: its first head is due within head_timeout_s of the accept
        self.paused_at = 0.0  # when writing last paused

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        server = self.server
        server.connections.add(self)
        self._arm_timer(min(self.config.keepalive_s, self.config.head_timeout_s))
        limit = self.config.max_connections
        if limit is not None and len(server.connections) > limit:
            server.parse_errors["too_many_connections"] += 1
            if len(server.connections) > limit + limit // 8 + 1:
                self.abort()  # no room even for a refusal
                return
            message = f"the server is at its limit of {limit} connections; retry shortly"
            self._refuse(HttpError(503, message, None, busy_response(message)))
            self.task = self.loop.create_task(self._serve())

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
        self.paused_at = self.loop.time()
        self._arm_before(self.paused_at + self.config.send_timeout_s)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def eof_received(self) -> bool:
        return False  # the client is gone (half-closed clients are not supported): close, cancel its handler

    def data_received(self, data: bytes) -> None:
        if self.discarding or self.no_more:
            return
        now = self.last_active = self.loop.time()
        self.fresh = False
        if not self.in_body and self.head_at is None:  # a head begins: it has head_timeout_s
            self.head_at = now
            self._arm_before(now + self.config.head_timeout_s)
        in_body, head0, body0 = self.in_body, self.head_size, self.body_len
        self.crossed = False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.error is None and not self.no_more:  # else a callback refused it, or stopped
                if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__ is not None:
                    raise exc.__context__ from None  # a bug in a callback (the gate?): not the client's
                err = parse_error(exc)
                if self.in_body and err.kind == "invalid_header":  # after a chunked body
                    err = HttpError(400, f"malformed trailer line: {exc}", "invalid_trailer")
                self._refuse(err)
        else:
            self._check_read(len(data), in_body, head0, body0)
        if self.task is None and (self.queue or self.error):
            self.task = self.loop.create_task(self._serve())
        elif self.expect:
            self._continue()
        if len(self.queue) > _MAX_QUEUED and not self.reading_paused and self.transport:
            self.transport.pause_reading()
            self.reading_paused = True

    # -- parsing: llhttp's callbacks, and the limits it has no notion of ----------------------

    def _refuse(self, err: HttpError) -> HttpError:
        """Answer ``err`` once the requests before this one are answered; read nothing more."""
        self.error, self.no_more, self.expect = err, True, False
        if err.kind is not None:
            self.server.parse_errors[err.kind] += 1
        return err

    def _fail(
        self, status: int, message: str, kind: str | None, response: Response | None = None
    ) -> HttpError:
        return self._refuse(HttpError(status, message, kind, response))

    def _check_read(self, n: int, in_body: bool, head0: int, body0: int) -> None:
        """After a read of ``n`` bytes: the bytes llhttp holds back (a header not yet whole) and
        a chunked body's framing, which no callback shows, counted against their limits. Where a
        request ended inside the read, the next one's part of it is not known: it counts from
        the next read on (so a head can pass its limit by one read at most, never grow unbounded)."""
        if not self.in_body:
            self.pending = 0 if self.crossed else self.pending + n - (self.head_size - head0)
            if self.pending > self.max_line:
                self._fail(431, f"a request header over {self.max_line} bytes", "header_too_large")
            elif self.head_size + self.pending > self.max_head:
                self._fail(431, f"request head over {self.max_head} bytes", "head_too_large")
        elif in_body and self.chunked and not self.crossed:
            self.framing += n - (self.body_len - body0)
            if self.framing > _FRAMING_FREE + self.body_len // 2:
                self._fail(413, "request body in too many small chunks", "chunks_too_small")

    def on_url(self, part: bytes) -> None:
        self.url += part
        self.head_size += len(part)
        if len(self.url) > self.max_target:
            raise self._fail(414, f"request target over {self.max_target} bytes", "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self.head_size += size + 4  # ": " and CRLF
        self.n_headers += 1
        if size > self.max_line or self.n_headers > self.max_headers or self.head_size > self.max_head:
            raise self._refuse(head_too_large(self.config, size, self.n_headers))
        if self.in_body:
            return  # a trailer: checked, not kept
        key = name.decode("latin-1").lower()
        text = value.rstrip(b" \t").decode("latin-1")
        headers = self.headers
        if key in headers:  # llhttp refuses a second Content-Length itself
            if key == "host":  # RFC 9112 section 3.2
                raise self._fail(400, "more than one Host header", "invalid_host")
            headers[key] += ", " + text
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        p = self.parser
        self.in_body, self.pending, self.head_at = True, 0, None
        self._arm_before(self.loop.time() + self.config.body_timeout_s)
        self.n_headers = self.head_size = 0  # a chunked body's trailers have their own count and size
        version = _VERSIONS.get(p.get_http_version())
        if version is None:
            raise self._fail(505, f"unsupported HTTP version {p.get_http_version()}", "invalid_version")
        method = p.get_method().decode("latin-1")
        target = self.url.decode("latin-1")
        if "#" in target:  # RFC 9112 section 3.2: a request target has no fragment (llhttp takes one)
            raise self._fail(400, "a fragment (#) in the request target", "invalid_target")
        headers = self.headers
        host = headers.get("host")  # RFC 9112 section 3.2: one, well formed, in each HTTP/1.1 request
        if host is None:
            if version == "HTTP/1.1":
                raise self._fail(400, "an HTTP/1.1 request without a Host header", "invalid_host")
        elif not valid_host(host):
            raise self._fail(400, f"bad Host header {host[:80]!r}", "invalid_host")
        keep = p.should_keep_alive()
        length = 0
        te = headers.get("transfer-encoding")
        if te is not None:  # llhttp has refused it beside a Content-Length
            framing = transfer_encoding_error(te, version)
            if framing is not None:
                raise self._refuse(framing)
            self.chunked = True
        elif "content-length" in headers:  # digits only: llhttp checked them
            length = int(headers["content-length"])
            if length > self.max_body:
                raise self._fail(
                    413,
                    f"request body of {length} bytes is over the limit of {self.max_body}",
                    "body_too_large",
                )
        if p.should_upgrade():  # llhttp would not read a body, whose bytes would read as requests
            if length or self.chunked:
                raise self._fail(400, "an upgrade request with a body", "upgrade_with_body")
            keep = False  # answered as HTTP/1.1 (no upgrade), then the connection closes
        gate = self.config.gate
        if gate is not None:
            refused = gate(method, target.partition("?")[0], headers)
            if refused is not None:
                raise self._fail(refused.status, "refused", None, refused)
        if version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
            self.expect = True  # written when every response before this one is complete
        self.head = (method, target, version, keep)

    def on_body(self, part: bytes) -> None:
        self.parts.append(part)
        self.body_len += len(part)
        if self.body_len > self.max_body:
            raise self._fail(413, f"request body over the limit of {self.max_body} bytes", "body_too_large")

    def on_chunk_header(self) -> None:
        self.chunks += 1
        if self.chunks * _CHUNK_MIN > _FRAMING_FREE + self.body_len // 2:
            raise self._fail(413, "request body in too many small chunks", "chunks_too_small")

    def on_message_complete(self) -> None:
        assert self.head is not None
        method, target, version, keep = self.head
        parts = self.parts
        body = (parts[0] if len(parts) == 1 else b"".join(parts)) if parts else b""
        parts.clear()
        self.queue.append(Request(method, target, version, self.headers, body, keep))
        self.headers, self.url, self.head = {}, b"", None
        self.in_body = self.chunked = self.expect = False
        self.n_headers = self.head_size = self.body_len = self.chunks = self.framing = 0
        self.crossed = True
        if not keep:
            self.no_more = True
            raise _Stop  # nothing after it is read

    # -- answering ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.task is None and not self.queue

    def _continue(self) -> None:
        """The 100 Continue that the request being read asked for, once every response before
        it is complete (never inside another response)."""
        if self.expect and self.idle and self.transport is not None and not self.transport.is_closing():
            self.expect = False
            self.last_active = self.loop.time()  # the body's silence counts from here
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _serve(self) -> None:
        try:
            await self._answer()
        except Exception:  # a bug here must not leave the client waiting forever
            log.exception("connection failed")
            self.abort()
        finally:
            self.task = None
            self.last_active = self.loop.time()
            if self.expect and not self.lost:
                self._continue()

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
                resp = error_response(500, "internal error in the server; see its log", "internal_error")
            if self.lost:
                if isinstance(resp, StreamingResponse):
                    await aclose(resp.chunks)  # it may hold resources until it is closed
                return
            keep = req.keep_alive and not self.server.stopping
            if isinstance(resp, StreamingResponse) and (resp.status in _NO_BODY or req.method == "HEAD"):
                await aclose(resp.chunks)  # no body may follow this head (nor a length: unknown)
                ctype = "" if resp.status in _NO_BODY else resp.content_type  # HEAD: what GET sends
                head = build_head(resp.status, ctype, resp.headers, -1, keep)
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
            self.transport.write(build_head(resp.status, "", resp.headers, -1, keep))
            return
        body = resp.body
        head = build_head(resp.status, resp.content_type, resp.headers, len(body), keep)
        self.transport.write(head if req.method == "HEAD" or not body else head + body)

    async def _stream(self, req: Request, resp: StreamingResponse, keep: bool) -> bool:
        assert self.transport is not None
        chunked = req.version == "HTTP/1.1"
        keep = keep and chunked  # HTTP/1.0: the body ends when the connection closes
        length = None if chunked else -1
        self.transport.write(build_head(resp.status, resp.content_type, resp.headers, length, keep))
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
            await aclose(chunks)
        if self.lost:
            return False
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        return keep

    def _write_error(self, exc: HttpError) -> None:
        """Answer a request we could not read, then discard input until the client closes."""
        assert self.transport is not None
        resp = exc.response or error_response(exc.status, exc.message, exc.kind)
        headers = resp.headers
        extra = self.config.error_headers
        if extra is not None:
            have = {name for name, _ in headers}
            headers = (*headers, *(h for h in extra(self.headers) if h[0] not in have))
        self.transport.write(build_head(resp.status, resp.content_type, headers, len(resp.body), False))
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
        self.timer_at = self.loop.time() + delay
        self.timer = self.loop.call_later(delay, self._on_timer)

    def _arm_before(self, when: float) -> None:
        """Make sure the timer fires by ``when`` (a deadline that just began)."""
        if self.timer is not None and self.timer_at > when and not self.lost:
            self.timer.cancel()
            self._arm_timer(max(0.0, when - self.loop.time()))

    def _on_timer(self) -> None:
        """The connection's one timer: keep-alive, the head, body and send deadlines; it fires
        at the earliest of them, or sooner, and is armed again for the next."""
        if self.lost:
            return
        c, now = self.config, self.loop.time()
        if self.write_paused and now - self.paused_at >= c.send_timeout_s:
            log.info("aborting a client that read nothing for %g s", c.send_timeout_s)
            self.server.parse_errors["send_timeout"] += 1
            self.abort()  # connection_lost cancels its handler: what it held is given back
            return
        reading = not (self.no_more or self.discarding)
        if reading and self.head_at is not None and now - self.head_at >= c.head_timeout_s:
            self._timed_out(f"the request head was not whole within {c.head_timeout_s:g} s", "head_timeout")
        elif reading and self.in_body and not self.expect and now - self.last_active >= c.body_timeout_s:
            self._timed_out(f"no byte of the request body for {c.body_timeout_s:g} s", "body_timeout")
        idle = self.idle and self.head_at is None and not self.in_body
        # a connection that never sent a byte gets head_timeout_s, as a head does (nginx's
        # client_header_timeout): idle accepts must not hold descriptors for a keep-alive's time
        keep = min(c.keepalive_s, c.head_timeout_s) if self.fresh else c.keepalive_s
        if idle and now - self.last_active >= keep:
            if self.fresh:
                self.server.parse_errors["idle_timeout"] += 1
            self.close()
            return
        due = [self.last_active + keep if idle else now + keep]
        if self.write_paused:
            due.append(self.paused_at + c.send_timeout_s)
        if reading and self.head_at is not None:
            due.append(self.head_at + c.head_timeout_s)
        if reading and self.in_body:
            due.append(self.last_active + c.body_timeout_s)
        self._arm_timer(max(0.05, min(due) - now))

    def _timed_out(self, message: str, kind: str) -> None:
        """408 for the request being read (after those before it are answered); nothing more is read."""
        self._refuse(HttpError(408, message, kind))
        if self.reading_paused and self.transport is not None:
            self.transport.resume_reading()
            self.reading_paused = False
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
