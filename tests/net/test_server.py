"""The generic HTTP/1.1 server: framing, keep-alive, limits, streaming, drops, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gridctl.net.messages import (
    DropConnection,
    Request,
    Response,
    ServerConfig,
    StreamingResponse,
    json_response,
)
from gridctl.net.server import HttpServer


class TrackedChunks:
    """A stream that notes whether the server read it and whether it closed it (an async
    generator that never started would not run its ``finally`` on close)."""

    def __init__(self) -> None:
        self.read = 0
        self.closed = False

    def __aiter__(self) -> TrackedChunks:
        return self

    async def __anext__(self) -> bytes:
        self.read += 1
        if self.read > 2:
            raise StopAsyncIteration
        return b"data: tracked\n\n"

    async def aclose(self) -> None:
        self.closed = True


class Recorder:
    """The handler under test, with a log of what the server made it see."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.cleaned = 0
        self.started = threading.Event()
        self.seen: list[str] = []  # "METHOD target" of every request the handler was given
        self.streams: list[TrackedChunks] = []

    async def __call__(self, req: Request) -> Response | StreamingResponse:
        self.seen.append(f"{req.method} {req.target}")
        if req.path == "/nocontent":
            return Response(204, b"")
        if req.path == "/nocontent-with-body":
            return Response(204, b"must not be sent", headers=[("x-kind", "plain")])
        if req.path == "/not-modified":
            return Response(304, b"", headers=[("etag", '"v1"')])
        if req.path == "/tracked":  # ?204: a streaming 204
            self.streams.append(TrackedChunks())
            status = 204 if req.query == "204" else 200
            return StreamingResponse(self.streams[-1], status=status, headers=[("x-kind", "stream")])
        if req.path == "/echo":
            return json_response(
                {"method": req.method, "query": req.query, "body": req.body.decode(), "headers": req.headers}
            )
        if req.path == "/stream":
            return StreamingResponse(self._chunks(int(req.query or "3"), drop=False))
        if req.path == "/stream-drop":
            return StreamingResponse(self._chunks(3, drop=True))
        if req.path == "/drop":
            raise DropConnection
        if req.path == "/boom":
            raise RuntimeError("boom")
        if req.path == "/wait":
            self.started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                if req.query == "slow-cleanup":  # cleanup that awaits, as the daemon's accounting may
                    await asyncio.sleep(0.05)
                    self.cleaned += 1
                raise
        if req.path == "/slow":
            await asyncio.sleep(0.2)
            return Response(200, b"done")
        return Response(404, b"no")

    async def _chunks(self, n: int, drop: bool) -> AsyncIterator[bytes]:
        for i in range(n):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.01)
        if drop:
            raise DropConnection
        yield b"data: [DONE]\n\n"


class ServerThread:
    def __init__(self, config: ServerConfig) -> None:
        self.handler = Recorder()
        self.server = HttpServer(self.handler, config)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self, grace: float = 0.5) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    s = ServerThread(ServerConfig(max_body=1024, max_head=2048, keepalive_s=5.0))
    yield s
    s.stop()


def raw(srv: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.server.port), timeout=5)
    return sock


def read_head(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str]]:
    """One response head from ``sock``; what follows it stays in ``buf``."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"connection closed before a response: {bytes(buf)!r}"
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = buf[:end].decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), f"not a response head: {bytes(buf[:80])!r}"
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    del buf[: end + 4]
    return status, headers


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length response from ``sock``; leftover bytes stay in ``buf``."""
    status, headers = read_head(sock, buf)
    length = int(headers["content-length"])
    while len(buf) < length:
        data = sock.recv(65536)
        assert data
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return status, headers, body


