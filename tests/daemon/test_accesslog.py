"""The access log's hand-written line is the JSON of its record, byte for byte."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.daemon.accesslog import Trace, build_line, format_line, new_request_id, parse_request_id

text = st.text(max_size=40)  # any code point: quotes, backslashes, controls, non-ASCII
maybe_text = st.none() | text
count = st.none() | st.integers(min_value=0, max_value=10**9)


@settings(max_examples=300, deadline=None)
@given(
    rid=text,
    region=maybe_text,
    model=st.none() | st.text(max_size=300),
    site=maybe_text,
    status=st.integers(min_value=0, max_value=999),
    outcome=text,
    start=st.floats(min_value=0, max_value=1e6),
    ttft=st.none() | st.floats(min_value=0, max_value=1e4),
    total=st.floats(min_value=0, max_value=1e4),
    tokens=st.tuples(count, count),
    tried=st.lists(text, max_size=4),
    slo_ms=st.none() | st.floats(min_value=1, max_value=1e6) | st.integers(min_value=1, max_value=10**6),
    expected_miss=st.none() | st.booleans(),
    wall=st.floats(min_value=0, max_value=4e9),
)
def test_format_line_is_the_json_of_build_line(
    rid, region, model, site, status, outcome, start, ttft, total, tokens, tried, slo_ms, expected_miss, wall
) -> None:
    t = Trace(rid, region, lambda _: None)
    t.start, t.wall = start, wall
    t.model, t.site, t.status, t.outcome = model, site, status, outcome
    t.first_token = None if ttft is None else start + ttft
    t.finished = start + total
    t.prompt_tokens, t.completion_tokens = tokens
    t.tried, t.slo_ms, t.expected_miss = tried, slo_ms, expected_miss
    line = format_line(t)
    assert line == json.dumps(build_line(t), separators=(",", ":"))
    assert json.loads(line)["request_id"] == rid


@settings(max_examples=500, deadline=None)
@given(
    total=st.floats(min_value=0, max_value=1e7) | st.integers(0, 10**8).map(lambda n: n / 10),
    slo_ms=st.floats(allow_nan=True) | st.integers(min_value=-10, max_value=10**7),
    nudge=st.sampled_from([0.0, 0.05, -0.05, 0.0500001, -0.0500001, 0.051, -0.051, 1e-9, -1e-9]),
)
def test_slo_met_without_rounding_is_slo_met_rounded(total: float, slo_ms: float, nudge: float) -> None:
    """The fast comparison and ``round(total, 1) <= slo_ms`` agree, near the SLO above all."""
    from gridctl.daemon.accesslog import _met

    near = slo_ms + nudge if math.isfinite(slo_ms) and abs(slo_ms) < 1e12 else total
    for t in (total, near):
        assert _met(t, slo_ms) == (round(t, 1) <= slo_ms), (t, slo_ms)


def test_lines_in_a_row_that_share_some_fields_are_each_the_json_of_their_record() -> None:
    """What format_line keeps from the line before (region, model, site, status, outcome; the
    SLO's text, by identity: 500 and 500.0 are equal, their JSON is not) never leaks into a
    line whose fields differ."""
    rows = [
        ("bench", "m", "s", 200, "ok", 500.0, False, ["s"]),
        ("bench", "m", "s", 200, "ok", 500, False, ["s"]),
        ("bench", "m", "s", 200, "ok", 500, True, ["s"]),
        ("bench", "m", "s", 502, "cut", 500, True, ["s", "t"]),
        ("other", "m", "t", 502, "cut", None, None, []),
        ("other", "m" * 300, None, 499, "client-gone", None, None, []),
        (None, None, None, 0, "ok", 250.5, None, []),
        ("bench", "m", "s", 200, "ok", 500.0, False, ["s"]),
    ]
    for i, (region, model, site, status, outcome, slo_ms, miss, tried) in enumerate(rows * 2):
        t = Trace(f"id-{i}" if i % 2 else f"{i:032x}", region, lambda _: None)
        t.model, t.site, t.status, t.outcome, t.tried = model, site, status, outcome, tried
        t.slo_ms, t.expected_miss, t.finished = slo_ms, miss, t.start + 0.01 * i
        t.first_token = None if i % 3 else t.start + 0.001
        assert format_line(t) == json.dumps(build_line(t), separators=(",", ":"))


def test_generated_request_ids_are_128_bit_hex_and_distinct() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert all(parse_request_id(i) == i for i in ids)


def test_forked_workers_generate_different_request_ids() -> None:
    """--workers forks: each worker's generator must be its own, not a copy of the parent's."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32
    assert child != new_request_id()


def _trace(i: int) -> Trace:
    t = Trace(f"req-{i}", "metro", lambda _: None)
    t.model, t.site, t.status, t.tried, t.finished = "m", "s", 200, ["s"], t.start + 0.01
    return t


def test_a_reader_that_stalls_never_blocks_the_writer_lines_are_dropped_and_counted() -> None:
    """stderr piped to a log shipper that stopped reading: the pipe fills (64 KiB), and a
    write() to it would block the event loop, and every request with it."""
    import os
    import time

    from gridctl.daemon.accesslog import _PIPE_BUF, AccessLog, FdWriter

    read, write = os.pipe()
    log = AccessLog(FdWriter(write, close=True), _PIPE_BUF, own=True)
    try:
        start = time.monotonic()
        for i in range(20_000):  # about 4 MB of lines: far over the pipe and the queue
            log.write(_trace(i))
        log.flush()
        assert time.monotonic() - start < 10  # it returned: a blocking write never would
        assert log.dropped > 0
        # the reader comes back: what was queued is written whole, line by line
        os.set_blocking(read, False)
        got = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = os.read(read, 1 << 16)
            except BlockingIOError:
                if log.sink._queue.empty() and got:  # type: ignore[union-attr]
                    time.sleep(0.2)
                    try:
                        chunk = os.read(read, 1 << 16)
                    except BlockingIOError:
                        break
                else:
                    time.sleep(0.01)
                    continue
            got += chunk
        lines = got.decode().splitlines()
        assert lines and all(json.loads(line)["status"] == 200 for line in lines)
        assert len(lines) + log.dropped == 20_000
    finally:
        log.close()
        os.close(read)


def test_close_writes_what_is_left_to_a_reader_that_reads() -> None:
    import os

    from gridctl.daemon.accesslog import _PIPE_BUF, AccessLog, FdWriter

    read, write = os.pipe()
    log = AccessLog(FdWriter(write, close=True), _PIPE_BUF, own=True)
    for i in range(30):
        log.write(_trace(i))
    log.close()
    with os.fdopen(read, "rb") as fh:
        lines = fh.read().decode().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"req-{i}" for i in range(30)]
    assert log.dropped == 0


