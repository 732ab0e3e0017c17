"""The pooled HTTP/1.1 client over real sockets: gridctl's own HttpServer plays a well-behaved
site, and small scripted asyncio servers send what a well-behaved server never would. Every
test runs once on asyncio's loop and once on uvloop's (the daemon's)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gridctl.net.client import Pool
from gridctl.net.errors import ConnectError, Disconnected, ProtocolError, UpstreamTimeout
from gridctl.net.messages import Request, Response, ServerConfig, StreamingResponse
from gridctl.net.server import HttpServer

Run = Callable[[Coroutine[Any, Any, None]], None]
TEST_TIMEOUT_S = 5.0  # a hung test fails instead of hanging the suite


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a test's coroutine on a fresh event loop of the parametrized kind."""
    factory = None
    if request.param == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    def run(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))

    return run


async def until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still waiting for {what}")


# -- a scripted raw server --------------------------------------------------------------------------

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
Serve = Callable[["Script", int, Reader, Writer], Awaitable[None]]


class Script:
    """A raw TCP server on 127.0.0.1 that plays ``serve(script, index, reader, writer)`` on each
    connection (index: 0 for the first). It counts connections, records the requests it read and
    the connections the client closed."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.connections = 0
        self.requests: list[bytes] = []
        self.client_closed = 0
        self.failures: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Script:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        if exc_type is None:
            assert not self.failures, f"the scripted server failed: {self.failures!r}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.serve(self, index, reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over (asyncio logs a cancelled callback as an error)
        except Exception as exc:  # a broken script: reported when the test leaves the server
            self.failures.append(exc)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The next request, head and Content-Length body; b"" when the client closed instead."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed += 1
            return b""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def answering(*answers: bytes) -> Serve:
    """Answer the n-th request (over all connections) with answers[n], the last one from then on;
    on each connection until the client closes it."""

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        while await s.read_request(reader):
            writer.write(answers[min(len(s.requests), len(answers)) - 1])
            await writer.drain()

    return serve


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


# -- gridctl's own server -----------------------------------------------------------------------------


@asynccontextmanager
async def http_server(
    handler: Callable[[Request], Awaitable[Response | StreamingResponse]], config: ServerConfig | None = None
) -> AsyncIterator[HttpServer]:
    srv = HttpServer(handler, config)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(grace=0.2)


# -- 1. Content-Length answers, Host, reuse --------------------------------------------------------------


def test_content_length_answer_is_read_and_its_connection_reused(run: Run) -> None:
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return Response(200, b"hello " + req.body, "text/plain", headers=[("X-One", "1"), ("X-Two", "2")])

    async def main() -> None:
        async with http_server(handler) as srv:
            pool = Pool()
            resp = await pool.request("POST", f"{srv.url}/v1/things?x=1", [("X-Req", "v")], b"world")
            assert resp.status == 200 and resp.content_length == 11
            names = [name for name, _ in resp.headers]
            assert names == ["date", "server", "content-type", "content-length", "x-one", "x-two"]
            assert resp.header("x-two") == "2" and resp.header("content-type") == "text/plain"
            assert resp.header("x-none") is None and resp.header("x-none", "d") == "d"
            assert pool.idle_count() == 0  # in use until its body is read
            assert await resp.read() == b"hello world"
            assert pool.idle_count() == 1
            resp.release()  # after the end of the body: nothing changes
            assert pool.idle_count() == 1
            first = seen[0]
            assert (first.method, first.target, first.body) == ("POST", "/v1/things?x=1", b"world")
            assert first.headers["host"] == f"127.0.0.1:{srv.port}"
            assert first.headers["x-req"] == "v" and first.headers["content-length"] == "5"

            again = await pool.request("GET", f"{srv.url}/again")
            assert (again.status, await again.read()) == (200, b"hello ")
            assert seen[1].target == "/again" and "content-length" not in seen[1].headers
            assert pool.connects == 1 and pool.idle_count() == 1 and len(srv.connections) == 1
            pool.close()

    run(main())


def test_headers_are_lower_cased_in_the_sites_order(run: Run) -> None:
    answer = (
        b"HTTP/1.1 201 Created\r\nX-B: 1\r\nContent-Type: text/plain\r\nx-a:   2  \r\nX-B: 3\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )

    async def main() -> None:
        async with Script(answering(answer)) as s:
            pool = Pool()
            resp = await pool.request("GET", s.url("/h"))
            assert resp.status == 201
            assert resp.headers == [
                ("x-b", "1"),
                ("content-type", "text/plain"),
                ("x-a", "2"),
                ("x-b", "3"),
                ("content-length", "5"),
            ]
            assert resp.header("x-b") == "1"  # the first of a repeated header
            assert await resp.read() == b"hello"
            assert s.requests[0].startswith(b"GET /h HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n" % s.port)
            pool.close()

    run(main())


# -- 2. Chunked answers from HttpServer's StreamingResponse ---------------------------------------------


def test_chunks_come_as_they_arrive_and_the_connection_is_reused(run: Run) -> None:
    parts = [b"data: first\n\n", b"data: second\n\n", b"x" * 70_000, b"data: [DONE]\n\n"]
    acks: asyncio.Queue[None] = asyncio.Queue()

    async def stream() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await acks.get()  # the next part only once the client has this one

    async def handler(req: Request) -> Response | StreamingResponse:
        if req.path == "/stream":
            return StreamingResponse(stream())
        return Response(200, b"plain")

    async def main() -> None:
        async with http_server(handler) as srv:
            pool = Pool()
            resp = await pool.request("GET", f"{srv.url}/stream")
            assert resp.header("transfer-encoding") == "chunked" and resp.content_length is None
            got, pieces, sent = bytearray(), 0, 1
            async for piece in resp.chunks():
                got += piece
                pieces += 1
                if got == b"".join(parts[:sent]):  # a whole part in: let the server send the next
                    sent += 1
                    acks.put_nowait(None)
            assert got == b"".join(parts) and pieces >= len(parts)
            assert pool.idle_count() == 1
            again = await pool.request("GET", f"{srv.url}/plain")
            assert await again.read() == b"plain"
            assert pool.connects == 1
            pool.close()

    run(main())


# -- 3. Scripted framing -----------------------------------------------------------------------------

CHUNKED_WITH_TRAILERS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n"
    b'7;a=1;b="x y"\r\n, world\r\n'
    b"A\r\n0123456789\r\n"
    b"0;last\r\nExpires: never\r\nX-Sum: abc\r\n\r\n"
)


def test_chunked_with_extensions_and_trailers_one_byte_per_write(run: Run) -> None:
    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        while await s.read_request(reader):
            for i in range(len(CHUNKED_WITH_TRAILERS)):
                writer.write(CHUNKED_WITH_TRAILERS[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)  # let the client read it alone

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            for _ in range(2):  # the trailers were consumed exactly: the second answer parses
                resp = await pool.request("GET", s.url())
                assert resp.status == 200 and resp.header("transfer-encoding") == "chunked"
                assert await resp.read() == b"hello, world0123456789"
                assert pool.idle_count() == 1
            assert pool.connects == 1 and s.connections == 1
            pool.close()

    run(main())


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
    ],
    ids=["http10", "http11-no-length"],
)
def test_a_body_without_length_is_read_to_the_close_and_not_pooled(run: Run, head: bytes) -> None:
    body = b"x" * 100_000 + b"end"

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(head + body[:50_000])
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(body[50_000:])
        await writer.drain()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            for n in (1, 2):
                resp = await pool.request("GET", s.url())
                assert resp.content_length is None
                assert await resp.read() == body
                assert pool.idle_count() == 0
                assert pool.connects == n and s.connections == n
            pool.close()

    run(main())


@pytest.mark.parametrize(
    ("answer", "pooled"),
    [
        (ok(), True),
        (ok(extra=b"Connection: close\r\n"), False),
        (ok(extra=b"Connection: Close\r\n"), False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive\r\n\r\nok", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            False,
        ),
    ],
    ids=["http11", "close", "Close", "http10", "http10-keep-alive", "chunked-close"],
)
def test_the_connection_is_pooled_only_when_both_sides_keep_it_alive(
    run: Run, answer: bytes, pooled: bool
) -> None:
    async def main() -> None:
        async with Script(answering(answer)) as s:  # the server never closes first
            pool = Pool()
            for _ in range(2):
                resp = await pool.request("GET", s.url())
                assert await resp.read() == b"ok"
                assert pool.idle_count() == (1 if pooled else 0)
            assert pool.connects == s.connections == (1 if pooled else 2)
            if not pooled:
                await until(lambda: s.client_closed == 2, "the client to close both connections")
            pool.close()

    run(main())


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "interim-heads-first"])
def test_interim_1xx_heads_are_skipped(run: Run, split: bool) -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    )
    final = ok(b"final", b"X-Final: yes\r\n")

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        while await s.read_request(reader):
            if split:
                writer.write(interim)
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(final)
            else:
                writer.write(interim + final)
            await writer.drain()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            for _ in range(2):
                resp = await pool.request("POST", s.url(), body=b"{}")
                assert resp.status == 200 and resp.header("link") is None and resp.header("x-final") == "yes"
                assert await resp.read() == b"final"
            assert pool.connects == s.connections == 1
            pool.close()

    run(main())


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/json\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 1000\r\n\r\n'),
    ],
    ids=["head", "204-length-0", "204", "304"],
)
def test_answers_without_a_body(run: Run, method: str, answer: bytes) -> None:
    async def main() -> None:
        async with Script(answering(answer, ok(b"next"))) as s:
            pool = Pool()
            resp = await pool.request(method, s.url())
            assert pool.idle_count() == 1  # pooled as soon as the head is in: there is no body
            assert await resp.read() == b""
            if method == "HEAD":
                assert resp.header("content-length") == "1000"
            nxt = await pool.request("GET", s.url())  # same connection, framed right
            assert (nxt.status, await nxt.read()) == (200, b"next")
            assert pool.connects == s.connections == 1
            pool.close()

    run(main())


# -- 4. Errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        ("x-a", "1\r\nX-Injected: 1"),
        ("x-a", "1\r\n\r\nGET /smuggled HTTP/1.1"),
        ("x-a", "1\nX-Injected: 1"),
        ("x-a", "1\rX-Injected: 1"),
        ("x-a", "a\x00b"),
        ("x a", "1"),
        ("x-a:", "1"),
        ("x-a\r\nX-Injected", "1"),
        ("", "1"),
    ],
    ids=["crlf", "crlfcrlf", "lf", "cr", "nul", "name-space", "name-colon", "name-crlf", "name-empty"],
)
def test_a_header_that_would_split_the_head_is_refused_before_a_byte_is_sent(
    run: Run, header: tuple[str, str]
) -> None:
    async def main() -> None:
        async with Script(answering(ok(b"first"), ok(b"second"))) as s:
            pool = Pool()
            with pytest.raises(ProtocolError, match="refusing to send header"):
                await pool.request("GET", s.url(), [header])
            assert pool.connects == 0
            # a good request after it: the first connection the server sees, the first request it reads
            resp = await pool.request("GET", s.url("/good"), [("X-Tab", "a\tb")])
            assert await resp.read() == b"first"
            assert s.connections == pool.connects == 1
            assert s.requests == [b"GET /good HTTP/1.1\r\nhost: 127.0.0.1:%d\r\nX-Tab: a\tb\r\n\r\n" % s.port]
            # with a connection idle in the pool: still nothing sent, and the connection stays pooled
            with pytest.raises(ProtocolError, match="refusing to send header"):
                await pool.request("POST", s.url(), [("x-ok", "1"), header], b"{}")
            assert pool.idle_count() == 1
            assert await (await pool.request("GET", s.url("/again"))).read() == b"second"
            assert len(s.requests) == 2 and s.requests[1].startswith(b"GET /again ")
            assert s.connections == pool.connects == 1
            pool.close()

    run(main())


def test_header_names_kept_are_short_ones_and_each_name_is_still_checked(run: Run) -> None:
    """A client sending new 8 KiB header names (the daemon forwards them) fills the pool's set
    of checked names with none of them; a long name is checked, and sent, each time."""

    async def main() -> None:
        async with Script(answering(ok(b"first"), ok(b"second"))) as s:
            pool = Pool()
            long_name = "x-" + "n" * 8000
            resp = await pool.request("GET", s.url(), [("x-short", "1"), (long_name, "2")])
            assert await resp.read() == b"first"
            assert "x-short" in pool._names and long_name not in pool._names
            with pytest.raises(ProtocolError, match="refusing to send header"):
                await pool.request("GET", s.url(), [(long_name + " ", "1")])
            resp = await pool.request("GET", s.url(), [(long_name, "3")])
            assert await resp.read() == b"second"
            assert s.requests[1].endswith(f"{long_name}: 3\r\n\r\n".encode())
            pool.close()

    run(main())


def test_connect_refused_is_a_connect_error_at_once(run: Run) -> None:
    with socket.socket() as sock:  # bound, not listening: the kernel refuses connections to it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

        async def main() -> None:
            pool = Pool()
            start = time.monotonic()
            with pytest.raises(ConnectError, match=f"cannot connect to 127.0.0.1:{port}"):
                await pool.request("GET", f"http://127.0.0.1:{port}/", connect_timeout=3.0)
            assert time.monotonic() - start < 3.0  # refused, not timed out
            assert pool.connects == 0

        run(main())


def test_connect_timeout_is_a_connect_error(run: Run) -> None:
    # a listener whose accept queue is full: the kernel drops further SYNs, the connect hangs
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        addr = listener.getsockname()
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(addr)

            async def main() -> None:
                pool = Pool(connect_timeout=0.2)
                start = time.monotonic()
                with pytest.raises(ConnectError, match="timed out after 0.2 s"):
                    await pool.request("GET", f"http://127.0.0.1:{addr[1]}/")
                assert time.monotonic() - start < 1.2

            run(main())
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http:///path", "127.0.0.1:80"])
def test_a_url_that_is_not_http_is_a_connect_error(run: Run, url: str) -> None:
    async def main() -> None:
        with pytest.raises(ConnectError, match="not an http"):
            await Pool().request("GET", url)

    run(main())


async def hold(s: Script, index: int, reader: Reader, writer: Writer) -> None:
    """Read a request, never answer, until the client closes."""
    await s.read_request(reader)
    await reader.read()
    s.client_closed += 1


def test_no_response_head_in_time_is_an_upstream_timeout(run: Run) -> None:
    async def main() -> None:
        async with Script(hold) as s:
            pool = Pool()
            start = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="no response head"):
                await pool.request("GET", s.url(), head_timeout=0.2)
            assert 0.15 < time.monotonic() - start < 1.2
            await until(lambda: s.client_closed == 1, "the client to close the connection")
            assert pool.idle_count() == 0 and s.connections == 1
            pool.close()

    run(main())


def test_a_head_that_trickles_in_past_the_timeout_is_an_upstream_timeout(run: Run) -> None:
    """The head timeout is a deadline for the whole head, not for each of its bytes."""

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while True:
            writer.write(b"z")
            await writer.drain()
            await asyncio.sleep(0.03)

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            start = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await pool.request("GET", s.url(), head_timeout=0.3)
            assert time.monotonic() - start < 1.3
            pool.close()

    run(main())


@pytest.mark.parametrize(
    "start",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nhello",
    ],
    ids=["length", "chunked", "to-close"],
)
def test_a_body_that_stalls_past_read_timeout_is_an_upstream_timeout(run: Run, start: bytes) -> None:
    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(start)
        await writer.drain()
        await reader.read()  # until the client gives up
        s.client_closed += 1

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            resp = await pool.request("GET", s.url(), head_timeout=3.0, read_timeout=0.2)
            got = bytearray()
            began = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="no body bytes within 0.2 s"):
                async for piece in resp.chunks():
                    got += piece
            assert got == b"hello" and time.monotonic() - began < 1.2
            await until(lambda: s.client_closed == 1, "the client to close the connection")
            assert pool.idle_count() == 0
            pool.close()

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/2 200\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 \xb200 OK\r\n\r\n",  # a latin-1 superscript two: str.isdigit() says it is a digit
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 << 10),
        b"HTTP/1.1 200 OK\r\nx-a: 1\nx-b: 2\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: 1\rx-b: 2\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: 1\x00\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\nx-b: 2\r\n\r\n",
        # what the hand-written parser took and RFC 9112 / 9110 do not
        b"HTTP/1.1 200 OK\r\nx(a): 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx\x7fa: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 1 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",  # a control character in the reason phrase
        b"HTTP/1.1 200 O\x7fK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: "
        + b"a" * 100_000
        + b"\r\nContent-Length: 0\r\n\r\n",  # in one read, whole
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%02d: %s\r\n" % (i, b"a" * 2000) for i in range(50)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x: 1\r\n" * 8000 + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-L: " + b"v" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=[
        "http2",
        "icy",
        "no-status",
        "status-not-a-number",
        "status-superscript",
        "header-no-colon",
        "length-not-a-number",
        "length-negative",
        "length-superscript",
        "gzip",
        "head-too-big",
        "header-bare-lf",
        "header-lone-cr",
        "header-nul",
        "length-then-bare-lf",
        "name-not-a-token",
        "name-del",
        "status-099",
        "status-1",
        "status-600",
        "101-upgrade",
        "101",
        "obs-fold",
        "length-twice-equal",
        "length-twice-different",
        "te-split-gzip-chunked",
        "te-split-chunked-chunked",
        "te-chunked-then-gzip",
        "te-and-length",
        "te-in-http10",
        "http12",
        "http20",
        "reason-nul",
        "reason-del",
        "head-100k-one-read",
        "head-50-headers-of-2k",
        "head-8000-headers",
        "header-9000",
    ],
)
def test_a_malformed_head_is_a_protocol_error_and_closes_the_connection(run: Run, answer: bytes) -> None:
    async def main() -> None:
        async with Script(answering(answer)) as s:
            pool = Pool()
            with pytest.raises(ProtocolError):
                await pool.request("GET", s.url())
            await until(lambda: s.client_closed == 1, "the client to close the connection")
            assert pool.idle_count() == 0 and s.connections == 1
            pool.close()

    run(main())


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"1" * 5000,
        b"-3\r\n5\r\nhello\r\n0\r\n\r\n",  # int(..., 16) takes a sign: a negative size must not pass
        b"0x5\r\nhello\r\n0\r\n\r\n",  # ... and a 0x prefix
        b"\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",  # whitespace around the size: the hand-written parser stripped it
        b"\t5\r\nhello\r\n0\r\n\r\n",
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",  # an extension holding a bare LF, CR, NUL or DEL
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
        b"5;a\x7fb\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",  # a size line ended by a bare LF
        b"5\r\nhello\r\n0\r\nX-T: a\x01b\r\n\r\n",  # trailers with a control byte, or no colon
        b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
    ],
    ids=[
        "not-hex",
        "no-crlf-after-data",
        "size-line-too-long",
        "negative",
        "0x-prefix",
        "empty",
        "size-space-after",
        "size-tab-before",
        "ext-lf",
        "ext-cr",
        "ext-nul",
        "ext-del",
        "size-bare-lf",
        "trailer-control",
        "trailer-no-colon",
    ],
)
def test_a_bad_chunk_is_a_protocol_error(run: Run, body: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body

    async def main() -> None:
        async with Script(answering(answer)) as s:
            pool = Pool()
            resp = await pool.request("GET", s.url())
            assert resp.status == 200
            with pytest.raises(ProtocolError, match="chunk"):
                await resp.read()
            await until(lambda: s.client_closed == 1, "the client to close the connection")
            assert pool.idle_count() == 0
            pool.close()

    run(main())


def test_a_trailer_that_never_ends_is_a_protocol_error(run: Run) -> None:
    """llhttp keeps a header whole until its line ends: a site trickling one forever is cut off
    (its bytes count as framing, which may not outgrow the data by more than 64 KiB)."""

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: ")
        for _ in range(400):
            await writer.drain()
            await asyncio.sleep(0.001)
            writer.write(b"t" * 1000)
        await reader.read()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            resp = await pool.request("GET", s.url())
            got = bytearray()
            with pytest.raises(ProtocolError, match="framing"):
                async for piece in resp.chunks():
                    got += piece
            assert got == b"hello" and pool.idle_count() == 0
            pool.close()

    run(main())


def test_bytes_after_a_head_answer_drop_the_connection(run: Run) -> None:
    """A HEAD's answer has no body, whatever its Content-Length says: bytes after it were not
    asked for, and the next request goes on a new connection."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

    async def main() -> None:
        async with Script(answering(answer, ok(b"next"))) as s:
            pool = Pool()
            resp = await pool.request("HEAD", s.url())
            assert resp.status == 200 and not resp.has_body and await resp.read() == b""
            await until(lambda: s.client_closed == 1, "the client to close the connection")
            nxt = await pool.request("GET", s.url())
            assert (nxt.status, await nxt.read()) == (200, b"next")
            assert pool.connects == s.connections == 2
            pool.close()

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhell",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n",
    ],
    ids=["short-length", "mid-chunk", "no-last-chunk", "mid-trailers"],
)
def test_a_close_in_the_middle_of_the_body_is_disconnected(run: Run, answer: bytes) -> None:
    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(answer)
        await writer.drain()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            resp = await pool.request("GET", s.url())
            assert resp.status == 200
            with pytest.raises(Disconnected, match="middle of the body"):
                await resp.read()
            assert pool.idle_count() == 0
            pool.close()

    run(main())


