"""Each inference request's trace: its request id, and one JSON line in the access log.

The request id is the client's ``x-request-id`` when it is printable ASCII (no space) of at
most ``MAX_REQUEST_ID`` characters, else a new one (128 random bits, hex); the site gets it, and so does
the client, on every answer from an inference route (errors included).

The access log line holds the request's metadata only, never a prompt or a completion:
time (UTC), request id, client region, model, site, status, outcome, TTFT and total in ms,
prompt and completion tokens (as the site's usage reported them), the sites tried in order,
the SLO and whether the answer was predicted to meet it and did. Lines are gathered in memory
and handed to a thread 256 KiB at a time (every half second, when the buffer fills, and at
shutdown), which writes them whole: complete lines in each ``write``, at most a pipe's atomic
size to a pipe or socket, so workers sharing it never interleave within a line. A stalled
reader delays the log, never the requests (past 4 MiB waiting, lines are dropped and
counted). Handing over seldom is the point: each hand-over wakes the thread, and the thread
takes the interpreter's lock from the event loop.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import queue
import random
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from gridctl.core.errors import GridctlError

MAX_REQUEST_ID = 128
ACCESS_LOG_OFF, ACCESS_LOG_STDERR = "off", "stderr"
_PIPE_BUF = 4096  # POSIX: a write of at most this to a pipe is never interleaved with another
_CHUNK = 256 * 1024  # lines gathered before a hand-over to the writer's thread
MAX_MODEL_CHARS = 200  # a model name the client sent, as the log keeps it
_ENCODE = json.JSONEncoder(
    separators=(",", ":")
).encode  # one encoder: json.dumps(separators=) makes one a call
_STR = json.encoder.encode_basestring_ascii  # the C escaper json.dumps uses
_second: list[Any] = [0, 0, ""]  # the last second formatted: its first ms, the next second's, its text
_floor = math.floor  # int(x) for x >= 0, without int()'s argument parsing
_MILLIS = tuple(f".{n:03d}Z" for n in range(1000))  # a lookup: cheaper than formatting an int
_ESCAPED: dict[str, str] = {}  # site names (the inventory's), JSON-escaped once: a lookup per line
_ESCAPED_MAX = 4096
_forks = [0]  # how many forks made this process: a writer made before one serves its parent


def _forked() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_forked)


def _utc(wall: float) -> str:
    """``2026-01-02T03:04:05.678Z``."""
    ms = _floor(wall * 1000.0)
    second = _second
    if not second[0] <= ms < second[1]:  # a new second: strftime once a second
        start = ms // 1000 * 1000
        second[0], second[1] = start, start + 1000
        second[2] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start // 1000))
    text: str = second[2]
    first_ms: int = second[0]
    return text + _MILLIS[ms - first_ms]


def _name(value: str | None) -> str:
    """A site's name as JSON (``null`` for None), from a bounded cache of the names seen."""
    if value is None:
        return "null"
    text = _ESCAPED.get(value)
    if text is None:
        text = _STR(value)
        if len(_ESCAPED) < _ESCAPED_MAX:  # a client sending new names each time fills it once
            _ESCAPED[value] = text
    return text


def parse_request_id(value: str | None) -> str | None:
    """The client's request id when it is usable (printable ASCII, no space, bounded), else None."""
    ok = value and len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable()
    return value if ok and value is not None and " " not in value else None


def new_request_id() -> str:
    """128 random bits as 32 hex digits, like uuid4's, without a system call each: an id names
    a request in logs, it guards nothing (``random`` is reseeded in each forked worker)."""
    return "%032x" % random.getrandbits(128)  # noqa: UP031 (a third cheaper than an f-string's spec)


class Trace:
    """One inference request from its head to its end: what the access log and the per-request
    metrics say. The proxy fills in the answer (:meth:`answered`); whoever sees the request
    end calls :meth:`end` (the daemon for a whole answer, the relay for a stream), once."""

    __slots__ = (
        "id", "region", "start", "wall", "model", "site", "status", "outcome", "first_token",
        "prompt_tokens", "completion_tokens", "tried", "slo_ms", "expected_miss", "finished", "sink",
    )  # fmt: skip

    def __init__(self, rid: str, region: str | None, sink: Callable[[Trace], None]) -> None:
        self.id, self.region, self.sink = rid, region, sink
        self.start = time.monotonic()
        self.wall = time.time()
        self.model: str | None = None
        self.site: str | None = None
        self.status = 0
        self.outcome = "ok"
        self.first_token: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.tried: list[str] = []
        self.slo_ms: float | None = None
        self.expected_miss: bool | None = None
        self.finished: float | None = None

    def answered(
        self,
        site: str,
        first_token: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        outcome: str,
        expected_miss: bool,
    ) -> None:
        self.site, self.first_token, self.outcome = site, first_token, outcome
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.expected_miss = expected_miss

    def end(self, status: int) -> None:
        if self.finished is not None:
            return
        self.finished = time.monotonic()
        self.status = status
        if status == 499:
            self.outcome = "client-gone"
        self.sink(self)

    @property
    def total_s(self) -> float:
        return (self.finished if self.finished is not None else time.monotonic()) - self.start

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