def read_to_close(sock: socket.socket) -> bytes:
    """Everything until the server closes; a reset raises ConnectionResetError."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_serves_many_requests_on_one_connection(srv: ServerThread) -> None:
    with raw(srv) as sock:
        buf = bytearray()
        for i in range(3):
            body = json.dumps({"i": i}).encode()
            sock.sendall(
                b"POST /echo?x=%d HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body)
            )
            status, headers, data = read_response(sock, buf)
            assert status == 200 and "connection" not in headers
            assert json.loads(data)["body"] == body.decode() and json.loads(data)["query"] == f"x={i}"


def test_pipelined_requests_are_answered_in_order(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(b"GET /echo?1 HTTP/1.1\r\nHost: a\r\n\r\nGET /echo?2 HTTP/1.1\r\nHost: a\r\n\r\n")
        buf = bytearray()
        assert json.loads(read_response(sock, buf)[2])["query"] == "1"
        assert json.loads(read_response(sock, buf)[2])["query"] == "2"


@pytest.mark.parametrize(
    "request_head",
    [b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"GET /echo HTTP/1.0\r\n\r\n"],
)
def test_connection_close_and_http10_close_after_the_response(srv: ServerThread, request_head: bytes) -> None:
    with raw(srv) as sock:
        sock.sendall(request_head)
        status, headers, _ = read_response(sock, bytearray())
        assert status == 200 and headers["connection"] == "close"
        assert closed(sock)


def test_headers_are_case_insensitive_and_repeated_ones_joined(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nX-Thing: a\r\nx-thing: b\r\nHost: h\r\n\r\n")
        headers = json.loads(read_response(sock, bytearray())[2])["headers"]
        assert headers["x-thing"] == "a, b" and headers["host"] == "h"


def test_chunked_request_body_is_decoded(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        sock.sendall(b"6;ext=1\r\n world\r\n0\r\n\r\n")
        assert json.loads(read_response(sock, bytearray())[2])["body"] == "hello world"


@pytest.fixture(scope="module")
def roomy() -> Iterator[ServerThread]:
    """A server with the default limits (4 MiB bodies), for bodies of many chunks."""
    s = ServerThread(ServerConfig(keepalive_s=5.0))
    yield s
    s.stop()


def test_chunked_request_body_sent_one_byte_per_send_is_decoded_exactly(srv: ServerThread) -> None:
    """Every parsing state (size line, extension, data, its CRLF, trailers) cut between two reads."""
    body = b"5;ext=1\r\nhello\r\n4\r\n\r\n\r\n\r\n1\r\n,\r\na\r\n0123456789\r\n0\r\nX-Sum: abc\r\n\r\n"
    with raw(srv) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(len(body)):
            sock.sendall(body[i : i + 1])
            threading.Event().wait(0.002)  # so that the server reads it alone
        buf = bytearray()
        status, _, data = read_response(sock, buf)
        assert status == 200 and json.loads(data)["body"] == "hello\r\n\r\n,0123456789"
        sock.sendall(b"GET /echo?next HTTP/1.1\r\nHost: a\r\n\r\n")  # the parser starts afresh
        status, _, data = read_response(sock, buf)
        assert status == 200 and json.loads(data)["query"] == "next" and json.loads(data)["body"] == ""


def test_chunked_request_trailers_are_accepted_and_consumed_exactly(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0;last\r\nX-Sum: abc\r\nX-Other: 1\r\n\r\n"
            b"GET /echo?after-trailers HTTP/1.1\r\nHost: a\r\n\r\n"  # pipelined right behind the trailers
        )
        buf = bytearray()
        status, _, data = read_response(sock, buf)
        assert status == 200 and json.loads(data)["body"] == "hello"
        status, _, data = read_response(sock, buf)
        assert status == 200 and json.loads(data)["query"] == "after-trailers"


def test_a_chunked_body_of_many_64_byte_chunks_is_accepted_intact(roomy: ServerThread) -> None:
    pieces = [(b"%03d" % i) * 21 + b"\n" for i in range(200)]  # 200 different 64-byte chunks
    body = b"".join(b"40\r\n%s\r\n" % piece for piece in pieces) + b"0\r\n\r\n"
    with raw(roomy) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        status, _, data = read_response(sock, bytearray())
        assert status == 200 and json.loads(data)["body"] == b"".join(pieces).decode()


def test_a_chunked_body_of_tiny_chunks_is_refused_before_its_end(roomy: ServerThread) -> None:
    """Framing, not data: 4,000 one-byte chunks (well under max_body) are a flood. No last
    chunk is sent: the 413 comes while the body is still arriving."""
    seen = len(roomy.handler.seen)
    with raw(roomy) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\na\r\n" * 4_000
        )
        status, headers, data = read_response(sock, bytearray())
        assert status == 413 and headers["connection"] == "close"
        assert "small chunks" in json.loads(data)["error"]["message"]
        assert closed(sock)
    assert len(roomy.handler.seen) == seen


def test_body_over_the_limit_gets_413_before_it_is_read(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        status, headers, body = read_response(sock, bytearray())
        assert status == 413 and headers["connection"] == "close"
        assert "over the limit" in json.loads(body)["error"]["message"]
        assert closed(sock)
    # a real client sending a large body reads the 413 too (the rest of its upload is discarded, not reset)
    with httpx.Client(trust_env=False) as c:
        r = c.post(f"http://127.0.0.1:{srv.server.port}/echo", content=b"y" * 200_000)
        assert r.status_code == 413


def test_expect_100_continue(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"ok")
        assert json.loads(read_response(sock, bytearray())[2])["body"] == "ok"


class Gate:
    """A ServerConfig.gate: lets in requests with the right token, refuses the rest with a 401."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, method: str, path: str, headers: dict[str, str]) -> Response | None:
        self.calls.append((method, path, dict(headers)))
        if headers.get("authorization") == "Bearer good":
            return None
        return json_response({"error": {"message": "no token"}}, 401, [("www-authenticate", "Bearer")])