def test_a_reset_in_a_body_read_to_the_close_is_disconnected_not_a_short_body(run: Run) -> None:
    """A body that ends at the close must end with a clean close: a reset cuts it short."""
    first_piece_in = asyncio.Event()

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\npartial")
        await writer.drain()
        await first_piece_in.wait()
        no_linger = struct.pack("ii", 1, 0)  # close at once with a reset, not a FIN
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, no_linger)
        writer.transport.abort()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            resp = await pool.request("GET", s.url())
            got = bytearray()
            with pytest.raises(Disconnected):
                async for piece in resp.chunks():
                    got += piece
                    first_piece_in.set()
            assert got == b"partial"
            pool.close()

    run(main())


def test_a_close_in_the_middle_of_the_head_is_disconnected(run: Run) -> None:
    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            with pytest.raises(Disconnected, match="middle of its answer's head"):
                await pool.request("GET", s.url())
            assert s.connections == pool.connects == 1
            pool.close()

    run(main())


async def read_and_close(s: Script, index: int, reader: Reader, writer: Writer) -> None:
    await s.read_request(reader)


def test_a_new_connection_closed_before_any_answer_is_disconnected_without_retry(run: Run) -> None:
    async def main() -> None:
        async with Script(read_and_close) as s:
            pool = Pool()
            with pytest.raises(Disconnected, match="before answering"):
                await pool.request("POST", s.url(), body=b"{}")
            assert s.connections == pool.connects == 1 and len(s.requests) == 1
            pool.close()

    run(main())