def build_line(t: Trace) -> dict[str, Any]:
    """The access log's record of a request: metadata only, never its text."""
    total_ms = round(t.total_s * 1000.0, 1)
    ttft = t.ttft_s
    line: dict[str, Any] = {
        "time": _utc(t.wall),
        "request_id": t.id,
        "region": t.region,
        "model": t.model[:MAX_MODEL_CHARS] if t.model is not None else None,
        "site": t.site,
        "status": t.status,
        "outcome": t.outcome,
        "ttft_ms": None if ttft is None else round(ttft * 1000.0, 1),
        "total_ms": total_ms,
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "sites_tried": t.tried,
        "slo_ms": t.slo_ms,
        # what placement predicted when it sent the request (x-grid-slo), and what happened
        "slo": None if t.site is None else "expected-miss" if t.expected_miss else "predicted-met",
        "slo_met": None if t.site is None or t.slo_ms is None else total_ms <= t.slo_ms,
    }
    return line


def _json(value: float | None) -> str:
    """A number of a line (or None), exactly as ``json.dumps`` writes it."""
    if value is None:
        return "null"
    if value.__class__ is float and not math.isfinite(value):
        return _ENCODE(value)  # NaN, Infinity
    return repr(value)


def _met(total_ms: float, slo_ms: float) -> bool:
    """``round(total_ms, 1) <= slo_ms``, rounding only where the two are within 0.051 ms: the
    rounding moves a time below 1e9 ms by at most 0.05 ms (and the doubles' error there is
    under 1e-6 ms), so it cannot change the answer further apart. NaN and infinities compare
    as they do rounded."""
    if -1e9 < total_ms < 1e9:
        if total_ms <= slo_ms - 0.051:
            return True
        if total_ms > slo_ms + 0.051:
            return False
    return round(total_ms, 1) <= slo_ms


# The parts of a line that seldom change from one request to the next, and their text: one
# entry each, so a client sending new words each time costs an escape, as with no memo at all.
_head: list[Any] = [None, ""]  # (region, model, site, status, outcome): from "region" to "ttft_ms"
_tail: list[Any] = [None, None, None, ""]  # slo_ms (by identity: 500 == 500.0), slo, slo_met
_TIME_ID = tuple(f'.{n:03d}Z","request_id":"' for n in range(1000))  # the time's ms, and what follows


def _head_text(region: str | None, model: str | None, site: str | None, status: int, outcome: str) -> str:
    model = None if model is None else model[:MAX_MODEL_CHARS]
    return (
        f'","region":{"null" if region is None else _STR(region)},'
        f'"model":{"null" if model is None else _STR(model)},"site":{_name(site)},'
        f'"status":{int(status)},"outcome":{_STR(outcome)},"ttft_ms":'
    )


def format_line(t: Trace) -> str:
    """``build_line(t)`` as compact JSON, written out by hand: the same text as
    ``json.dumps(build_line(t), separators=(",", ":"))`` (a test holds them equal) at a fraction
    of its cost, since the daemon writes one per request: what changes least is kept as text
    (an f-string's cost is in its parts). Times are finite (monotonic clock differences, far
    below 1e16 ms) and ``.1f`` rounds them as ``round(x, 1)`` does."""
    start, first, site, slo_ms, tried, rid = t.start, t.first_token, t.site, t.slo_ms, t.tried, t.id
    total = ((t.finished if t.finished is not None else time.monotonic()) - start) * 1000.0
    prompt, completion = t.prompt_tokens, t.completion_tokens
    head = (t.region, t.model, site, t.status, t.outcome)
    if head != _head[0]:
        _head[0], _head[1] = head, _head_text(*head)
    if site is None:
        slo = met = "null"
    else:
        slo = '"expected-miss"' if t.expected_miss else '"predicted-met"'
        met = "null" if slo_ms is None else "true" if _met(total, slo_ms) else "false"
    tail = _tail
    if slo_ms is not tail[0] or slo is not tail[1] or met is not tail[2]:
        tail[:] = slo_ms, slo, met, f'],"slo_ms":{_json(slo_ms)},"slo":{slo},"slo_met":{met}}}'
    if len(tried) == 1:
        names = _ESCAPED.get(tried[0]) or _name(tried[0])
    else:
        names = ",".join([_name(name) for name in tried])
    ms = _floor(t.wall * 1000.0)
    if not _second[0] <= ms < _second[1]:
        _utc(t.wall)  # a new second
    if not (rid.isascii() and rid.isalnum()):  # a generated id (hex) needs no escaping
        rid = _STR(rid)[1:-1]
    return (
        f'{{"time":"{_second[2]}{_TIME_ID[ms - _second[0]]}{rid}{_head[1]}'
        f'{"null" if first is None else f"{(first - start) * 1000.0:.1f}"},"total_ms":{total:.1f},'
        f'"prompt_tokens":{"null" if prompt is None else prompt},'
        f'"completion_tokens":{"null" if completion is None else completion},"sites_tried":[{names}{tail[3]}'
    )


