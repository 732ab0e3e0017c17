"""HTTP/1.1 conformance as data: the cases in tests/net/corpus/ (requests.yaml, responses.yaml;
their format is described at the top of each) run against gridctl's real HttpServer and Pool
over loopback sockets, and against h11, an independent parser, to keep each case's record of
where h11 disagrees with the RFC accurate.

Requests: each case is written on a new connection to one shared HttpServer (default limits);
the server's answers are read with h11, so an answer that is not well-formed HTTP fails the
case. After the answers the case expects, either the server has closed the connection, or a
final request is sent on it and must be answered next (so an extra answer, or bytes the server
left unparsed, show up). Responses: a raw site on loopback writes the case's bytes to a Pool
request. Every case is bounded by CASE_TIMEOUT_S; a well-behaved side never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import yaml

from gridctl.net.client import Pool
from gridctl.net.errors import UpstreamError
from gridctl.net.messages import Request, Response, ServerConfig, StreamingResponse
from gridctl.net.server import HttpServer

CORPUS = Path(__file__).parent / "corpus"
CASE_TIMEOUT_S = 3.0  # a bound on one case: a hung case fails instead of hanging the suite
CLIENT_TIMEOUT_S = 1.0  # the Pool's head and read timeouts in response cases
MAX_HEAD = 64 << 10  # the servers' and client's head limit; h11 is given the same
SENTINEL = b"GET /__end__ HTTP/1.1\r\nHost: a\r\n\r\n"
SENTINEL_BODY = b"__end__"
SECOND_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"

_COMMON_KEYS = {"id", "raw", "verdict", "rfc", "rfc_also_allows", "h11", "note", "ours"}
REQUEST_KEYS = _COMMON_KEYS | {
    "later",
    "after_100",
    "requests",
    "status",
    "or_status",
    "closes",
    "interim",
    "front_end_sees",
}
RESPONSE_KEYS = _COMMON_KEYS | {"method", "then", "writes", "status", "body", "error", "second"}


# -- the corpus --------------------------------------------------------------------------------


def build_bytes(spec: Any) -> bytes:
    """A corpus byte string: a string of U+0000..U+00FF (one character per byte), or a list of
    such strings and {repeat: spec, times: n} pieces."""
    if isinstance(spec, str):
        return spec.encode("latin-1")
    if isinstance(spec, dict):
        return build_bytes(spec["repeat"]) * int(spec["times"])
    return b"".join(build_bytes(piece) for piece in spec)


def load_cases(name: str) -> list[dict[str, Any]]:
    cases = yaml.safe_load((CORPUS / name).read_text(encoding="utf-8"))
    assert isinstance(cases, list), f"{name}: a list of cases"
    return cases


REQUEST_CASES = load_cases("requests.yaml")
RESPONSE_CASES = load_cases("responses.yaml")


def ours(case: dict[str, Any]) -> dict[str, Any]:
    """What gridctl must do with the case: the RFC's verdict, or where the case records a
    deliberate deviation (``ours``: llhttp's stricter verdict, kept as issue 12 asks), that one."""
    dev = case.get("ours")
    if dev is None:
        return case
    out = dict(case)
    if "verdict" in dev:  # a verdict of its own: none of the RFC verdict's details
        for k in ("status", "or_status", "requests", "body"):
            out.pop(k, None)
    out.update({k: v for k, v in dev.items() if k != "why"})
    return out


DEVIATIONS = sorted(c["id"] for c in [*REQUEST_CASES, *RESPONSE_CASES] if "ours" in c)


def by_id(cases: list[dict[str, Any]]) -> dict[str, Any]:
    return {"argvalues": cases, "ids": [case["id"] for case in cases]}


def expected_requests(case: dict[str, Any]) -> list[dict[str, Any]]:
    """What the handler must be given: one mapping per request (empty: nothing to compare)."""
    spec = case.get("requests", 1 if case["verdict"] == "accept" else 0)
    return [{} for _ in range(spec)] if isinstance(spec, int) else list(spec)


def allowed_statuses(case: dict[str, Any]) -> list[int]:
    return [case["status"], *case.get("or_status", [])]


def request_bytes(case: dict[str, Any]) -> bytes:
    """Everything the case sends, in order (the parts sent later included)."""
    return b"".join(build_bytes(case[key]) for key in ("raw", "later", "after_100") if key in case)


# -- h11, the reference --------------------------------------------------------------------------


def h11_request_outcome(case: dict[str, Any]) -> str:
    """What h11 as a server makes of the case's bytes: "reject" (RemoteProtocolError), else
    "accept" ("accept N" when it reads a different number of whole requests than the case)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(request_bytes(case))
    whole = 0
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.EndOfMessage):
                whole += 1
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE:  # the request closes the connection
                    break
                conn.start_next_cycle()
    except h11.RemoteProtocolError:
        return "reject"
    if case["verdict"] == "accept" and whole != len(expected_requests(case)):
        return f"accept {whole}"
    return "accept"


def h11_response_outcome(case: dict[str, Any]) -> str:
    """What h11 as a client makes of the case's bytes: "reject", "incomplete" (it waits for
    more), or "accept" ("accept STATUS BODY" when that is not what the case expects)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    conn.send(h11.Request(method=case.get("method", "GET"), target="/", headers=[("host", "a")]))
    conn.send(h11.EndOfMessage())
    raw = build_bytes(case["raw"])
    step = case.get("writes") or len(raw) or 1
    pieces = [raw[i : i + step] for i in range(0, len(raw), step)]  # as the site writes them
    if case.get("then") == "close":
        pieces.append(b"")
    status, body = None, bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if not pieces:
                    return "incomplete"
                conn.receive_data(pieces.pop(0))
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    except h11.RemoteProtocolError:
        return "reject"
    want = (case.get("status"), build_bytes(case.get("body", "")))
    if case["verdict"] == "accept" and (status, bytes(body)) != want:
        return f"accept {status} {bytes(body)!r}"
    return "accept"