# -- 5. A reused connection the site closed: one retry -----------------------------------------------


def test_a_reused_connection_closed_before_answering_is_retried_once_on_a_new_one(run: Run) -> None:
    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        if index == 0:  # answers the first request, then reads the second and closes
            await s.read_request(reader)
            writer.write(ok(b"first"))
            await writer.drain()
            await s.read_request(reader)
            return
        while await s.read_request(reader):
            writer.write(ok(b"retried"))
            await writer.drain()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            assert await (await pool.request("GET", s.url("/1"))).read() == b"first"
            resp = await pool.request("POST", s.url("/2"), [("X-Try", "a")], b'{"n": 2}')
            assert (resp.status, await resp.read()) == (200, b"retried")
            assert s.connections == pool.connects == 2
            assert len(s.requests) == 3 and s.requests[2] == s.requests[1]  # the same request, again
            assert s.requests[2].endswith(b'X-Try: a\r\ncontent-length: 8\r\n\r\n{"n": 2}')
            assert pool.idle_count() == 1
            pool.close()

    run(main())


def test_when_the_retry_fails_too_the_error_is_raised(run: Run) -> None:
    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        if index == 0:
            await s.read_request(reader)
            writer.write(ok(b"first"))
            await writer.drain()
        await s.read_request(reader)  # then every request read is closed on, unanswered

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            assert await (await pool.request("GET", s.url())).read() == b"first"
            with pytest.raises(Disconnected, match="before answering"):
                await pool.request("GET", s.url())
            assert s.connections == pool.connects == 2 and len(s.requests) == 3
            pool.close()

    run(main())


