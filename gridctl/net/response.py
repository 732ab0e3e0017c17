"""A site's answer as it is read: the connection that parses it (llhttp, every leniency off,
with what RFC 9112 and the limits of ``gridctl.net.syntax`` ask beyond it) and the
:class:`Response` a caller reads its body through (whole, or piece by piece); the
connection goes back to its pool only when the body was read to its end.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator
from typing import Protocol

import httptools

from gridctl.net.errors import (
    AnswerTooLarge,
    ClosedBeforeAnswer,
    Disconnected,
    ProtocolError,
    UpstreamTimeout,
)
from gridctl.net.syntax import (
    MAX_HEAD,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    STRICT,
    has_control_byte,
    parse_codings,
)

_HIGH_WATER = 256 << 10
MAX_INTERIM = 8  # 1xx heads (100 Continue, 103 Early Hints) one answer may be preceded by
_NO_BODY_STATUS = frozenset({204, 304})
# a chunked body whose framing (size lines, extensions, trailers) outgrows this plus four times its
# data is a flood, not an answer (tiny chunks cost a callback each; llhttp keeps a trailer whole)
_FRAMING_FREE = 64 << 10

# where a connection stands: nothing asked (idle, in the pool), waiting for the head, reading the
# body, the answer complete (read or not)
IDLE, HEAD, BODY, DONE = 0, 1, 2, 3

Key = tuple[str, str, int, ssl.SSLContext | None]  # scheme, host, port, the TLS context (None: default)


class Keeper(Protocol):
    """Where a connection goes back when its answer was read to the end (the pool)."""

    def _put(self, conn: Conn) -> None: ...


class _Stop(Exception):
    """Raised in a parser callback: bytes nobody asked for (an answer after the answer)."""


class Conn(asyncio.Protocol):
    __slots__ = (
        "loop",
        "key",
        "transport",
        "parser",
        "waiter",
        "eof",
        "error",
        "paused",
        "idle_since",
        # the exchange in progress
        "state",
        "head_request",
        "answered",
        "interim",
        "interims",
        "failure",
        "status",
        "headers",
        "mode",
        "length",
        "keep",
        "pieces",
        "body_len",
        "taken",
        "n_headers",
        "head_size",
        "pending",
        "framing",
        "crossed",
        "stale",
        "sent",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Key) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parser.set_dangerous_leniencies(**STRICT)
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False  # the peer closed (or the connection was lost)
        self.error: BaseException | None = None
        self.paused = False
        self.idle_since = 0.0
        self.state = IDLE
        self.stale = False  # the parser still expects a body that a HEAD's answer does not have
        self.sent = 0.0  # when the request was written
        self.pieces: list[bytes] = []  # the body as it arrives, de-chunked, until consumed
        self.begin(False)
        self.state = IDLE

    def begin(self, head_request: bool) -> None:
        """A request is about to be written: its answer is the next thing the site may send."""
        if self.stale:
            self.parser = httptools.HttpResponseParser(self)
            self.parser.set_dangerous_leniencies(**STRICT)
            self.stale = False
        self.state, self.head_request = HEAD, head_request
        self.answered = False  # a byte of the answer has arrived
        self.interim = False  # the head being read is a 1xx
        self.interims = 0  # 1xx heads read before the answer
        self.failure: ProtocolError | None = None
        self.status, self.mode, self.length, self.keep = 0, "close", 0, False
        self.headers: list[tuple[str, str]] = []
        self.body_len = self.taken = self.framing = 0
        self.n_headers = self.head_size = self.pending = 0
        self.crossed = False

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state != HEAD and state != BODY:  # unasked-for bytes would be read as the next answer
            self.close()
            self._wake()
            return
        self.answered = True
        head0, body0 = self.head_size, self.body_len
        self.crossed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if self.failure is None and not isinstance(exc.__context__, _Stop):
                raise exc.__context__ or exc from None  # a bug in a callback
            self.close()  # _Stop: a second answer behind this one, which is complete
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.state == HEAD or self.state == BODY:
                self._fail(exc)
            self.close()  # else bytes after an answer that is complete
        else:
            self._check_read(len(data), state, head0, body0)
        if self.body_len - self.taken > _HIGH_WATER and not self.paused and self.transport is not None:
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

    # -- parsing: llhttp's callbacks, and what RFC 9112 asks beyond them ---------------------------

    def _fail(self, why: str | Exception) -> ProtocolError:
        """The answer is not HTTP the daemon can relay: the connection goes, the caller gets this."""
        if isinstance(why, Exception):
            where = (
                "response head"
                if self.state == HEAD
                else "chunked body"
                if self.mode == "chunked"
                else "body"
            )
            why = f"malformed {where} from the site: {why}"
        self.failure = ProtocolError(why)
        self.close()
        return self.failure

    def _check_read(self, n: int, state: int, head0: int, body0: int) -> None:
        """After a read of ``n`` bytes: what llhttp holds back (a header not yet whole) and a
        chunked body's framing, which no callback shows, counted against their limits (the
        server's way, gridctl/net/server.py)."""
        if self.state == HEAD:
            self.pending = 0 if self.crossed else self.pending + n - (self.head_size - head0)
            if self.pending > MAX_HEADER_LINE or self.head_size + self.pending > MAX_HEAD:
                self._fail(f"response head from the site over {MAX_HEAD} bytes")
        elif state == BODY and self.state == BODY and self.mode == "chunked":
            self.framing += n - (self.body_len - body0)
            if self.framing > _FRAMING_FREE + 4 * self.body_len:
                self._fail("chunked body from the site with far more framing than data")

    def on_message_begin(self) -> None:
        if self.state == DONE:
            raise _Stop

    def on_status(self, reason: bytes) -> None:
        if has_control_byte(reason):  # RFC 9112 section 4: no control character but tab (llhttp takes them)
            raise self._fail("a control character in the status line from the site")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self.head_size += size + 4  # ": " and CRLF
        self.n_headers += 1
        if size > MAX_HEADER_LINE or self.n_headers > MAX_HEADERS or self.head_size > MAX_HEAD:
            raise self._fail(
                f"response head from the site over its limits ({MAX_HEAD} bytes, {MAX_HEADERS} header"
                f" lines, {MAX_HEADER_LINE} bytes for one)"
            )
        if self.state == HEAD:  # else a trailer: checked, not kept
            self.headers.append((name.decode("latin-1").lower(), value.rstrip(b" \t").decode("latin-1")))

    def on_headers_complete(self) -> None:
        p = self.parser
        status = p.get_status_code()
        self.pending = self.n_headers = self.head_size = 0  # trailers have their own count and size
        if 100 <= status < 200 and status != 101:  # 100 Continue, 103 Early Hints: the answer follows
            self.interim = True
            self.headers = []
            self.interims += 1
            if self.interims > MAX_INTERIM:
                raise self._fail(f"more than {MAX_INTERIM} interim (1xx) heads from the site")
            return
        if not 200 <= status <= 599:
            raise self._fail(
                f"status {status} from the site"
                + (" (no protocol switch was asked)" if status == 101 else "")
            )
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            raise self._fail(f"HTTP/{version} answer from the site")
        te_lines, te, cl = 0, "", None
        for k, v in self.headers:
            if k == "transfer-encoding":
                te_lines, te = te_lines + 1, v
            elif k == "content-length":
                cl = v
        mode, length = "close", 0
        if self.head_request or status in _NO_BODY_STATUS:
            mode = "none"
            self.stale = self.head_request  # llhttp would read a body that a HEAD's answer has not
        elif te_lines:
            if te_lines > 1:
                raise self._fail("Transfer-Encoding from the site split over two header lines")
            if version == "1.0":
                raise self._fail("Transfer-Encoding in an HTTP/1.0 answer from the site")
            if parse_codings(te) != ["chunked"]:
                raise self._fail(f"unsupported Transfer-Encoding {te[:40]!r} from the site")
            mode = "chunked"
        elif cl is not None:  # digits only, and not twice: llhttp checked
            mode, length = "length", int(cl)
        self.status, self.mode, self.length = status, mode, length
        self.keep = mode != "close" and p.should_keep_alive()
        self.state = DONE if mode == "none" else BODY

    def on_body(self, part: bytes) -> None:
        if self.state != BODY:
            raise _Stop  # after a HEAD's answer: not its body, bytes nobody asked for
        self.pieces.append(part)
        self.body_len += len(part)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim, self.crossed = False, True
        else:
            self.state = DONE

    # -- used by Response -------------------------------------------------------------------

    def take(self) -> bytes:
        """What has arrived of the body and was not consumed yet, in one piece."""
        pieces = self.pieces
        piece = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.taken = self.body_len
        return piece

    def left(self, deadline: float, allowance: float, what: str) -> float:
        """Seconds left to wait for ``what`` (the answer's head, or its body's first byte) by
        ``deadline``; raises what ended the wait instead: the answer's protocol error, the
        site's close, or none left (``allowance``: the caller's whole wait, for the message)."""
        if self.failure is not None:
            raise self.failure
        if self.eof:
            if self.state != HEAD:
                raise Disconnected("the site closed the connection before the first byte of the body")
            if not self.answered:
                raise ClosedBeforeAnswer(
                    "the site closed the connection before answering", time.monotonic() - self.sent
                )
            raise Disconnected("the site closed the connection in the middle of its answer's head")
        left = deadline - time.monotonic()
        if left <= 0:
            raise UpstreamTimeout(f"no {what} within {allowance:g} s")
        return left

    async def more(self, timeout: float, what: str, limit: float | None = None) -> None:
        """Wait until more bytes arrive or the peer closes; raise on timeout (the message
        names ``limit``, the caller's whole allowance, when the wait is what is left of it)."""
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        fut = self.loop.create_future()
        self.waiter = fut
        timer = self.loop.call_later(timeout, _expire, fut, what, limit or timeout)
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