@pytest.fixture
def gated() -> Iterator[tuple[ServerThread, Gate]]:
    gate = Gate()
    s = ServerThread(ServerConfig(keepalive_s=5.0, gate=gate))
    yield s, gate
    s.stop()


def test_a_gate_that_refuses_answers_before_the_body_and_without_100_continue(
    gated: tuple[ServerThread, Gate],
) -> None:
    s, gate = gated
    with raw(s) as sock:
        sock.sendall(
            b"POST /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
        )
        data = read_to_close(sock)  # the body was never sent: the answer came without it
    assert data.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in data
    buf = bytearray(data)
    status, headers = read_head(sock, buf)
    assert headers["www-authenticate"] == "Bearer" and headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert json.loads(bytes(buf)) == {"error": {"message": "no token"}}
    assert [(m, p) for m, p, _ in gate.calls] == [("POST", "/echo")]  # the path, without the query
    assert not s.server.parse_errors  # a refusal by the gate is not a malformed request
    assert gate.calls[0][2]["expect"] == "100-continue" and gate.calls[0][2]["host"] == "a"
    assert s.handler.seen == []


def test_a_gate_that_returns_none_lets_the_request_in(gated: tuple[ServerThread, Gate]) -> None:
    s, gate = gated
    with raw(s) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer good\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"ok")
        buf = bytearray()
        status, headers, body = read_response(sock, buf)
        assert status == 200 and json.loads(body)["body"] == "ok" and "connection" not in headers
        # on the same connection, a request without the token: refused, and the connection closes
        sock.sendall(b"GET /echo?second HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, _ = read_response(sock, buf)
        assert status == 401 and headers["connection"] == "close"
        assert closed(sock)
    assert [(m, p) for m, p, _ in gate.calls] == [("POST", "/echo"), ("GET", "/echo")]
    assert s.handler.seen == ["POST /echo"]


CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "status", "kind"),
    [
        (b"NONSENSE\r\n\r\n", 400, "invalid_method"),
        (b"GET /echo HTTP/2.0\r\n\r\n", 505, "invalid_version"),
        (b"GET /echo HTTP/1.2\r\n\r\n", 505, "invalid_version"),
        (b"GET /echo HTTP/0.9\r\n\r\n", 505, "invalid_version"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "invalid_version"),  # HTTP/2 with prior knowledge
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n", 400, "invalid_header"),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "invalid_content_length"),
        # RFC 9112 section 6.3: even equal values are an error (llhttp's verdict; the last one won before)
        (
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            400,
            "invalid_content_length",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "invalid_content_length",
        ),
        # RFC 9112 section 6.3: chunked not the final coding of a request is a 400 (not a 501)
        (
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
            "invalid_transfer_encoding",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "invalid_transfer_encoding",
        ),
        # RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (llhttp would de-chunk it)
        (
            b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "invalid_transfer_encoding",
        ),
        # framed by chunked, but with a coding this server does not have
        (
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
            "unsupported_transfer_encoding",
        ),
        # llhttp does not read the body of an upgrade request: its bytes would be read as requests
        (
            b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: 2\r\n\r\nok",
            400,
            "upgrade_with_body",
        ),
        # chunk sizes that int(x, 16) would take: not hex digits, so not HTTP
        (CHUNKED_HEAD + b"-3\r\nabc\r\n0\r\n\r\n", 400, "invalid_chunk"),
        (CHUNKED_HEAD + b"0x3\r\nabc\r\n0\r\n\r\n", 400, "invalid_chunk"),
        (CHUNKED_HEAD + b"1_0\r\n" + b"a" * 16 + b"\r\n", 400, "invalid_chunk"),
        # ... nor with whitespace around them (the hand-written parser stripped it)
        (CHUNKED_HEAD + b"5 \r\nhello\r\n0\r\n\r\n", 400, "invalid_chunk"),
        (CHUNKED_HEAD + b"\t5\r\nhello\r\n0\r\n\r\n", 400, "invalid_chunk"),
        (CHUNKED_HEAD + b" 5\r\nhello\r\n0\r\n\r\n", 400, "invalid_chunk"),
        # chunk extensions holding a bare LF, CR, NUL or DEL ("funky chunks": a front end that ends
        # chunk lines at a bare LF reads another body than this server would)
        (CHUNKED_HEAD + b"5;a\nb\r\nhello\r\n0\r\n\r\n", 400, "invalid_chunk"),
        (CHUNKED_HEAD + b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400, "invalid_chunk"),
        (CHUNKED_HEAD + b"5;a\x00b\r\nhello\r\n0\r\n\r\n", 400, "invalid_chunk"),
        (CHUNKED_HEAD + b"5;a\x7fb\r\nhello\r\n0\r\n\r\n", 400, "invalid_chunk"),
        (CHUNKED_HEAD + b'5;a="\x7f"\r\nhello\r\n0\r\n\r\n', 400, "invalid_chunk"),
        (CHUNKED_HEAD + b"5\nhello\r\n0\r\n\r\n", 400, "invalid_chunk"),  # a size line ended by a bare LF
        (CHUNKED_HEAD + b"5\r\nhello\n0\r\n\r\n", 400, "invalid_chunk"),  # data ended by a bare LF
        # trailer lines with a control byte, or no colon
        (CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-T: a\x01b\r\n\r\n", 400, "invalid_trailer"),
        (CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-T: a\x7fb\r\n\r\n", 400, "invalid_trailer"),
        (CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nno colon\r\n\r\n", 400, "invalid_trailer"),
        (CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-T: 1\nX-U: 2\r\n\r\n", 400, "invalid_trailer"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n", 431, "head_too_large"),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
            431,
            "too_many_headers",
        ),
        # control characters in the head: what another parser would split lines on (smuggling)
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: 1\nX-B: 2\r\n\r\n",
            400,
            "invalid_header",
        ),  # a bare LF in a value
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n",
            400,
            "invalid_header",
        ),  # a lone CR in a value
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: 1\r\r\n\r\n",
            400,
            "invalid_header",
        ),  # a CR just before the end of the head
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400, "invalid_header"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n", 400, "invalid_header"),
        (b"GET /echo HTTP/1.1\r\nHost: a\nContent-Length: 5\r\n\r\nhello", 400, "invalid_header"),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: 1\n\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "invalid_header",
        ),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400, "invalid_header"),  # obs-fold
        (
            b"GET /echo HTTP/1.1\r\n X-A: 1\r\n\r\n",
            400,
            "invalid_header",
        ),  # whitespace before the first header
        (
            b"GET /ec\nho HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "invalid_header",
        ),  # a bare LF in the request target
        (b"GET /e\x7fcho HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid_target"),
        (b"GET /echo#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid_target"),  # llhttp takes a fragment
        # RFC 9112 section 3.2: one Host, well formed, in each HTTP/1.1 request (llhttp does not look)
        (b"GET /echo HTTP/1.1\r\n\r\n", 400, "invalid_host"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "invalid_host"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400, "invalid_host"),
        (b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid_host"),
        (b"GET /echo HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400, "invalid_host"),
        (b"GET /echo HTTP/1.0\r\nHost: a/b\r\n\r\n", 400, "invalid_host"),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nx foo: 1\r\n\r\n",
            400,
            "invalid_header",
        ),  # header names are tokens
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nx\x00y: 1\r\n\r\n", 400, "invalid_header"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nx-a : 1\r\n\r\n", 400, "invalid_header"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nx(a): 1\r\n\r\n", 400, "invalid_header"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", 400, "invalid_header"),
    ],
)
def test_malformed_requests_get_an_error_and_the_connection_closes(
    srv: ServerThread, data: bytes, status: int, kind: str
) -> None:
    seen = len(srv.handler.seen)
    counted = srv.server.parse_errors[kind]
    with raw(srv) as sock:
        sock.sendall(data)
        got, headers, _ = read_response(sock, bytearray())
        assert got == status and headers["connection"] == "close"
        assert closed(sock)
    assert len(srv.handler.seen) == seen  # the handler never saw the request
    assert srv.server.parse_errors[kind] == counted + 1  # counted once, under its kind