def test_a_reused_connection_closed_long_after_the_request_is_not_retried(run: Run) -> None:
    """A close that comes a while after the request (0.75 s, past the 0.5 s stale window) is the
    site giving up on it, not an idle close crossing it: sending it again could run it twice."""

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(ok(b"first"))
        await writer.drain()
        if await s.read_request(reader):
            await asyncio.sleep(0.75)  # then close, unanswered

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            assert await (await pool.request("GET", s.url())).read() == b"first"
            with pytest.raises(Disconnected, match="before answering"):
                await pool.request("POST", s.url("/once"), body=b"{}")
            assert s.connections == pool.connects == 1
            assert len(s.requests) == 2 and s.requests[1].startswith(b"POST /once ")  # exactly once
            assert pool.idle_count() == 0
            pool.close()

    run(main())


def test_a_resend_shares_the_first_attempts_head_deadline(run: Run) -> None:
    """head_timeout 0.6 s: the reused connection is closed 0.3 s after the request, the resend is
    answered 0.45 s after it arrives, 0.75 s in all: too late, though within 0.6 s of the resend."""

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        if index == 0:
            await s.read_request(reader)
            writer.write(ok(b"first"))
            await writer.drain()
            if await s.read_request(reader):
                await asyncio.sleep(0.3)  # within the stale window: the client sends it again
            return
        await s.read_request(reader)
        await asyncio.sleep(0.45)
        writer.write(ok(b"late"))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            assert await (await pool.request("GET", s.url())).read() == b"first"
            with pytest.raises(UpstreamTimeout, match="no response head within 0.6 s"):
                await pool.request("GET", s.url("/resent"), head_timeout=0.6)
            assert s.connections == pool.connects == 2
            assert len(s.requests) == 3 and s.requests[2] == s.requests[1]  # sent twice, once on each
            pool.close()

    run(main())


