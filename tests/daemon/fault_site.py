"""A deliberately broken OpenAI-like site, in its own process so that it can be killed mid-run.

    python -m tests.daemon.fault_site MODE --record FILE [--first-ms 5] [--gap-ms 1] [--tokens 8]

``MODE``: ``ok`` (answers: a stream's first token after ``first_ms``, then ``tokens`` tokens
``gap_ms`` apart; a whole answer after the same time), ``503`` (a 503 error answer), ``drop``
(the request read, the connection closed without a byte of answer), ``hang`` (read, never
answered), ``slow`` (as ``ok`` but the first token after ``--slow-ms``); or ``hostile:M`` for
:class:`~tests.daemon.upstream.HostileSite` mode M. Its port goes to stdout once it listens.

``--record``: one line per event, flushed as it happens, so what a killed site did is still
there: ``start RID`` (a POST read, its x-request-id), ``first RID`` (a stream's first token
written), ``done RID`` (a whole answer written). Health (any GET): 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.daemon.upstream import MODES as HOSTILE_MODES
from tests.daemon.upstream import HostileSite, RawThreadedSite

FAULT_MODES = ("ok", "503", "drop", "hang", "slow")
_RID = re.compile(rb"(?i)\r\nx-request-id: *([^\r]*)")
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _event(payload: dict) -> bytes:
    return _chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


class FaultSite(RawThreadedSite):
    """The site of ``MODE`` (see the module) on a free loopback port, in a thread."""

    def __init__(
        self,
        mode: str,
        record: IO[str] | None = None,
        first_ms: float = 5.0,
        gap_ms: float = 1.0,
        tokens: int = 8,
        slow_ms: float = 400.0,
    ) -> None:
        assert mode in FAULT_MODES, mode
        self.mode, self.record = mode, record
        self.first_s, self.gap_s, self.tokens, self.slow_s = (
            first_ms / 1000,
            gap_ms / 1000,
            tokens,
            slow_ms / 1000,
        )
        self._start()

    def _note(self, event: str, rid: str) -> None:
        if self.record is not None:
            self.record.write(f"{event} {rid}\n")
            self.record.flush()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                if not head.startswith(b"POST"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    await writer.drain()
                    continue
                found = _RID.search(head)
                rid = found.group(1).decode() if found else "-"
                self._note("start", rid)
                if not await self._answer(writer, rid, json.loads(body).get("stream") is True):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, rid: str, stream: bool) -> bool:
        """Answer one request; False when the connection is to be closed."""
        mode = self.mode
        if mode == "503":
            body = b'{"error":{"message":"overloaded","type":"server_error","param":null,"code":503}}'
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            await writer.drain()
            return True
        if mode == "drop":
            writer.transport.abort()
            return False
        if mode == "hang":
            await asyncio.sleep(3600)
            return False
        first = self.slow_s if mode == "slow" else self.first_s
        base = {"id": "chatcmpl-" + rid, "object": "chat.completion.chunk", "model": "m"}
        if not stream:
            await asyncio.sleep(first + self.gap_s * (self.tokens - 1))
            usage = {"prompt_tokens": 4, "completion_tokens": self.tokens, "total_tokens": 4 + self.tokens}
            message = {"role": "assistant", "content": "x" * self.tokens}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            body = json.dumps(
                {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            ).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            await writer.drain()
            self._note("done", rid)
            return True
        await asyncio.sleep(first)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(self.tokens):
            delta = {"role": "assistant", "content": "x"} if i == 0 else {"content": "x"}
            writer.write(_event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
            await writer.drain()
            if i == 0:
                self._note("first", rid)
            await asyncio.sleep(self.gap_s)
        writer.write(_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        self._note("done", rid)
        return True


@dataclass
class SiteProc:
    """A site in its own process (this module run as a script): its URL, its record file."""

    proc: subprocess.Popen[str]
    url: str
    record: Path
    _events: list[tuple[str, str]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[tuple[str, str]]:
        """The (event, request id) pairs it has recorded so far (whole lines only)."""
        text = self.record.read_text() if self.record.exists() else ""
        lines = text.split("\n")[:-1]
        return [(e, rid) for e, _, rid in (line.partition(" ") for line in lines)]

    def count(self, event: str) -> int:
        return sum(1 for e, _ in self.events() if e == event)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def start_site(mode: str, record: Path, *args: str) -> SiteProc:
    """Start ``python -m tests.daemon.fault_site MODE`` and return once it listens."""
    from tests.conftest import REPO, cli_env

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.fault_site", mode, "--record", str(record), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=cli_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"fault site {mode} did not start: {line!r}")
    return SiteProc(proc, f"http://127.0.0.1:{int(line)}", record)


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.daemon.fault_site")
    p.add_argument("mode", choices=[*FAULT_MODES, *(f"hostile:{m}" for m in HOSTILE_MODES)])
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("--first-ms", type=float, default=5.0)
    p.add_argument("--gap-ms", type=float, default=1.0)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--slow-ms", type=float, default=400.0)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with args.record.open("a", encoding="utf-8") as record:
        site: RawThreadedSite
        if args.mode.startswith("hostile:"):
            site = HostileSite(args.mode.split(":", 1)[1])
        else:
            site = FaultSite(args.mode, record, args.first_ms, args.gap_ms, args.tokens, args.slow_ms)
        print(site.port, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