def _expire(fut: asyncio.Future[None], what: str, allowance: float) -> None:
    """The wait of :meth:`Conn.more` ran out (its message written only then: most waits end)."""
    if not fut.done():
        fut.set_exception(UpstreamTimeout(f"no {what} within {allowance:g} s"))


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
        "_keep",
        "_done",
        "_read_timeout",
    )

    def __init__(self, pool: Keeper, conn: Conn, read_timeout: float) -> None:
        self.status = conn.status
        self.headers = conn.headers  # (lower-case name, value), in the site's order
        self._mode = conn.mode  # "none" | "length" | "chunked" | "close"
        self.content_length = conn.length if self._mode == "length" else None
        self._pool, self._conn = pool, conn
        self._keep = conn.keep
        self._done = False
        self._read_timeout = read_timeout
        if conn.state == DONE and not conn.pieces:
            self._finish()

    @property
    def has_body(self) -> bool:
        """False for answers that cannot have one: HEAD, 204, 304."""
        return self._mode != "none"

    @property
    def ends_at_close(self) -> bool:
        """The body has neither a length nor chunks: it ends when the site closes, so a body
        cut short by a clean close cannot be told from a whole one by its framing."""
        return self._mode == "close"

    def header(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return default

    async def read(self, limit: int | None = None, deadline: float | None = None) -> bytes:
        """The whole body; over ``limit`` bytes, :class:`AnswerTooLarge` (the connection is
        closed, the rest never read: a Content-Length over it is refused before any byte);
        not whole by ``deadline`` (``time.monotonic()``), :class:`UpstreamTimeout`."""
        if limit is not None and self.content_length is not None and self.content_length > limit:
            self.release()
            raise AnswerTooLarge(f"answer of {self.content_length} bytes is over the limit of {limit}")
        conn = self._conn
        if conn is not None and conn.state == DONE and conn.failure is None:
            # the whole body came with the head (most answers): no generator, no wait
            body = conn.take() if conn.pieces else b""
            if limit is not None and len(body) > limit:
                self.release()
                raise AnswerTooLarge(f"answer over the limit of {limit} bytes")
            self._finish()
            return body
        parts: list[bytes] = []
        size = 0
        pieces = self.chunks(deadline)
        async for piece in pieces:
            size += len(piece)
            if limit is not None and size > limit:
                await pieces.aclose()
                self.release()
                raise AnswerTooLarge(f"answer over the limit of {limit} bytes")
            parts.append(piece)
        return b"".join(parts)

    async def wait_body(self, timeout: float) -> None:
        """Wait until the body's first byte (or its end) has arrived, consuming nothing;
        :class:`UpstreamTimeout` after ``timeout`` seconds, :class:`Disconnected` (or the
        protocol error) when the connection ends or breaks before the first byte (either way
        the connection is closed: nothing of the body can have been relayed yet)."""
        conn = self._conn
        if conn is None:
            return
        deadline = time.monotonic() + timeout
        try:
            while not (conn.pieces or conn.state == DONE):
                await conn.more(conn.left(deadline, timeout, "body byte"), "body byte", timeout)
        except BaseException:
            self.release()
            raise

    async def chunks(self, deadline: float | None = None) -> AsyncGenerator[bytes, None]:
        """The body, de-chunked, in the pieces it arrives in; each wait bounded by the read
        timeout, and all of them by ``deadline`` when given (no timer unless a wait happens)."""
        conn = self._conn
        if conn is None:  # read to its end already, or released
            return
        try:
            while True:
                if conn.pieces:
                    yield conn.take()
                    continue
                if conn.failure is not None:
                    raise conn.failure
                if conn.state == DONE:
                    break
                if conn.eof:
                    # the body ends at a clean close; a reset (conn.error) cuts it short
                    if self._mode == "close" and conn.error is None:
                        self._keep = False
                        break
                    raise Disconnected("the site closed the connection in the middle of the body")
                if deadline is None:
                    await conn.more(self._read_timeout, "body bytes")
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UpstreamTimeout("the body was not whole by its deadline")
                await conn.more(min(self._read_timeout, left), "body bytes")
        except BaseException:
            self.release()
            raise
        self._finish()

    def _finish(self) -> None:
        self._done = True
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is None:
            return
        if self._keep and conn.state == DONE and not conn.pieces and conn.alive():
            conn.state = IDLE
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