def test_a_reused_connection_closed_after_an_interim_head_is_not_retried(run: Run) -> None:
    """A 100 Continue shows the site has the request: sending it again could run it twice."""

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(ok(b"first"))
        await writer.drain()
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            assert await (await pool.request("GET", s.url())).read() == b"first"
            with pytest.raises(Disconnected):
                await pool.request("POST", s.url(), body=b"{}")
            assert s.connections == pool.connects == 1 and len(s.requests) == 2
            pool.close()

    run(main())


# -- 6. release() and an early break ---------------------------------------------------------------------


async def stream_forever() -> AsyncIterator[bytes]:
    n = 0
    while True:
        yield b"data: %d\n\n" % n
        n += 1
        await asyncio.sleep(0.005)


async def streams_and_plain(req: Request) -> Response | StreamingResponse:
    if req.path == "/stream":
        return StreamingResponse(stream_forever())
    return Response(200, b"y" * 100_000 if req.path == "/big" else b"plain")


def test_release_before_the_body_is_read_closes_the_connection(run: Run) -> None:
    async def main() -> None:
        async with http_server(streams_and_plain) as srv:
            pool = Pool()
            resp = await pool.request("GET", f"{srv.url}/big")
            assert resp.status == 200
            resp.release()
            resp.release()  # twice: no harm
            assert pool.idle_count() == 0
            await until(lambda: not srv.connections, "the server to see the connection close")
            nxt = await pool.request("GET", f"{srv.url}/plain")
            assert await nxt.read() == b"plain"
            assert pool.connects == 2 and pool.idle_count() == 1
            pool.close()

    run(main())


