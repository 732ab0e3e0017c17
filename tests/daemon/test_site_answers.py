"""Sites that answer badly in the ways a review found the daemon mishandled, each against a
fresh daemon beside a healthy site (review of issue 13): a whole answer that breaks off in any
framing or stalls after its head fails over; a site's SSE answer to a plain request too; a
stream the site labels JSON is relayed as it comes; a cut inside an event leaves events that
parse; a site's absurd usage numbers are ignored, not a 500. Also: the HTTP server's own
refusals carry x-request-id, and a stderr nobody reads blocks nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, cli_env
from tests.daemon.conftest import DaemonProc, chat, free_port, start_daemon, two_sites
from tests.daemon.upstream import HostileSite, TimedUpstream

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ScriptedSite(HostileSite):
    """HostileSite's raw loop (health answered 200, each POST answered then closed) with the
    answer given by ``script``."""

    def __init__(self, script: Script) -> None:  # not super().__init__: that takes a mode of MODES
        self.script, self.mode = script, "scripted"
        self.sent = self.posts = self.open = 0
        self._start()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        await self.script(writer)


async def chunked_then_close(w: asyncio.StreamWriter) -> None:
    w.write(JSON_HEAD + b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"id":"x","choi\r\n')
    await w.drain()


async def close_delimited_truncated(w: asyncio.StreamWriter) -> None:
    w.write(JSON_HEAD + b'Connection: close\r\n\r\n{"id":"x","choi')
    await w.drain()


async def sse_then_reset(w: asyncio.StreamWriter) -> None:
    w.write(SSE_HEAD)
    await w.drain()
    await asyncio.sleep(0.05)
    _reset(w)


async def head_then_hang(w: asyncio.StreamWriter) -> None:
    w.write(JSON_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    await w.drain()
    await asyncio.sleep(60)


@pytest.fixture
def good() -> Iterator[TimedUpstream]:
    up = TimedUpstream(first_ms=5, interval_ms=1)
    yield up
    up.close()


def _failovers(d: DaemonProc) -> str:
    text = httpx.get(d.url + "/metrics", timeout=5).text
    m = re.search(r'gridctl_failovers_total\{site="bad"\} (\d+)', text)
    return m.group(1) if m else "0"


@pytest.mark.parametrize(
    "script",
    [chunked_then_close, close_delimited_truncated, sse_then_reset, head_then_hang],
    ids=lambda f: f.__name__,
)
def test_a_plain_request_whose_answer_never_completes_fails_over(
    tmp_path: Path, good: TimedUpstream, script: Script
) -> None:
    bad = ScriptedSite(script)
    try:
        d = start_daemon(
            two_sites(tmp_path / "inv", bad.url, good.url), "--region", "metro", "--head-timeout", "1"
        )
        try:
            start = time.monotonic()
            r = d.post(chat(), timeout=30)
            took = time.monotonic() - start
            assert r.status_code == 200 and r.headers["x-grid-site"] == "good", r.text
            assert r.json()["choices"], r.text  # a whole answer: it parses
            assert bad.posts == 1 and _failovers(d) == "1"
            assert took < 10, took  # the hung body is judged by the 1 s head deadline, not a 30 s read
        finally:
            d.stop()
    finally:
        bad.close()


def test_a_site_s_absurd_usage_numbers_are_ignored_not_a_500(tmp_path: Path, good: TimedUpstream) -> None:
    body = b'{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],'
    body += b'"usage":{"prompt_tokens":' + b"1" * 5000 + b',"completion_tokens":2}}'

    async def huge(w: asyncio.StreamWriter) -> None:
        w.write(JSON_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await w.drain()

    bad = ScriptedSite(huge)
    try:
        d = start_daemon(two_sites(tmp_path / "inv", bad.url, good.url), "--region", "metro")
        try:
            r = d.post(chat(), timeout=30)
            assert r.status_code == 200 and r.headers["x-grid-site"] == "bad", r.text
            assert r.content == body
        finally:
            d.stop()
    finally:
        bad.close()


def test_a_stream_the_site_labels_json_is_relayed_as_it_comes(tmp_path: Path, good: TimedUpstream) -> None:
    async def slow_json_stream(w: asyncio.StreamWriter) -> None:
        w.write(JSON_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        event = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        w.write(b"%x\r\n%s\r\n" % (len(event), event))
        await w.drain()
        await asyncio.sleep(1.5)
        w.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        await w.drain()

    bad = ScriptedSite(slow_json_stream)
    try:
        d = start_daemon(two_sites(tmp_path / "inv", bad.url, good.url), "--region", "metro")
        try:
            start = time.monotonic()
            with httpx.stream(
                "POST", d.url + "/v1/chat/completions", json=chat(stream=True), timeout=30
            ) as r:
                assert r.status_code == 200 and r.headers["x-grid-site"] == "bad"
                chunks = r.iter_bytes()
                first = next(chunks)
                first_at = time.monotonic() - start
                rest = b"".join(chunks)
            assert first.startswith(b"data: {") and b"[DONE]" in first + rest
            assert first_at < 1.2, first_at  # before the site's second piece: not held whole
        finally:
            d.stop()
    finally:
        bad.close()


def test_a_stream_cut_inside_an_event_ends_with_an_error_event_that_parses(
    tmp_path: Path, good: TimedUpstream
) -> None:
    async def cut_mid_event(w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD)
        whole = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        half = b'data: {"choices":[{"ind'
        for piece in (whole, half):
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await w.drain()
        await asyncio.sleep(0.1)
        _reset(w)

    bad = ScriptedSite(cut_mid_event)
    try:
        d = start_daemon(two_sites(tmp_path / "inv", bad.url, good.url), "--region", "metro")
        try:
            r = d.post(chat(stream=True), timeout=30)
            assert r.status_code == 200 and r.headers["x-grid-site"] == "bad"
            events = [e for e in r.text.split("\n\n") if e.strip()]
            error = json.loads(events[-1].removeprefix("data: "))
            assert error["error"]["type"] == "upstream_cut", r.text  # its own event, not glued to the cut one
        finally:
            d.stop()
    finally:
        bad.close()


def test_the_server_s_own_refusals_carry_the_request_id(tmp_path: Path, good: TimedUpstream) -> None:
    d = start_daemon(
        two_sites(tmp_path / "inv", good.url, good.url), "--region", "metro", "--max-body", "1024"
    )
    try:
        r = httpx.post(
            d.url + "/v1/chat/completions", content=b"x" * 5000, headers={"x-request-id": "big-1"}, timeout=10
        )
        assert r.status_code == 413 and r.headers["x-request-id"] == "big-1"
        assert r.json()["error"]["code"] == "body_too_large"
    finally:
        d.stop()


def test_a_stderr_nobody_reads_blocks_no_request_and_no_shutdown(tmp_path: Path, good: TimedUpstream) -> None:
    """The access log and the daemon's own lines go to stderr; its reader stalls (a full pipe):
    requests, a reload's messages and SIGTERM all go on."""
    read, write = os.pipe()
    port = free_port()
    inv = two_sites(tmp_path / "inv", good.url, good.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridctl", "-i", str(inv), "daemon", "run", "--region", "metro"]
        + ["--listen", f"127.0.0.1:{port}", "--probe-interval", "0.5"],
        stdout=subprocess.DEVNULL,
        stderr=write,
        env=cli_env(),
        cwd=REPO,
    )
    os.close(write)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        with httpx.Client(timeout=10) as c:
            for _ in range(400):  # about 100 KB of access log: over the 64 KiB pipe
                assert c.post(url + "/v1/chat/completions", json=chat()).status_code == 200
            for _ in range(3):  # a reload says so on stderr: must not block either
                proc.send_signal(signal.SIGHUP)
                time.sleep(0.3)
                assert c.get(url + "/healthz", timeout=3).status_code == 200
            text = c.get(url + "/metrics").text
        # (400 lines fit the writer's queue: the old daemon blocked at the pipe's 64 KiB, about 250)
        assert re.search(r"gridctl_access_log_dropped_lines_total \d+", text), text
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - start < 8  # at most its 2 s wait for the reader, twice
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(read)