# -- the server under test ------------------------------------------------------------------------


class Recorder:
    """The handler: notes what the server gave it; /stream answers with a short stream."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, req: Request) -> Response | StreamingResponse:
        if req.target == "/__end__":
            return Response(200, SENTINEL_BODY)
        self.seen.append({"method": req.method, "target": req.target, "body": req.body})
        if req.target == "/stream":
            return StreamingResponse(self._chunks())
        return Response(200, b"ok")

    async def _chunks(self) -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"data: %d\n\n" % i
            await asyncio.sleep(0.05)  # the next request arrives while this body streams


class ErrorLog(logging.Handler):
    """Collects what the server logs at ERROR (a handler or connection that failed)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ServerThread:
    """A real HttpServer on its own event loop in a thread, with its errors collected: what it
    logs at ERROR and what reaches the loop's exception handler."""

    def __init__(self, handler: Callable[..., Any], config: ServerConfig | None = None) -> None:
        self.handler = handler
        self.server = HttpServer(handler, config or ServerConfig(keepalive_s=5.0))
        self.errors = ErrorLog()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: self.loop_errors.append(context))
        logging.getLogger("gridctl.net.server").addHandler(self.errors)
        ready = threading.Event()

        def run() -> None:
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10), "the server did not start"

    @property
    def port(self) -> int:
        return self.server.port

    def problems(self) -> list[str]:
        return [r.getMessage() for r in self.errors.records] + [str(c) for c in self.loop_errors]

    def clear(self) -> None:
        self.errors.records.clear()
        self.loop_errors.clear()

    def stop(self) -> None:
        logging.getLogger("gridctl.net.server").removeHandler(self.errors)
        asyncio.run_coroutine_threadsafe(self.server.stop(0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    s = ServerThread(Recorder())
    yield s
    s.stop()


# -- reading the server's answers ---------------------------------------------------------------


class CaseTimeout(Exception):
    pass


@dataclass
class Answer:
    status: int
    body: bytes
    interims: int


@dataclass
class Exchange:
    """What happened on a request case's connection."""

    answers: list[Answer] = field(default_factory=list)
    extra: list[Answer] = field(default_factory=list)  # answers after the expected ones
    closed: bool = False  # the server closed the connection after its answers
    kept_open: bool = False  # the final request was answered on it
    trailing: bytes = b""  # bytes after the last answer of a closing connection
    problem: str = ""  # answers h11 refuses, a reset, or a timeout


class AnswerReader:
    """The server's answers on one socket, parsed by h11 (which refuses malformed HTTP)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.conn = h11.Connection(h11.CLIENT)
        self.eof = False

    def recv(self) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CaseTimeout
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise CaseTimeout from None
        self.eof = not data
        return data

    @property
    def closing(self) -> bool:
        return self.conn.their_state in (h11.MUST_CLOSE, h11.CLOSED)

    def answer(
        self, method: str, on_head: Callable[[], None], on_interim: Callable[[int], None]
    ) -> Answer | None:
        """The next final answer (a request for it is noted in h11 first); None when the
        connection closes before an answer begins."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        self.conn.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
        self.conn.send(h11.EndOfMessage())
        status, body, interims = None, bytearray(), 0
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = self.recv()
                if not data and status is None and not interims and not self.conn.trailing_data[0]:
                    return None  # closed between answers (h11 would call it a protocol error)
                self.conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                interims += 1
                on_interim(event.status_code)
            elif isinstance(event, h11.Response):
                status = event.status_code
                on_head()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                return Answer(status, bytes(body), interims)

    def rest(self) -> bytes:
        """Whatever follows the last answer, up to the close."""
        data = bytearray(self.conn.trailing_data[0])
        while not self.eof:
            data += self.recv()
        return bytes(data)


def run_request_case(srv: ServerThread, case: dict[str, Any]) -> tuple[Exchange, list[dict[str, Any]]]:
    """Write the case on a new connection; returns what came back and what the handler saw."""
    before = len(srv.handler.seen)
    wanted = expected_requests(case)
    if case["verdict"] == "reject":
        wanted = [*wanted, {}]  # the error's answer
    methods = ["HEAD" if spec.get("method") == "HEAD" else "GET" for spec in wanted]
    pending = {key: build_bytes(case[key]) for key in ("later", "after_100") if key in case}
    ex = Exchange()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=CASE_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = AnswerReader(sock, time.monotonic() + CASE_TIMEOUT_S)

        def on_head() -> None:
            if "later" in pending:
                sock.sendall(pending.pop("later"))

        def on_interim(status: int) -> None:
            if status == 100 and "after_100" in pending:
                sock.sendall(pending.pop("after_100"))

        probing = False
        try:
            sock.sendall(build_bytes(case["raw"]))
            for method in methods:
                got = None if reader.closing else reader.answer(method, on_head, on_interim)
                if got is None:
                    break
                ex.answers.append(got)
            if reader.closing or reader.eof:
                ex.trailing, ex.closed = reader.rest(), True
            else:
                probing = True  # from here a reset means the server had closed: our request got it
                sock.sendall(SENTINEL)
                while True:
                    got = reader.answer("GET", on_head, on_interim)
                    if got is None:
                        ex.closed = True
                        break
                    if got.body == SENTINEL_BODY:
                        ex.kept_open = True
                        break
                    ex.extra.append(got)
                    if reader.closing:
                        ex.trailing, ex.closed = reader.rest(), True
                        break
        except h11.RemoteProtocolError as exc:
            ex.problem = f"the server's answer is not well-formed HTTP (h11: {exc})"
        except ConnectionError:  # reset, or a broken pipe
            if probing:
                ex.closed = True
            else:
                ex.problem = "the server reset the connection instead of answering and closing"
        except CaseTimeout:
            ex.problem = f"neither the expected answers nor a close within {CASE_TIMEOUT_S:g} s"
    return ex, srv.handler.seen[before:]


def check_request_case(case: dict[str, Any], ex: Exchange, seen: list[dict[str, Any]]) -> list[str]:
    """Where the exchange departs from the case's verdict (empty: it conforms)."""
    problems = [ex.problem] if ex.problem else []
    statuses = [a.status for a in ex.answers]
    wanted = expected_requests(case)
    if case["verdict"] == "accept":
        if statuses != [200] * len(wanted):
            problems.append(f"answers {statuses}, expected {len(wanted)} x 200")
        if case.get("closes") is True and not ex.closed:
            problems.append("the connection was kept open; it must close")
        if case.get("closes") is False and not ex.kept_open:
            problems.append("the connection closed; it must stay open")
        interims = sum(a.interims for a in ex.answers)
        if case.get("interim") is True and not interims:
            problems.append("no 100 (Continue) came")
        if case.get("interim") is False and interims:
            problems.append(f"{interims} interim answer(s) came; none may")
    else:
        served = len(wanted)
        if statuses[:served] != [200] * served or len(statuses) != served + 1:
            then = allowed_statuses(case)
            problems.append(f"answers {statuses}, expected {served} x 200 then one of {then}")
        elif statuses[-1] not in allowed_statuses(case):
            problems.append(f"answered {statuses[-1]}, expected one of {allowed_statuses(case)}")
        if not ex.closed:
            problems.append("the connection was kept open after the error; it must close")
    if ex.extra:
        problems.append(f"{len(ex.extra)} more answer(s) than requests: {[a.status for a in ex.extra]}")
    if ex.trailing:
        problems.append(f"bytes after the last answer: {ex.trailing[:80]!r}")
    if len(seen) != len(wanted):
        problems.append(f"the handler was given {len(seen)} request(s), expected {len(wanted)}: {seen}")
    else:
        for got, spec in zip(seen, wanted, strict=True):
            for key, value in spec.items():
                want = value.encode("latin-1") if key == "body" else value
                if got[key] != want:
                    problems.append(f"the handler was given {key} {got[key]!r}, expected {want!r}")
    return problems


# -- the response side: a raw site and the client --------------------------------------------------


class Site:
    """A raw TCP site on loopback: to the first request it writes the case's bytes (in pieces
    of ``writes`` bytes when given), then closes the connection or holds it open; any later
    request, on any connection, gets SECOND_ANSWER."""

    def __init__(self, raw: bytes, then: str = "hold", writes: int | None = None) -> None:
        self.raw, self.then, self.writes = raw, then, writes
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def __aenter__(self) -> Site:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.requests > 1:
                    writer.write(SECOND_ANSWER)
                    await writer.drain()
                    continue
                step = self.writes or len(self.raw) or 1
                for i in range(0, len(self.raw), step):
                    writer.write(self.raw[i : i + step])
                    await writer.drain()
                    if self.writes:
                        await asyncio.sleep(0.001)  # so that the pieces arrive apart
                if self.then == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client closed the connection, or the case is over
        finally:
            writer.close()
            self._tasks.discard(task)


@dataclass
class Outcome:
    verdict: str  # accept | reject
    status: int | None = None
    body: bytes = b""
    error: str = ""  # the UpstreamError subclass raised
    message: str = ""
    second: bytes | None = None


async def fetch(pool: Pool, method: str, url: str) -> Outcome:
    """One request through the Pool; an UpstreamError is the client refusing the answer (any
    other exception propagates: that is a failure of its own)."""
    try:
        resp = await pool.request(method, url, head_timeout=CLIENT_TIMEOUT_S, read_timeout=CLIENT_TIMEOUT_S)
        return Outcome("accept", resp.status, await resp.read())
    except UpstreamError as exc:
        return Outcome("reject", error=type(exc).__name__, message=str(exc))


async def run_response_case(case: dict[str, Any]) -> Outcome:
    async with Site(build_bytes(case["raw"]), case.get("then", "hold"), case.get("writes")) as site:
        pool = Pool(connect_timeout=CLIENT_TIMEOUT_S)
        try:
            outcome = await fetch(pool, case.get("method", "GET"), site.url)
            if case.get("second"):
                outcome.second = (await fetch(pool, "GET", site.url)).body
        finally:
            pool.close()
    return outcome


def check_response_case(case: dict[str, Any], got: Outcome) -> list[str]:
    problems = []
    if case["verdict"] == "accept":
        want = (case["status"], build_bytes(case.get("body", "")))
        if got.verdict != "accept":
            problems.append(f"the client raised {got.error}: {got.message}")
        elif (got.status, got.body) != want:
            problems.append(f"delivered {got.status} {got.body[:80]!r}, expected {want[0]} {want[1]!r}")
    else:
        want_error = case.get("error", "ProtocolError")
        if got.verdict != "reject":
            delivered = f"{got.status} {got.body[:80]!r}"
            problems.append(f"the client delivered {delivered}; it must raise {want_error}")
        elif got.error != want_error:
            problems.append(f"the client raised {got.error} ({got.message}), expected {want_error}")
    if case.get("second") and got.second != b"second":
        problems.append(f"a second request got {got.second!r}, not the site's answer to it")
    return problems


# -- the tests ------------------------------------------------------------------------------------


def test_the_corpus_is_well_formed() -> None:
    for name, cases, keys in (
        ("requests", REQUEST_CASES, REQUEST_KEYS),
        ("responses", RESPONSE_CASES, RESPONSE_KEYS),
    ):
        ids = [case["id"] for case in cases]
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
        for case in cases:
            assert set(case) <= keys, f"{name} {case['id']}: unknown keys {set(case) - keys}"
            assert case["verdict"] in ("accept", "reject"), case["id"]
            assert "RFC" in case["rfc"] or "limit" in case["rfc"], f"{case['id']}: no deciding section"
            build_bytes(case["raw"])  # every character is a byte
    assert len(REQUEST_CASES) >= 80 and len(RESPONSE_CASES) >= 40
    for case in REQUEST_CASES:
        for c in (case, ours(case)):
            assert (c["verdict"] == "reject") == ("status" in c), f"{case['id']}: status iff reject"
    for case in RESPONSE_CASES:
        for c in (case, ours(case)):
            assert (c["verdict"] == "accept") == ("status" in c), f"{case['id']}: status iff accept"
    for case in [*REQUEST_CASES, *RESPONSE_CASES]:
        if "ours" in case:  # a deviation says why, and differs from the RFC's verdict
            dev = case["ours"]
            assert dev.get("why") and set(dev) - {"why"}, case["id"]
            assert any(case.get(k) != v for k, v in dev.items() if k != "why"), case["id"]


def test_the_deviations_from_the_rfc_are_the_documented_ones() -> None:
    """Where gridctl answers otherwise than the RFC's verdict (each case's ``ours`` says why):
    this list is the README's, so a new deviation is a decision, not an accident."""
    assert DEVIATIONS == [
        "chunk-size-over-max-body",
        "chunked-extension-bws",
        "chunked-extension-bws",
        "method-lowercase",
        "request-line-double-space",
        "te-ows-trailing-tab",
        "version-http12",
    ]


@pytest.mark.parametrize("case", **by_id(REQUEST_CASES))
def test_request(srv: ServerThread, case: dict[str, Any]) -> None:
    srv.clear()
    case = ours(case)
    ex, seen = run_request_case(srv, case)
    problems = check_request_case(case, ex, seen) + [f"server error: {p}" for p in srv.problems()]
    verdict = case["verdict"] + (f" {allowed_statuses(case)}" if case["verdict"] == "reject" else "")
    assert not problems, f"{case['id']} (expected {verdict}, {case['rfc']}): " + "; ".join(problems)


@pytest.mark.parametrize("case", **by_id([c for c in REQUEST_CASES if "front_end_sees" in c]))
def test_never_more_requests_than_the_front_end_sees(srv: ServerThread, case: dict[str, Any]) -> None:
    """The funky-chunks and smuggling invariant, whatever the verdict: where a front end sees
    one request, the handler is never given two."""
    ex, seen = run_request_case(srv, case)
    answered = [a for a in ex.answers + ex.extra if a.status < 400]
    assert len(seen) <= case["front_end_sees"], f"{case['id']}: the handler was given {seen}"
    assert len(answered) <= case["front_end_sees"], f"{case['id']}: {len(answered)} requests answered"


@pytest.mark.parametrize("case", **by_id(RESPONSE_CASES))
def test_response(case: dict[str, Any]) -> None:
    case = ours(case)
    got = asyncio.run(asyncio.wait_for(run_response_case(case), CASE_TIMEOUT_S))
    problems = check_response_case(case, got)
    assert not problems, f"{case['id']} (expected {case['verdict']}, {case['rfc']}): " + "; ".join(problems)


@pytest.mark.parametrize(
    ("cases", "outcome"), [(REQUEST_CASES, h11_request_outcome), (RESPONSE_CASES, h11_response_outcome)]
)
def test_h11_disagreements_are_recorded_accurately(
    cases: list[dict[str, Any]], outcome: Callable[[dict[str, Any]], str]
) -> None:
    """A case says ``h11: ...`` exactly where h11 does something other than its verdict."""
    wrong = {
        case["id"]: (outcome(case), case.get("h11"))
        for case in cases
        if outcome(case) != case.get("h11", case["verdict"])
    }
    assert not wrong, f"h11's outcome vs the recorded one (None: not recorded): {wrong}"