def test_an_early_break_out_of_chunks_then_release_closes_the_connection(run: Run) -> None:
    async def main() -> None:
        async with http_server(streams_and_plain) as srv:
            pool = Pool()
            resp = await pool.request("GET", f"{srv.url}/stream")
            got = bytearray()
            async for piece in resp.chunks():
                got += piece
                if b"data: 1\n\n" in got:
                    break
            resp.release()
            assert got.startswith(b"data: 0\n\ndata: 1\n\n") and pool.idle_count() == 0
            await until(lambda: not srv.connections, "the server to see the connection close")
            nxt = await pool.request("GET", f"{srv.url}/plain")
            assert await nxt.read() == b"plain"
            assert pool.connects == 2
            pool.close()

    run(main())


# -- 7. Idle connections ---------------------------------------------------------------------------------


def test_an_idle_connection_expires_after_idle_s(run: Run) -> None:
    async def main() -> None:
        async with http_server(streams_and_plain) as srv:
            pool = Pool(idle_s=0.05)
            assert await (await pool.request("GET", f"{srv.url}/plain")).read() == b"plain"
            assert await (await pool.request("GET", f"{srv.url}/plain")).read() == b"plain"
            assert pool.connects == 1  # within idle_s: reused
            await asyncio.sleep(0.1)
            assert await (await pool.request("GET", f"{srv.url}/plain")).read() == b"plain"
            assert pool.connects == 2 and pool.idle_count() == 1
            await until(lambda: len(srv.connections) == 1, "the expired connection to be closed")
            pool.close()

    run(main())