@pytest.mark.parametrize(
    "host", [b"", b"a", b"a.example:8080", b"127.0.0.1:1", b"[::1]:8080", b"xn--bcher-kva.example", b"a:"]
)
def test_a_well_formed_host_is_taken(srv: ServerThread, host: bytes) -> None:
    with raw(srv) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        status, _, body = read_response(sock, bytearray())
    assert status == 200 and json.loads(body)["headers"]["host"] == host.decode()


def test_a_tab_in_a_header_value_is_allowed(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Tab: a\tb\r\n\r\n")
        status, _, body = read_response(sock, bytearray())
        assert status == 200 and json.loads(body)["headers"]["x-tab"] == "a\tb"


def test_handler_error_is_a_500_and_the_connection_stays_usable(srv: ServerThread) -> None:
    with raw(srv) as sock:
        buf = bytearray()
        sock.sendall(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock, buf)[0] == 500
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock, buf)[0] == 200


def test_streaming_response_is_chunked_and_complete(srv: ServerThread) -> None:
    with httpx.Client(trust_env=False) as c:
        with c.stream("GET", f"http://127.0.0.1:{srv.server.port}/stream?4") as r:
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.headers["content-type"] == "text/event-stream"
            lines = [line for line in r.iter_lines() if line]
        assert lines == ["data: 0", "data: 1", "data: 2", "data: 3", "data: [DONE]"]
        assert c.get(f"http://127.0.0.1:{srv.server.port}/echo").status_code == 200  # same pool, still fine