def test_a_reader_that_goes_away_costs_counted_lines_never_the_writer() -> None:
    """stderr's reader closed: every write fails (EPIPE); the writer keeps counting, never
    raises, never says so on the same broken descriptor (which would kill its thread)."""
    import os
    import signal

    from gridctl.daemon.accesslog import _PIPE_BUF, AccessLog, FdWriter

    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it: EPIPE, not a signal
    read, write = os.pipe()
    os.close(read)
    try:
        writer = FdWriter(write, close=True)
        log = AccessLog(writer, _PIPE_BUF, own=True)
        for i in range(500):
            log.write(_trace(i))
        log.flush()
        log.close()
        assert log.dropped == 500  # each one counted: written nowhere, lost to nobody's knowledge
    finally:
        signal.signal(signal.SIGPIPE, old)


def test_lines_still_waiting_at_close_are_counted() -> None:
    import os

    from gridctl.daemon.accesslog import _PIPE_BUF, AccessLog, FdWriter

    read, write = os.pipe()
    log = AccessLog(FdWriter(write, close=True), _PIPE_BUF, own=True)
    try:
        for i in range(20_000):  # far more than the pipe holds; nobody reads
            log.write(_trace(i))
        log.close(timeout=0.3)
        assert log.dropped > 0
        got = b""
        os.set_blocking(read, False)
        try:
            while chunk := os.read(read, 1 << 16):
                got += chunk
        except BlockingIOError:
            pass
        written = len(got.decode().splitlines())
        # nothing lost uncounted; the chunk the thread was blocked writing when close gave up is
        # counted as dropped, and may still arrive here, since this reader reads after close
        assert 20_000 <= written + log.dropped <= 20_000 + _PIPE_BUF // 100
    finally:
        os.close(read)