def test_a_pooled_connection_the_site_closed_is_replaced(run: Run) -> None:
    async def main() -> None:
        async with http_server(streams_and_plain, ServerConfig(keepalive_s=0.05)) as srv:
            pool = Pool()
            assert await (await pool.request("GET", f"{srv.url}/plain")).read() == b"plain"
            assert pool.idle_count() == 1
            await until(lambda: not srv.connections, "the server to close the idle connection")
            resp = await pool.request("GET", f"{srv.url}/plain")
            assert await resp.read() == b"plain"
            assert pool.connects == 2 and pool.idle_count() == 1
            pool.close()

    run(main())


@pytest.mark.parametrize("later", [True, False], ids=["while-idle", "behind-the-answer"])
def test_unsolicited_bytes_on_a_pooled_connection_drop_it(run: Run, later: bool) -> None:
    """Bytes nobody asked for would be read as the next request's answer: the connection goes."""
    fake = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        if index > 0:
            await answering(ok(b"fresh"))(s, index, reader, writer)
            return
        await s.read_request(reader)
        writer.write(ok(b"first") + (b"" if later else fake))
        await writer.drain()
        if later:
            await asyncio.sleep(0.1)  # the client has pooled the connection by now
            writer.write(fake)
            await writer.drain()
        while await s.read_request(reader):  # a client that sent on it would be answered by `fake`
            pass

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            assert await (await pool.request("GET", s.url("/1"))).read() == b"first"
            await until(lambda: s.client_closed == 1, "the client to close the connection")
            resp = await pool.request("GET", s.url("/2"))
            assert (resp.status, await resp.read()) == (200, b"fresh")
            assert s.connections == pool.connects == 2 and len(s.requests) == 2
            assert pool.idle_count() == 1
            pool.close()

    run(main())


def test_max_idle_and_close(run: Run) -> None:
    async def main() -> None:
        async with http_server(streams_and_plain) as srv:
            pool = Pool(max_idle=1)
            first = await pool.request("GET", f"{srv.url}/plain")
            second = await pool.request("GET", f"{srv.url}/plain")  # the first is busy: a second connection
            third = await pool.request("GET", f"{srv.url}/plain")
            assert pool.connects == 3 and len(srv.connections) == 3
            assert await first.read() == b"plain" and await second.read() == b"plain"
            assert pool.idle_count() == 1  # one kept, the older one closed
            await until(lambda: len(srv.connections) == 2, "the connection over max_idle to close")
            pool.close()
            assert pool.idle_count() == 0
            assert await third.read() == b"plain"  # done after close(): closed, not pooled
            assert pool.idle_count() == 0
            await until(lambda: not srv.connections, "every connection to close")

    run(main())


# -- 8. Large bodies, with back-pressure -----------------------------------------------------------------