def test_drop_cuts_a_stream_midway_and_a_response_before_it_starts(srv: ServerThread) -> None:
    seen: list[str] = []
    with httpx.Client(trust_env=False) as c:
        url = f"http://127.0.0.1:{srv.server.port}/stream-drop"
        with pytest.raises(httpx.RemoteProtocolError), c.stream("GET", url) as r:
            seen.extend(line for line in r.iter_lines() if line)
        assert seen == ["data: 0", "data: 1", "data: 2"]
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(f"http://127.0.0.1:{srv.server.port}/drop")


def test_a_client_that_goes_away_cancels_its_handler(srv: ServerThread) -> None:
    before = srv.handler.cancelled
    srv.handler.started.clear()
    sock = raw(srv)
    sock.sendall(b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
    assert srv.handler.started.wait(5)
    sock.close()
    for _ in range(200):
        if srv.handler.cancelled > before:
            break
        threading.Event().wait(0.01)
    assert srv.handler.cancelled == before + 1


def test_idle_connections_are_closed_after_the_keepalive_time() -> None:
    s = ServerThread(ServerConfig(keepalive_s=0.2))
    try:
        with socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock, bytearray())[0] == 200
            assert closed(sock)  # within the 5 s socket timeout
    finally:
        s.stop()


def test_stop_lets_in_flight_requests_finish() -> None:
    s = ServerThread(ServerConfig())
    with socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        threading.Event().wait(0.05)
        s.stop(grace=2.0)
        status, headers, body = read_response(sock, bytearray())
        assert (status, body, headers["connection"]) == (200, b"done", "close")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.server.port), timeout=1)


def test_stop_returns_after_the_aborted_handlers_have_cleaned_up() -> None:
    """What a cut-off handler does on its way out (the daemon's accounting) is done when stop() returns."""
    s = ServerThread(ServerConfig())
    with socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as sock:
        sock.sendall(b"GET /wait?slow-cleanup HTTP/1.1\r\nHost: a\r\n\r\n")
        assert s.handler.started.wait(5)
        busy = asyncio.run_coroutine_threadsafe(s.server.stop(0.05), s.loop).result(10)
        assert busy == 1 and s.handler.cancelled == 1 and s.handler.cleaned == 1
    s.loop.call_soon_threadsafe(s.loop.stop)
    s.thread.join(10)


