"""Fuzzing both sides of gridctl's HTTP/1.1 over real sockets: random bytes, and mutations of
the well-formed messages of the conformance corpus (byte flips; CR, LF, NUL, SP, colon...
inserted; bytes deleted; truncations; duplicated lines).

The server: every input gets well-formed HTTP answers (those h11 parses) or none, then a clean
close, within BOUND_S; nothing reaches its error log or its loop's exception handler (a protocol
error is answered, not raised); and a fresh connection is served normally afterwards.
The client: a site writing such bytes gets an answer delivered or an UpstreamError, never
another exception, within BOUND_S.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.net.client import Pool
from gridctl.net.errors import UpstreamError
from gridctl.net.messages import Request, Response, ServerConfig
from tests.net.test_conformance import REQUEST_CASES, RESPONSE_CASES, ServerThread, Site, build_bytes

BOUND_S = 5.0  # a liveness bound: past it, a side is hung
CLIENT_TIMEOUT_S = 0.1  # the Pool's head and read timeouts while a site holds a connection open
# the statuses the server may answer to anything: its own errors, and the handler's 204
SERVER_STATUSES = {204, 400, 413, 414, 431, 501, 505}
FUZZ = settings(max_examples=200, deadline=None)


def seeds(cases: list[dict[str, object]]) -> list[bytes]:
    """The corpus's well-formed messages that are small enough to mutate."""
    raws = [build_bytes(c["raw"]) for c in cases if c["verdict"] == "accept" and "later" not in c]
    return [raw for raw in raws if 0 < len(raw) < 4096]


REQUEST_SEEDS = seeds(REQUEST_CASES)
RESPONSE_SEEDS = seeds(RESPONSE_CASES)
INSERTS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b";", b",", b"\x7f", b"\xff", b"0"]


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate-line"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(INSERTS))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate-line":
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


def messages(corpus: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), mutated(corpus))


# -- the server ---------------------------------------------------------------------------------


async def no_content(req: Request) -> Response:
    return Response(204)  # no body whatever the method: the answers parse without knowing it


@pytest.fixture(scope="module")
def fuzz_srv() -> Iterator[ServerThread]:
    s = ServerThread(no_content, ServerConfig(keepalive_s=5.0))
    yield s
    s.stop()


def send_and_read_to_close(port: int, data: bytes) -> bytes:
    """Write ``data``, end our side, and read everything until the server closes."""
    deadline = time.monotonic() + BOUND_S
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                got = bytes(received[:200])
                raise AssertionError(f"no close within {BOUND_S:g} s, after {got!r}") from None
            if not chunk:
                return bytes(received)
            received += chunk


def parse_answers(data: bytes) -> list[int]:
    """The statuses of the answers in ``data``, 1xx included; raises h11.RemoteProtocolError
    unless it is a run of whole, well-formed answers."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    statuses: list[int] = []
    while conn.trailing_data[0]:
        if conn.their_state is h11.MUST_CLOSE:
            left = conn.trailing_data[0]
            raise h11.RemoteProtocolError(f"bytes after an answer that closes: {left[:80]!r}")
        if conn.our_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
        conn.send(h11.EndOfMessage())
        final = False
        while True:
            if not final and statuses and not conn.trailing_data[0]:
                return statuses  # a 100 (Continue), then the close: the request never ended
            event = conn.next_event()
            if isinstance(event, h11.EndOfMessage):
                break
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("an answer cut short by the close")
            if isinstance(event, h11.InformationalResponse | h11.Response):
                statuses.append(event.status_code)
                final = isinstance(event, h11.Response)
    return statuses


def check_server_answers(srv: ServerThread, data: bytes) -> None:
    srv.clear()
    received = send_and_read_to_close(srv.port, data)
    try:
        statuses = parse_answers(received)
    except h11.RemoteProtocolError as exc:
        raise AssertionError(f"answers that are not well-formed HTTP ({exc}): {received[:300]!r}") from None
    assert {s for s in statuses if s >= 200} <= SERVER_STATUSES, statuses
    assert not srv.problems(), srv.problems()
    # and the server goes on serving
    fresh = send_and_read_to_close(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert parse_answers(fresh) == [204], fresh


@FUZZ
@given(data=messages(REQUEST_SEEDS))
def test_the_server_answers_any_bytes_with_http_or_a_clean_close(fuzz_srv: ServerThread, data: bytes) -> None:
    check_server_answers(fuzz_srv, data)


@FUZZ
@given(requests=st.lists(mutated(REQUEST_SEEDS), min_size=2, max_size=4))
def test_the_server_answers_pipelined_mutations_with_http_or_a_clean_close(
    fuzz_srv: ServerThread, requests: list[bytes]
) -> None:
    check_server_answers(fuzz_srv, b"".join(requests))


# -- the client ---------------------------------------------------------------------------------


async def fetch_from(raw: bytes, then: str) -> int | None:
    """The status the Pool delivers (the body read whole), or None for an UpstreamError."""
    async with Site(raw, then) as site:
        pool = Pool(connect_timeout=1.0)
        try:
            timeouts = {"head_timeout": CLIENT_TIMEOUT_S, "read_timeout": CLIENT_TIMEOUT_S}
            resp = await pool.request("GET", site.url, **timeouts)
            await resp.read()
            return resp.status
        except UpstreamError:
            return None
        finally:
            pool.close()


@FUZZ
@given(data=messages(RESPONSE_SEEDS), then=st.sampled_from(["close", "hold"]))
def test_the_client_delivers_an_answer_or_raises_an_upstream_error(data: bytes, then: str) -> None:
    status = asyncio.run(asyncio.wait_for(fetch_from(data, then), BOUND_S))
    assert status is None or 200 <= status <= 599, f"delivered a final status {status} (RFC 9110 §15)"