class FdWriter:
    """Text to a file descriptor from a thread of its own, so a reader that stalls (a full
    pipe to a stuck log shipper, a hung NFS file) or is gone never blocks or breaks the
    caller: ``put`` queues and returns; past ``QUEUED`` chunks waiting, or when a write fails,
    the lines are dropped and counted in ``dropped`` (the bound is on the text waiting, so a
    burst of short messages, a failed reload's problems, fits as the chunks do). Never raises.
    The thread starts on the first ``put`` (so one made before ``fork`` serves the child only
    once it writes). A chunk goes out in one ``write`` to a file or terminal; to a pipe or
    socket (or a descriptor fstat cannot tell), in writes of at most ``PIPE_BUF`` bytes cut at
    line ends (a longer line alone, which POSIX does not keep whole)."""

    QUEUED = 16  # chunks waiting for a slow reader: 4 MiB of 256 KiB chunks
    ITEM = 256  # what a hand-over counts for beyond its text: a short message is not free

    def __init__(self, fd: int, close: bool = False) -> None:
        self.fd, self._close = fd, close
        self.dropped = 0
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self.limit = self.QUEUED * _CHUNK  # what may wait: characters, each hand-over ITEM more
        self._sent = self._taken = 0  # what put queued, what the thread took: one writer each
        self._writer: threading.Thread | None = None
        self._fork = _forks[0]
        self._lock = threading.Lock()
        self.writing = 0  # lines of the chunk the thread is writing now, not yet written
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        self.atomic = 0 if stat.S_ISREG(mode) or stat.S_ISCHR(mode) else _PIPE_BUF  # 0: whole

    def put(self, text: str, lines: int) -> None:
        """Queue ``text`` (``lines`` complete lines) to be written whole, in order."""
        with self._lock:
            if self._writer is None or self._fork != _forks[0]:  # none yet, or a fork's copy
                self._queue = queue.Queue()
                self._sent = self._taken = 0
                self._fork = _forks[0]
                self._writer = threading.Thread(target=self._drain, name="gridctl-log-writer", daemon=True)
                self._writer.start()
            elif not self._writer.is_alive():
                self.dropped += lines
                return
            cost = len(text) + self.ITEM
            if self._sent - self._taken + cost > self.limit:
                self.dropped += lines
                return
            self._sent += cost
            self._queue.put_nowait((text, lines))

    def _drain(self) -> None:
        q, fd, atomic = self._queue, self.fd, self.atomic
        while (item := q.get()) is not None:
            self._taken += len(item[0]) + self.ITEM
            data = item[0].encode("utf-8", "replace")
            view, start, size = memoryview(data), 0, len(data)
            self.writing = item[1]
            done = 0  # bytes written
            try:
                while start < size:
                    end = size
                    if atomic and size - start > atomic:  # to the last line end within PIPE_BUF,
                        end = data.rfind(b"\n", start, start + atomic) + 1  # else a long line alone
                        end = end or data.find(b"\n", start) + 1 or size
                    piece = view[start:end]
                    while piece:
                        n = os.write(fd, piece)
                        piece, done = piece[n:], done + n
                    if end < size:
                        self.writing = max(0, self.writing - data.count(b"\n", start, end))
                    start = end
            except OSError:  # a full disk, a reader gone: counted, and never said on that descriptor
                # the lines not written whole (a write may have taken part of a chunk first;
                # a message of several lines counts as its one)
                self.dropped += min(item[1], data.count(b"\n", done))
            self.writing = 0

    def close(self, timeout: float = 2.0) -> int:
        """Write what is queued, waiting at most ``timeout`` s for the reader; what is still
        waiting then is dropped and counted. Returns ``dropped``."""
        writer = self._writer
        if writer is not None and self._fork == _forks[0]:
            self._queue.put_nowait(None)  # the queue is unbounded (put bounds what waits)
            writer.join(timeout)
            if writer.is_alive():  # the reader never came back: what waits is lost, and counted
                self.dropped += self.writing
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        self.dropped += item[1]
            self._writer = None
        if self._close and (writer is None or not writer.is_alive()):
            with contextlib.suppress(OSError):
                os.close(self.fd)
        return self.dropped