@pytest.mark.parametrize(
    ("request_line", "status", "stream"),
    [
        (b"GET /nocontent", 204, False),
        (b"GET /nocontent-with-body", 204, False),
        (b"GET /not-modified", 304, False),
        (b"GET /tracked?204", 204, True),
        (b"HEAD /tracked", 200, True),
    ],
    ids=["204", "204-body-dropped", "304", "streaming-204", "streaming-head"],
)
def test_answers_without_a_body_send_the_head_only_and_keep_the_connection(
    srv: ServerThread, request_line: bytes, status: int, stream: bool
) -> None:
    with raw(srv) as sock:
        buf = bytearray()
        sock.sendall(request_line + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        got, headers = read_head(sock, buf)
        assert got == status and "connection" not in headers
        assert "transfer-encoding" not in headers
        if status in (204, 304):
            assert "content-length" not in headers and "content-type" not in headers
        if stream:
            tracked = srv.handler.streams[-1]
            assert tracked.closed and tracked.read == 0  # closed unread: no body may follow the head
            assert headers["x-kind"] == "stream"
        sock.sendall(b"GET /echo?after HTTP/1.1\r\nHost: a\r\n\r\n")  # no body bytes came before this answer
        assert buf == b""
        got, _, body = read_response(sock, buf)
        assert got == 200 and json.loads(body)["query"] == "after"


def test_chunk_extensions_count_as_framing(roomy: ServerThread) -> None:
    """Long extensions on one-byte chunks are framing too: refused, not a way round the limit
    (llhttp shows no extension; what a read holds beyond the data it delivers is counted)."""
    with raw(roomy) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"1;" + b"e" * 1000 + b"\r\na\r\n"
        with contextlib.suppress(OSError):  # the server may stop reading once it has refused
            sock.sendall(chunk * 400)  # 400 KB: more than one read
        status, _, data = read_response(sock, bytearray())
        assert status == 413 and "small chunks" in json.loads(data)["error"]["message"]
    assert roomy.server.parse_errors["chunks_too_small"] >= 1


def test_a_drop_mid_stream_over_http10_is_a_reset_not_a_clean_close(srv: ServerThread) -> None:
    """HTTP/1.0 has no chunked framing: the body ends at the close, so a cut must be a reset."""
    with raw(srv) as sock:
        sock.sendall(b"GET /stream-drop HTTP/1.0\r\n\r\n")
        buf = bytearray()
        status, headers = read_head(sock, buf)
        assert status == 200 and "transfer-encoding" not in headers
        with pytest.raises(ConnectionResetError):
            read_to_close(sock)


def test_a_drop_mid_stream_over_http11_leaves_the_chunked_body_unterminated(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(b"GET /stream-drop HTTP/1.1\r\nHost: a\r\n\r\n")
        buf = bytearray()
        status, headers = read_head(sock, buf)
        buf += read_to_close(sock)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert bytes(buf).endswith(b"9\r\ndata: 2\n\n\r\n")  # the last chunk sent; no 0-chunk after it
    assert b"\r\n0\r\n\r\n" not in buf


# -- llhttp's verdicts and the limits of our own ------------------------------------------------------


def test_funky_chunks_never_become_two_requests(srv: ServerThread) -> None:
    """The 2025 "funky chunks" pattern: a front end that ends chunk lines at a bare LF reads one
    request whose body holds the smuggled one as data; a parser that ends them only at CRLF (and
    takes the LF into an extension) reads the body as ending early, then the smuggled request."""
    smuggled = b"0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    body = b"2;\nxx\r\n" + b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
    with raw(srv) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        answers = read_to_close(sock)
    assert answers.startswith(b"HTTP/1.1 400 ") and answers.count(b"HTTP/1.1 ") == 1
    assert not any("smuggled" in seen for seen in srv.handler.seen)


def test_thousands_of_headers_in_one_head_get_431_at_the_first_over_the_limit(roomy: ServerThread) -> None:
    """8,000 tiny headers in a 40 KB head (under max_head): parsing stops at the 101st."""
    counted = roomy.server.parse_errors["too_many_headers"]
    head = b"GET /echo HTTP/1.1\r\nHost: a\r\n" + b"a:1\r\n" * 8000 + b"\r\n"
    with raw(roomy) as sock:
        sock.sendall(head)
        status, headers, data = read_response(sock, bytearray())
    assert status == 431 and headers["connection"] == "close"
    assert "more than 100 request header lines" in json.loads(data)["error"]["message"]
    assert roomy.server.parse_errors["too_many_headers"] == counted + 1


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", "header_too_large"),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"x-%02d: %s\r\n" % (i, b"a" * 2000) for i in range(50))
            + b"\r\n",
            "head_too_large",
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000,
            "header_too_large",
        ),  # and no end of it yet
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"x-%02d: %s\r\n" % (i, b"a" * 2000) for i in range(50)),
            "head_too_large",
        ),
    ],
    ids=["one-header", "fifty-headers", "one-header-unfinished", "fifty-headers-unfinished"],
)
def test_a_100_kb_head_in_one_write_gets_431(roomy: ServerThread, head: bytes, kind: str) -> None:
    counted = roomy.server.parse_errors[kind]
    with raw(roomy) as sock:
        sock.sendall(head)
        status, headers, _ = read_response(sock, bytearray())
        assert status == 431 and headers["connection"] == "close"
        assert closed(sock)
    assert roomy.server.parse_errors[kind] == counted + 1