def test_a_large_body_arrives_intact_and_the_connection_is_reused(run: Run) -> None:
    big = os.urandom(8 << 20)
    pieces = [big[i : i + (128 << 10)] for i in range(0, len(big), 128 << 10)]

    async def stream() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def handler(req: Request) -> Response | StreamingResponse:
        if req.path == "/stream":
            return StreamingResponse(stream(), content_type="application/octet-stream")
        return Response(200, big, "application/octet-stream")

    async def main() -> None:
        async with http_server(handler) as srv:
            pool = Pool()
            resp = await pool.request("GET", f"{srv.url}/length")
            assert resp.content_length == len(big)
            got = bytearray()
            async for piece in resp.chunks():
                await asyncio.sleep(0)  # a consumer slower than loopback: reading pauses and resumes
                got += piece
            assert got == big
            resp = await pool.request("GET", f"{srv.url}/stream")
            assert await resp.read() == big
            assert pool.connects == 1 and pool.idle_count() == 1
            pool.close()

    run(main())


# -- issue 13: a hostile site is bounded in time and memory ------------------------------------------


def test_a_flood_of_1xx_heads_is_a_protocol_error_after_a_few(run: Run) -> None:
    from gridctl.net.response import MAX_INTERIM

    sent: list[int] = []

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        for _ in range(10_000):  # an endless flood, stopped by the client closing
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            sent.append(1)
            await writer.drain()
            await asyncio.sleep(0.001)

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            with pytest.raises(ProtocolError, match=f"more than {MAX_INTERIM} interim"):
                await pool.request("POST", s.url(), body=b"{}", head_timeout=4.0)
            assert len(sent) < 1000  # the client stopped the flood, long before its end
            pool.close()

    run(main())


def test_exactly_the_allowed_1xx_heads_still_reach_the_answer(run: Run) -> None:
    from gridctl.net.response import MAX_INTERIM

    interim = b"HTTP/1.1 100 Continue\r\n\r\n" * MAX_INTERIM
    final = ok(b"final")

    async def main() -> None:
        async with Script(answering(interim + final)) as s:
            pool = Pool()
            resp = await pool.request("POST", s.url(), body=b"{}")
            assert resp.status == 200 and await resp.read() == b"final"
            pool.close()

    run(main())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_read_whole_over_its_limit_is_refused(run: Run, framing: str) -> None:
    from gridctl.net.errors import AnswerTooLarge

    size = 1 << 20
    streamed: list[int] = []

    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        if framing == "content-length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (100 * size))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        for _ in range(100 * size // len(piece)):  # 100 MiB, unless the client closes first
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece) if framing == "chunked" else piece)
            streamed.append(len(piece))
            await writer.drain()

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            resp = await pool.request("POST", s.url(), body=b"{}")
            with pytest.raises(AnswerTooLarge, match=f"over the limit of {size}"):
                await resp.read(limit=size)
            pool.close()
        assert sum(streamed) < 10 * size  # the site could not send much more than the limit

    run(main())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_came_with_its_head_is_read_at_once_within_its_limit(run: Run, framing: str) -> None:
    """A whole answer in one read (most answers) is taken without waiting: within the limit,
    the body, and the connection goes back to the pool; over it, AnswerTooLarge and it closes
    (with a Content-Length, the length refuses it before the body is looked at)."""
    from gridctl.net import response as upstream
    from gridctl.net.errors import AnswerTooLarge

    body = b"0123456789" * 10
    if framing == "content-length":
        whole = ok(body)
    else:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        whole = head + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)

    async def all_in(resp: upstream.Response) -> None:  # the whole answer parsed, none of it taken
        await until(lambda: resp._conn is None or resp._conn.state == upstream.DONE, "the whole answer")

    async def main() -> None:
        async with Script(answering(whole)) as s:
            pool = Pool()
            resp = await pool.request("POST", s.url(), body=b"{}")
            await all_in(resp)
            assert await resp.read(limit=len(body)) == body
            assert pool.idle_count() == 1  # read to its end: kept
            again = await pool.request("POST", s.url(), body=b"{}")
            assert pool.connects == 1  # the same connection
            await all_in(again)
            with pytest.raises(AnswerTooLarge, match=f"over the limit of {len(body) - 1}"):
                await again.read(limit=len(body) - 1)
            assert pool.idle_count() == 0  # refused: not reused
            assert await again.read() == b""  # released: nothing more to read
            pool.close()

    run(main())


def test_wait_body_bounds_the_wait_for_a_body_s_first_byte(run: Run) -> None:
    async def serve(s: Script, index: int, reader: Reader, writer: Writer) -> None:
        await s.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        if index == 0:
            await asyncio.sleep(30)  # the head, then nothing: hung
        writer.write(b"5\r\ndata:\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    async def main() -> None:
        async with Script(serve) as s:
            pool = Pool()
            hung = await pool.request("POST", s.url(), body=b"{}")
            with pytest.raises(UpstreamTimeout, match="no body byte within 0.2 s"):
                await hung.wait_body(0.2)
            alive = await pool.request("POST", s.url(), body=b"{}")
            await alive.wait_body(2.0)
            assert await alive.read() == b"data:"
            pool.close()

    run(main())