_stderr: list[FdWriter | None] = [None]
_gathered: list[Any] = [None, 0]  # the access log gathering lines for stderr, and its thread


def stderr_writer() -> FdWriter | None:
    """This process's writer of stderr (None when stderr has no descriptor, as under capture):
    the access log on stderr and the daemon's own messages share it, in order (a message
    from the event loop's thread follows the access lines gathered before it)."""
    w = _stderr[0]
    if w is None:
        try:
            sys.stderr.flush()
            w = _stderr[0] = FdWriter(sys.stderr.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return None
    return w


def say(text: str) -> None:
    """One line of the daemon's to stderr, never blocking: through :func:`stderr_writer` (or,
    for a captured stderr, written at once, errors ignored)."""
    w = stderr_writer()
    if w is not None:
        log, owner = _gathered
        if log is not None and owner == threading.get_ident():  # the loop's own message:
            log.flush()  # the access lines of requests that ended before it go first
        w.put(text + "\n", 1)
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class SayHandler(logging.Handler):
    """The ``gridctl`` loggers' records (a handler's traceback...) through :func:`say`, not
    logging's blocking write to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            say(self.format(record))


class AccessLog:
    """Complete JSON lines to a :class:`FdWriter` (or, for a stderr without a descriptor, a
    text stream), gathered and handed over a chunk at a time. ``dropped``: lines that never
    reached the reader (gridctl_access_log_dropped_lines_total)."""

    def __init__(self, sink: FdWriter | IO[str], chunk: int, own: bool) -> None:
        self.sink, self.chunk, self._own = sink, chunk, own
        self.lines: list[str] = []
        self.size = 0
        self._lost = 0  # lines a text stream refused

    @property
    def dropped(self) -> int:
        return self._lost + (self.sink.dropped if isinstance(self.sink, FdWriter) else 0)

    def write(self, t: Trace) -> None:
        text = format_line(t) + "\n"
        if self.size + len(text) > self.chunk:
            self.flush()
        self.lines.append(text)
        self.size += len(text)

    def flush(self) -> None:
        if not self.lines:
            return
        text, n = "".join(self.lines), len(self.lines)
        self.lines.clear()
        self.size = 0
        if isinstance(self.sink, FdWriter):
            self.sink.put(text, n)
            return
        try:  # a captured stream (tests): written here
            self.sink.write(text)
            self.sink.flush()
        except (OSError, ValueError):
            self._lost += n

    def close(self, timeout: float = 2.0) -> None:
        """Hand over what is gathered; a log of its own (a file) is written out and closed,
        saying on stderr how many lines it dropped, if any."""
        self.flush()
        if _gathered[0] is self:
            _gathered[0] = None
        if self._own and isinstance(self.sink, FdWriter):
            dropped = self.sink.close(timeout)
            if dropped:
                say(f"gridctl daemon: {dropped} access log lines could not be written")


def open_access_log(where: str, stderr: IO[str] | None = None) -> AccessLog | None:
    """``off``: None; ``stderr`` (the process's stderr writer, shared with its messages); else
    a file, opened to append, created 0600."""
    if where == ACCESS_LOG_OFF:
        return None
    if where == ACCESS_LOG_STDERR:
        if stderr is None:
            writer = stderr_writer()
            if writer is not None:
                log = AccessLog(writer, _CHUNK, own=False)
                _gathered[:] = log, threading.get_ident()  # see say()
                return log
        return AccessLog(stderr or sys.stderr, _PIPE_BUF, own=False)
    try:
        fd = os.open(where, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise GridctlError(
            f"cannot open the access log {where}: {exc.strerror or exc}",
            hint="give a writable file, --access-log stderr, or --access-log off",
        ) from None
    return AccessLog(FdWriter(fd, close=True), _CHUNK, own=True)