@pytest.mark.parametrize(
    ("fixture", "kind"), [("srv", "head_too_large"), ("roomy", "header_too_large")], ids=["head", "line"]
)
def test_a_head_trickling_in_past_its_limit_gets_431(
    request: pytest.FixtureRequest, fixture: str, kind: str
) -> None:
    """A header llhttp holds back until its line ends (no callback shows it) still counts: each
    read that holds only part of it is counted against max_head (2048 on srv) and max_header_line."""
    s: ServerThread = request.getfixturevalue(fixture)
    counted = s.server.parse_errors[kind]
    with raw(s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        with contextlib.suppress(OSError):
            for _ in range(50):  # 50 KB in all, never the end of the line
                threading.Event().wait(0.005)
                sock.sendall(b"z" * 1000)
        status, headers, _ = read_response(sock, bytearray())
    assert status == 431 and headers["connection"] == "close"
    assert s.server.parse_errors[kind] == counted + 1


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"t" * 8191 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 404),  # a target of 8192 bytes: in
        (b"GET /" + b"t" * 8192 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET /echo?" + b"q" * 60_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nX-L: " + b"v" * (8192 - 3) + b"\r\n\r\n",
            200,
        ),  # name and value: 8192 bytes
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-L: " + b"v" * (8192 - 2) + b"\r\n\r\n", 431),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(99)) + b"\r\n",
            200,
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
            431,
        ),
    ],
    ids=[
        "target-8192",
        "target-8193",
        "target-60k",
        "header-8192",
        "header-8193",
        "100-headers",
        "101-headers",
    ],
)
def test_the_default_limits_and_their_edges(roomy: ServerThread, head: bytes, status: int) -> None:
    with raw(roomy) as sock:
        sock.sendall(head)
        got, headers, _ = read_response(sock, bytearray())
    assert got == status
    assert ("connection" in headers) == (status >= 414)


def test_a_pipelined_100_continue_waits_for_the_previous_response_to_end(srv: ServerThread) -> None:
    """The 100 Continue of the second request comes after the first's chunked response, whole
    (written at once, it would land inside that body and corrupt it)."""
    with raw(srv) as sock:
        sock.sendall(
            b"GET /stream?5 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /echo?second HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        buf = bytearray()
        while b"HTTP/1.1 100 Continue\r\n\r\n" not in buf:
            data = sock.recv(65536)
            assert data, bytes(buf)
            buf += data
        before, _, after = bytes(buf).partition(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert before.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in before
        assert before.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n") and after == b""
        sock.sendall(b"ok")
        status, _, body = read_response(sock, bytearray())
    assert status == 200 and json.loads(body)["body"] == "ok" and json.loads(body)["query"] == "second"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
    ],
    ids=["body-sent-along", "no-body"],
)
def test_no_100_continue_for_a_body_already_read(srv: ServerThread, request_bytes: bytes) -> None:
    with raw(srv) as sock:
        sock.sendall(request_bytes + b"GET /echo?next HTTP/1.1\r\nHost: a\r\n\r\n")
        buf = bytearray()
        first = read_response(sock, buf)
        second = read_response(sock, buf)
    assert (
        first[0] == 200 and json.loads(first[2])["body"] == request_bytes.partition(b"\r\n\r\n")[2].decode()
    )
    assert second[0] == 200 and json.loads(second[2])["query"] == "next"


def test_an_upgrade_request_is_answered_as_http11_then_the_connection_closes(srv: ServerThread) -> None:
    """llhttp stops at an upgrade request (what follows could be another protocol): it is answered
    without switching, and nothing after it is read."""
    seen = len(srv.handler.seen)
    with raw(srv) as sock:
        sock.sendall(
            b"GET /echo?asked HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
            b"GET /echo?after HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        buf = bytearray()
        status, headers, body = read_response(sock, buf)
        assert status == 200 and json.loads(body)["query"] == "asked" and headers["connection"] == "close"
        assert read_to_close(sock) == b"" and buf == b""
    assert srv.handler.seen[seen:] == ["GET /echo?asked"]


def test_parse_errors_are_counted_by_kind_on_the_server() -> None:
    s = ServerThread(ServerConfig(max_target=16))
    try:
        for data in (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nx y: 1\r\n\r\n",
            b"GET /" + b"a" * 20 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        ) * 2:
            with raw(s) as sock:
                sock.sendall(data)
                read_response(sock, bytearray())
        with raw(s) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock, bytearray())[0] == 200
        assert dict(s.server.parse_errors) == {"invalid_header": 2, "uri_too_long": 2}
    finally:
        s.stop()


# -- issue 13: deadlines for clients that trickle, stall or never read; a connection limit -----------


