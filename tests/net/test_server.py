"""The generic HTTP/1.1 server: framing, keep-alive, limits, streaming, drops, over real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gridctl.net.server import (
    DropConnection,
    HttpServer,
    Request,
    Response,
    ServerConfig,
    StreamingResponse,
    json_response,
)


class Recorder:
    """The handler under test, with a log of what the server made it see."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.started = threading.Event()

    async def __call__(self, req: Request) -> Response | StreamingResponse:
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


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length response from ``sock``; leftover bytes stay in ``buf``."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"connection closed before a response: {bytes(buf)!r}"
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    del buf[: end + 4]
    length = int(headers["content-length"])
    while len(buf) < length:
        data = sock.recv(65536)
        assert data
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return status, headers, body


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
        sock.sendall(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        sock.sendall(b"6;ext=1\r\n world\r\n0\r\n\r\n")
        assert json.loads(read_response(sock, bytearray())[2])["body"] == "hello world"


def test_body_over_the_limit_gets_413_before_it_is_read(srv: ServerThread) -> None:
    with raw(srv) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
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
        sock.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"ok")
        assert json.loads(read_response(sock, bytearray())[2])["body"] == "ok"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET /echo HTTP/2.0\r\n\r\n", 505),
        (b"GET /echo HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        # chunk sizes that int(x, 16) would take: not hex digits, so not HTTP
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"a" * 16 + b"\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_requests_get_an_error_and_the_connection_closes(
    srv: ServerThread, data: bytes, status: int
) -> None:
    with raw(srv) as sock:
        sock.sendall(data)
        got, headers, _ = read_response(sock, bytearray())
        assert got == status and headers["connection"] == "close"
        assert closed(sock)


def test_handler_error_is_a_500_and_the_connection_stays_usable(srv: ServerThread) -> None:
    with raw(srv) as sock:
        buf = bytearray()
        sock.sendall(b"GET /boom HTTP/1.1\r\n\r\n")
        assert read_response(sock, buf)[0] == 500
        sock.sendall(b"GET /echo HTTP/1.1\r\n\r\n")
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
    sock.sendall(b"GET /wait HTTP/1.1\r\n\r\n")
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
            sock.sendall(b"GET /echo HTTP/1.1\r\n\r\n")
            assert read_response(sock, bytearray())[0] == 200
            assert closed(sock)  # within the 5 s socket timeout
    finally:
        s.stop()


def test_stop_lets_in_flight_requests_finish() -> None:
    s = ServerThread(ServerConfig())
    with socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\n\r\n")
        threading.Event().wait(0.05)
        s.stop(grace=2.0)
        status, headers, body = read_response(sock, bytearray())
        assert (status, body, headers["connection"]) == (200, b"done", "close")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.server.port), timeout=1)