def test_a_pipe_gets_writes_of_at_most_pipe_buf_cut_at_line_ends_a_file_one_write() -> None:
    import os
    import socket
    import tempfile

    from gridctl.daemon.accesslog import _PIPE_BUF, FdWriter

    read, write = os.pipe()
    a, b = socket.socketpair()
    with tempfile.TemporaryFile() as fh:
        try:
            assert FdWriter(write).atomic == _PIPE_BUF
            assert FdWriter(a.fileno()).atomic == _PIPE_BUF
            assert FdWriter(fh.fileno()).atomic == 0  # a regular file: one write, whole
            assert FdWriter(os.open(os.devnull, os.O_WRONLY), close=True).atomic == 0
        finally:
            for fd in (read, write):
                os.close(fd)
            a.close()
            b.close()


def test_workers_sharing_a_pipe_never_interleave_within_a_line() -> None:
    """--workers forks: every worker writes 64 KiB chunks to the one stderr pipe; the reader
    (a log shipper) must get every line whole. (A line over PIPE_BUF cannot be: POSIX makes
    only writes of at most PIPE_BUF to a pipe atomic.)"""
    import os
    import threading

    from gridctl.daemon.accesslog import _CHUNK, _PIPE_BUF, AccessLog, FdWriter

    read, write = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(read, 1 << 16), b"")))
    reader.start()
    children = []
    for worker in range(3):
        pid = os.fork()
        if pid == 0:  # a worker: its lines, gathered in chunks, then out
            try:
                os.close(read)
                log = AccessLog(FdWriter(write, close=True), _CHUNK, own=True)
                for i in range(2_000):
                    t = _trace(i)
                    t.region = "r" * (i % 4 * 1000)  # lines of 0.3-3.3 KB
                    t.id = f"w{worker}-{i}"
                    log.write(t)
                log.close(timeout=30)
            finally:
                os._exit(0)
        children.append(pid)
    os.close(write)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    reader.join(30)
    os.close(read)
    lines = b"".join(got).decode().splitlines()
    ids = [json.loads(line)["request_id"] for line in lines]  # a torn line would not parse
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in range(3) for i in range(2_000))
    for w in range(3):  # and each worker's in order
        assert [x for x in ids if x.startswith(f"w{w}-")] == [f"w{w}-{i}" for i in range(2_000)]
    assert max(len(line) for line in lines) > _PIPE_BUF * 3 // 4


def test_a_line_longer_than_pipe_buf_is_written_whole_between_its_neighbours() -> None:
    import os

    from gridctl.daemon.accesslog import _CHUNK, AccessLog, FdWriter

    read, write = os.pipe()
    log = AccessLog(FdWriter(write, close=True), _CHUNK, own=True)
    for i in range(60):
        t = _trace(i)
        t.region = "r" * (10_000 if i == 30 else i * 10)  # 45 KB in all: the pipe holds it
        log.write(t)
    log.close()
    with os.fdopen(read, "rb") as fh:
        lines = fh.read().decode().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"req-{i}" for i in range(60)]
    assert json.loads(lines[30])["region"] == "r" * 10_000
    assert log.dropped == 0