def wait_for(cond, what: str, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def test_a_head_sent_one_byte_at_a_time_gets_408_and_is_closed() -> None:
    s = ServerThread(ServerConfig(head_timeout_s=0.6, keepalive_s=30.0))
    try:
        head = b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 200 + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as sock:
            sent = 0
            for byte in head[:40]:  # 1 byte per 0.2 s: 8 s for the whole head, were it allowed
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                sent += 1
                sock.settimeout(0.2)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # the server has answered
                except TimeoutError:
                    continue
            sock.settimeout(5)
            status, headers, body = read_response(sock, bytearray())
            assert status == 408 and headers["connection"] == "close"
            assert b"not whole within 0.6 s" in body
            error = json.loads(body)["error"]
            assert error["code"] == "head_timeout" and error["type"] == "invalid_request_error"
            assert sent < 10  # the answer came after about 0.6 s of the 8 s head
            assert closed(sock)
        assert s.server.parse_errors["head_timeout"] == 1
    finally:
        s.stop()


def test_a_connection_that_never_sends_a_byte_is_closed_after_the_head_timeout() -> None:
    """An accepted connection holds a descriptor: one that sends nothing gets head_timeout_s,
    not the keep-alive's 30 s; one that has been served keeps its keep-alive time."""
    import time

    s = ServerThread(ServerConfig(head_timeout_s=0.5, keepalive_s=30.0))
    try:
        with (
            socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as idle,
            socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as served,
        ):
            served.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(served, bytearray())[0] == 200
            start = time.monotonic()
            assert idle.recv(1) == b""  # closed, with no answer: nothing was asked
            assert time.monotonic() - start < 4
            served.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")  # still open after that
            assert read_response(served, bytearray())[0] == 200
        assert s.server.parse_errors["idle_timeout"] == 1
    finally:
        s.stop()


def test_a_body_that_falls_silent_gets_408_and_the_handler_never_sees_it() -> None:
    s = ServerThread(ServerConfig(body_timeout_s=0.5, keepalive_s=30.0))
    try:
        with socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            status, _, body = read_response(sock, bytearray())
            assert status == 408 and b"no byte of the request body for 0.5 s" in body
            assert closed(sock)
        assert s.handler.seen == [] and s.server.parse_errors["body_timeout"] == 1
    finally:
        s.stop()


def test_a_slow_but_steady_client_is_not_cut() -> None:
    """The deadlines are for silence and for heads, never for a request that keeps coming."""
    s = ServerThread(ServerConfig(head_timeout_s=2.0, body_timeout_s=0.5, keepalive_s=30.0))
    try:
        import time

        with socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n")
            for _ in range(8):  # 2.4 s of body, one byte per 0.3 s
                time.sleep(0.3)
                sock.sendall(b"z")
            status, _, body = read_response(sock, bytearray())
            assert status == 200 and json.loads(body)["body"] == "z" * 8
    finally:
        s.stop()


def test_a_client_that_never_reads_is_aborted_and_its_handler_s_stream_closed() -> None:
    s = ServerThread(ServerConfig(send_timeout_s=0.5, keepalive_s=30.0))
    produced: list[int] = []
    closed_streams: list[bool] = []

    async def endless(req: Request) -> Response | StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                for _ in range(100_000):  # 6.4 GB, if anyone read it
                    produced.append(1)
                    yield b"x" * 65536
            finally:
                closed_streams.append(True)

        return StreamingResponse(chunks())

    s.server.handler = endless
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.server.port))
        try:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")  # ... and never read
            wait_for(lambda: closed_streams == [True], "the server to give up on the client")
            assert len(produced) < 1000  # back-pressure held it, then the send deadline ended it
            assert s.server.parse_errors["send_timeout"] == 1
            wait_for(lambda: not s.server.connections, "the connection to be gone")
        finally:
            sock.close()
    finally:
        s.stop()


def test_connections_over_the_limit_get_503_and_the_others_are_served() -> None:
    s = ServerThread(ServerConfig(max_connections=2, keepalive_s=30.0))
    try:
        socks = [socket.create_connection(("127.0.0.1", s.server.port), timeout=5) for _ in range(2)]
        wait_for(lambda: len(s.server.connections) == 2, "two connections")
        with socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as extra:
            status, headers, body = read_response(extra, bytearray())
            assert status == 503 and headers["retry-after"] == "1" and b"limit of 2 connections" in body
            assert closed(extra)
        for sock in socks:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock, bytearray())[0] == 200
            sock.close()
        assert s.server.parse_errors["too_many_connections"] == 1
    finally:
        s.stop()