def test_a_writer_made_before_a_fork_writes_for_the_child_too() -> None:
    """The stderr writer is made (and its thread started) in the parent; a forked worker has
    a copy without the thread, and starts its own on its first line."""
    import os

    from gridctl.daemon.accesslog import FdWriter

    read, write = os.pipe()
    writer = FdWriter(write)
    writer.put("parent\n", 1)
    pid = os.fork()
    if pid == 0:
        try:
            writer.put("child\n", 1)
            writer.close(timeout=10)
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    writer.close(timeout=10)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        assert sorted(fh.read().decode().splitlines()) == ["child", "parent"]


def test_a_burst_of_short_messages_waits_for_a_stalled_reader_it_is_not_dropped() -> None:
    """A failed reload says one line per problem, in one go: 31 short messages are a few KB,
    far below what may wait for a reader (16 chunks), even while the thread is stuck in a write."""
    import contextlib
    import fcntl
    import os

    from gridctl.daemon.accesslog import FdWriter

    read, write = os.pipe()
    flags = fcntl.fcntl(write, fcntl.F_GETFL)
    fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    filler = 0
    with contextlib.suppress(BlockingIOError):
        while True:  # the pipe full: the reader stalls
            filler += os.write(write, b"." * 4096)
    fcntl.fcntl(write, fcntl.F_SETFL, flags)
    writer = FdWriter(write)
    messages = ["reload (SIGHUP) failed, keeping the running inventory"]
    messages += [f"  sites.yaml: problem {i}" for i in range(30)]
    for text in messages:
        writer.put(text + "\n", 1)
    assert writer.dropped == 0
    got = [os.read(read, filler)]
    writer.close(timeout=10)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        got.append(fh.read())
    assert b"".join(got)[filler:].decode().splitlines() == messages
    assert writer.dropped == 0


def test_a_chunk_cut_short_by_a_full_file_counts_only_the_lines_not_written() -> None:
    """A regular file gets a chunk in one write; past the file size limit (or a full disk) that
    write takes what fits, the next fails: the lines written whole are not dropped ones."""
    import os
    import resource
    import tempfile

    from gridctl.daemon.accesslog import FdWriter

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "access.log")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                resource.setrlimit(resource.RLIMIT_FSIZE, (100_050, 100_050))  # SIGXFSZ: ignored
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                writer = FdWriter(fd, close=True)
                writer.put(("x" * 99 + "\n") * 2_000, 2_000)  # 200 KB
                os.write(write, str(writer.close(timeout=10)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        assert os.waitpid(pid, 0)[1] == 0
        with os.fdopen(read, "rb") as fh:
            dropped = int(fh.read())
        with open(path, "rb") as fh:
            data = fh.read()
        assert len(data) == 100_050  # 1,000 lines whole, and part of one
        assert dropped == 2_000 - data.count(b"\n") == 1_000


def test_a_message_follows_the_access_lines_of_requests_that_ended_before_it(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """stderr holds both: a daemon message ("stopped", a reload's problems) must not jump
    ahead of the access lines still gathered for the next hand-over."""
    import os

    from gridctl.daemon import accesslog

    read, write = os.pipe()
    writer = accesslog.FdWriter(write, close=True)
    monkeypatch.setattr(accesslog, "_stderr", [writer])
    log = accesslog.open_access_log("stderr")
    assert log is not None and log.sink is writer
    log.write(_trace(0))
    log.write(_trace(1))
    accesslog.say("gridctl daemon: a message")
    log.write(_trace(2))
    log.close()
    writer.close()
    with os.fdopen(read, "rb") as fh:
        lines = fh.read().decode().splitlines()
    assert lines[2] == "gridctl daemon: a message"
    assert [json.loads(line)["request_id"] for i, line in enumerate(lines) if i != 2] == [
        "req-0",
        "req-1",
        "req-2",
    ]
    assert accesslog._gathered[0] is None  # closed: a later message flushes nothing of it
