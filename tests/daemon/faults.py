"""The daemon under faults, counted (issue 13, "Tests and figures"): shared by
tests/daemon/test_fault_matrix.py (small counts, asserted) and bench/fault_bench.py (larger
counts, printed with the latencies).

Every run is the real daemon (``gridctl daemon run``, a subprocess) and sites in their own
processes (tests/daemon/fault_site.py), so a site can be killed and none of them shares this
process's interpreter with the clients.

1. :func:`run_cell`: a broken site ``bad`` (cheaper: tried first) and a healthy ``good``;
   ``n`` requests, ``concurrency`` at a time, each with its own x-request-id, streamed or not.
   Counted at the clients (status, a whole answer, an SSE error event), in the daemon's access
   log (the site that answered, the sites tried) and at the sites (which request ids each one
   answered whole).
2. :func:`run_attack`: a hostile client or site while a well-behaved client sends one small
   request after another over its keep-alive connection (and another opens a new connection
   for each request); the daemon's RSS (VmRSS, sampled; VmHWM) throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import signal
import socket
import statistics
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.daemon.conftest import M8, DaemonProc, chat, start_daemon, two_sites, write_inventory
from tests.daemon.fault_site import SiteProc, start_site

FAULTS = ("503", "drop", "hang", "slow", "killed")
ATTACKS = ("slowloris", "non-reader", "fd-exhaustion", "huge-body", "1xx-flood", "endless-trailers")
ATTACK_MODEL = "attack-model"  # served only by the hostile site of an attack
DAEMON_ARGS = ("--region", "metro", "--calibration-probe", "0")
# killed: the site answers slowly enough that requests are in flight at it when it is killed
KILLED_TIMING = ("--first-ms", "100", "--gap-ms", "40", "--tokens", "10")
SLOW_MS = 400  # slow: the first token after this long, well inside the daemon's 2 s floor


# --------------------------------------------------------------------------- the fault matrix


@dataclass
class Outcome:
    rid: str
    kind: str  # answered | cut | error | broken | lost
    status: int | None = None
    site: str | None = None  # x-grid-site


@dataclass
class Cell:
    fault: str
    streaming: bool
    sent: int = 0
    answered: int = 0  # 2xx and whole (a stream: up to data: [DONE])
    via_broken: int = 0  # of which answered by the broken site itself (slow)
    failed_over: int = 0  # answered by the healthy site after the broken one was tried
    skipped: int = 0  # answered by the healthy site, the broken one not tried (breaker, probe)
    cut: int = 0  # a stream cut after its first byte, ended with an SSE error event
    errors: int = 0  # an answer that is not 2xx
    broken: int = 0  # 2xx but incomplete, with no error event: must be 0
    lost: int = 0  # no answer at all: must be 0 while a healthy site exists
    duplicated: int = 0  # request ids answered whole by two sites (or twice): must be 0
    statuses: Counter[int] = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def mode(self) -> str:
        return "stream" if self.streaming else "plain"


def classify(rid: str, status: int, headers: httpx.Headers, body: bytes, streaming: bool) -> Outcome:
    site = headers.get("x-grid-site")
    if not 200 <= status < 300:
        return Outcome(rid, "error", status, site)
    if streaming:
        if b"data: [DONE]" in body:
            return Outcome(rid, "answered", status, site)
        if b'"upstream_cut"' in body:
            return Outcome(rid, "cut", status, site)
        return Outcome(rid, "broken", status, site)
    try:
        whole = bool(json.loads(body).get("choices"))
    except ValueError:
        whole = False
    return Outcome(rid, "answered" if whole else "broken", status, site)


async def send_requests(
    url: str, n: int, concurrency: int, streaming: bool, prefix: str = "fm"
) -> list[Outcome]:
    """``n`` chat requests, ``concurrency`` at a time, each with x-request-id ``prefix-i``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(i: int) -> Outcome:
            rid = f"{prefix}-{i:04d}"
            headers = {"x-request-id": rid}
            body = chat(f"request {i}", stream=streaming)
            async with sem:
                try:
                    async with client.stream(
                        "POST", url + "/v1/chat/completions", json=body, headers=headers
                    ) as r:
                        got = b"".join([piece async for piece in r.aiter_raw()])
                        return classify(rid, r.status_code, r.headers, got, streaming)
                except httpx.HTTPError:
                    return Outcome(rid, "lost")

        return await asyncio.gather(*(one(i) for i in range(n)))


def read_access_log(path: Path) -> dict[str, dict]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                out[entry["request_id"]] = entry
    return out


def count_duplicates(*sites: SiteProc) -> int:
    """Request ids answered whole more than once, over all the sites."""
    done = Counter(rid for s in sites for e, rid in s.events() if e == "done")
    return sum(n - 1 for n in done.values() if n > 1)


def _kill_when_in_flight(bad: SiteProc, streaming: bool) -> Callable[[], Coroutine[Any, Any, None]]:
    """Kill ``bad`` once requests are in flight at it (a stream: one past its first token)."""

    async def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ev = Counter(e for e, _ in bad.events())
            if ev["start"] - ev["done"] >= 2 and (not streaming or ev["first"] - ev["done"] >= 1):
                break
            await asyncio.sleep(0.005)
        bad.proc.send_signal(signal.SIGKILL)

    return watch


def start_daemon_retrying(inventory: Path, *args: str, **popen: Any) -> DaemonProc:
    """:func:`start_daemon`, again (up to 3 tries) when its free port was taken before it bound it:
    these runs open thousands of connections, whose ephemeral ports can land on it."""
    for attempt in range(3):
        try:
            return start_daemon(inventory, *args, **popen)
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def run_cell(root: Path, fault: str, streaming: bool, n: int = 24, concurrency: int = 6) -> Cell:
    """One cell of the matrix: ``fault`` at ``bad``, ``good`` healthy, ``n`` requests."""
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    mode = "ok" if fault == "killed" else fault
    args = KILLED_TIMING if fault == "killed" else ("--slow-ms", str(SLOW_MS))
    bad = start_site(mode, root / "bad.events", *args)
    good = start_site("ok", root / "good.events")
    log = root / "access.log"
    d: DaemonProc | None = None
    try:
        d = start_daemon_retrying(
            two_sites(root / "inv", bad.url, good.url), *DAEMON_ARGS, "--access-log", str(log)
        )

        async def drive() -> list[Outcome]:
            watch: asyncio.Task[None] | None = None
            if fault == "killed":
                watch = asyncio.create_task(_kill_when_in_flight(bad, streaming)())
            outcomes = await send_requests(d.url, n, concurrency, streaming)
            if watch is not None:
                await watch
            return outcomes

        outcomes = asyncio.run(drive())
    finally:
        if d is not None:
            d.stop()
        bad.kill()
        good.kill()
    access = read_access_log(log)
    cell = Cell(fault, streaming, sent=n, wall_s=time.monotonic() - started)
    for o in outcomes:
        cell.statuses[o.status or 0] += 1
        setattr(cell, o.kind, getattr(cell, o.kind) + 1)
        if o.kind != "answered":
            continue
        tried = access.get(o.rid, {}).get("sites_tried", [])
        if o.site == "bad":
            cell.via_broken += 1
        elif "bad" in tried:
            cell.failed_over += 1
        else:
            cell.skipped += 1
    cell.duplicated = count_duplicates(bad, good)
    return cell


# --------------------------------------------------------------------------- hostile clients and sites


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)  # seconds, 200 answers only
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "reset"...

    @property
    def ok(self) -> int:
        return self.statuses["200"]

    @property
    def not_ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "200")

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


@dataclass
class Attack:
    attack: str
    rss_before_kib: int = 0
    rss_peak_kib: int = 0  # the largest VmRSS sampled during the attack
    rss_after_kib: int = 0
    hwm_kib: int = 0  # VmHWM at the end: the process's peak
    baseline: Phase = field(default_factory=Phase)  # the keep-alive client, before the attack
    during: Phase = field(default_factory=Phase)  # ... during it
    fresh: Phase = field(default_factory=Phase)  # a new connection per request, during it
    attacker: Counter[str] = field(default_factory=Counter)  # what the attacker saw
    daemon_counted: Counter[str] = field(default_factory=Counter)  # its refusals, by kind (/metrics)
    site_in_flight: int = 0  # requests the daemon still holds at the hostile site, after it
    after_ok: bool = False  # a request on a new connection once the attack is over: 200
    wall_s: float = 0.0


def proc_status_kib(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def attack_sites(root: Path, hostile_url: str, good_url: str) -> Path:
    """``good`` serves the model well-behaved clients ask for; ``hostile`` only ATTACK_MODEL."""
    sites = {
        "good": {"gpu": "H100", "gpus": 8, "capacity": 64, "cost": 4.0, "rtt_ms": 1.0, "endpoint": good_url},
        "hostile": {
            "gpu": "H100",
            "gpus": 8,
            "capacity": 64,
            "cost": 1.0,
            "rtt_ms": 1.0,
            "endpoint": hostile_url,
        },
    }
    inv = write_inventory(root, sites, slo_ms=500)
    path = inv / "sites" / "hostile.yaml"
    path.write_text(path.read_text().replace(f"- name: {M8}", f"- name: {ATTACK_MODEL}"))
    return inv


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _request_bytes(body: dict, extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: daemon\r\nContent-Type: application/json\r\n"
        + extra.encode()
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )


async def _first_status(reader: asyncio.StreamReader, timeout: float) -> str:
    """The status of the answer the daemon writes on a connection, or what became of it."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        return "open"
    except ConnectionError:
        return "reset"
    if not line:
        return "closed"
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 else "garbage"


class _Attacker:
    """One attack's client side: ``start()`` begins it, ``stop()`` ends it and returns what the
    attacker saw (counted by outcome)."""

    def __init__(self, attack: str, url: str, scale: float) -> None:
        self.attack, self.url, self.scale = attack, url, scale
        self.seen: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.stopping = False

    async def start(self) -> None:
        host, port = _host_port(self.url)
        a = self.attack
        if a == "slowloris":
            for _ in range(int(200 * self.scale)):
                self.tasks.append(asyncio.create_task(self._slowloris(host, port)))
        elif a == "non-reader":
            for _ in range(int(32 * self.scale)):
                self.tasks.append(asyncio.create_task(self._non_reader(host, port)))
        elif a == "fd-exhaustion":
            for _ in range(1100):
                try:
                    self.conns.append(await asyncio.open_connection(host, port))
                except OSError:
                    self.seen["connect failed"] += 1
        else:  # a hostile site: requests for the model only it serves
            for _ in range(2):
                self.tasks.append(asyncio.create_task(self._ask_hostile()))

    async def _slowloris(self, host: str, port: int) -> None:
        head = _request_bytes(chat())
        reader, writer = await asyncio.open_connection(host, port)
        self.writers.append(writer)
        try:
            for i in range(len(head)):
                if self.stopping:
                    self.seen["open at the end"] += 1
                    return
                writer.write(head[i : i + 1])
                await writer.drain()
                got = await _first_status(reader, 1.0)  # 1 byte a second, watching for an answer
                if got != "open":
                    self.seen[f"daemon answered {got}" if got.isdigit() else f"daemon {got}"] += 1
                    return
        except ConnectionError:
            self.seen["daemon reset"] += 1

    async def _ask_hostile(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not self.stopping:
                try:
                    r = await client.post(
                        self.url + "/v1/chat/completions", json={**chat(), "model": ATTACK_MODEL}
                    )
                    code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
                    self.seen[f"{r.status_code} {code}" if code else str(r.status_code)] += 1
                except (httpx.HTTPError, ValueError) as exc:
                    self.seen[type(exc).__name__] += 1

    async def _non_reader(self, host: str, port: int) -> None:
        """A stream asked for and never read, again and again: each connection is left for the
        daemon to abort (its send deadline), then the next one is opened."""
        body = _request_bytes({**chat(stream=True), "model": ATTACK_MODEL})
        loop = asyncio.get_running_loop()
        while not self.stopping:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (host, port))
                await loop.sock_sendall(sock, body)
                self.seen["streams asked for, never read"] += 1
                for _ in range(15):  # 1.5 s: the daemon lets it go after its --send-timeout (1 s)
                    if self.stopping:
                        break
                    await asyncio.sleep(0.1)
            except OSError:
                self.seen["connect failed"] += 1
            finally:
                sock.close()

    async def _fate(self, reader: asyncio.StreamReader) -> str:
        try:
            data = await asyncio.wait_for(reader.read(16), 0.5)
        except TimeoutError:
            return "held open, no answer"
        except ConnectionError:
            return "reset by the daemon"
        if not data:
            return "closed by the daemon"
        return "answered 503 (at its limit)" if data.startswith(b"HTTP/1.1 503") else "answered"

    async def stop(self) -> Counter[str]:
        self.stopping = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.conns:
            fates = await asyncio.gather(*(self._fate(r) for r, _ in self.conns))
            self.seen.update(fates)
        for w in [*self.writers, *(w for _, w in self.conns)]:
            w.close()
        return self.seen


async def _well_behaved(url: str, phase: Callable[[], Phase | None], fresh: bool) -> None:
    """One small request after another (10 ms apart) into ``phase()`` until it returns None;
    over one keep-alive connection, or a new connection for each (``fresh``)."""
    body = chat()
    client = httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=1))
    try:
        while (into := phase()) is not None:
            if fresh:
                await client.aclose()
                client = httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=1))
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/chat/completions", json=body)
                into.statuses[str(r.status_code)] += 1
                if r.status_code == 200:
                    into.latencies.append(time.perf_counter() - t0)
            except httpx.HTTPError as exc:
                into.statuses[type(exc).__name__] += 1
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()


def _attack_daemon_args(attack: str) -> tuple[str, ...]:
    if attack == "slowloris":
        return ("--client-head-timeout", "1")
    if attack == "non-reader":
        return ("--send-timeout", "1")
    if attack == "huge-body":
        return ("--max-answer", str(1 << 20))
    return ()


def run_attack(
    root: Path, attack: str, duration_s: float = 2.0, baseline_s: float = 1.0, scale: float = 1.0
) -> Attack:
    """``attack`` for ``duration_s`` after ``baseline_s`` of the well-behaved clients alone."""
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    hostile_mode = {
        "huge-body": "hostile:huge",
        "1xx-flood": "hostile:1xx-flood",
        "endless-trailers": "hostile:trailers",
        "non-reader": "hostile:firehose",
    }.get(attack, "ok")
    hostile = start_site(hostile_mode, root / "hostile.events")
    good = start_site("ok", root / "good.events")
    popen: dict = {}
    if attack == "fd-exhaustion":  # as a shell's `ulimit -n 1024`: soft and hard, so it cannot be raised

        def low() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

        popen["preexec_fn"] = low
    d: DaemonProc | None = None
    result = Attack(attack)
    try:
        inv = attack_sites(root / "inv", hostile.url, good.url)
        d = start_daemon_retrying(
            inv, *DAEMON_ARGS, "--access-log", "off", *_attack_daemon_args(attack), **popen
        )
        pid = d.proc.pid

        async def drive() -> None:
            current: list[Phase | None] = [Phase()]  # a warm-up, not counted
            fresh_into: list[Phase | None] = [None]
            kept = asyncio.create_task(_well_behaved(d.url, lambda: current[0], fresh=False))
            fresh = asyncio.create_task(_well_behaved(d.url, lambda: fresh_into[0] or Phase(), fresh=True))
            await asyncio.sleep(0.5)
            current[0] = result.baseline
            await asyncio.sleep(baseline_s)
            result.rss_before_kib = proc_status_kib(pid, "VmRSS")
            attacker = _Attacker(attack, d.url, scale)
            current[0], fresh_into[0] = result.during, result.fresh
            await attacker.start()
            end = time.monotonic() + duration_s
            while time.monotonic() < end:
                result.rss_peak_kib = max(result.rss_peak_kib, proc_status_kib(pid, "VmRSS"))
                await asyncio.sleep(0.02)
            current[0] = None
            fresh_into[0] = None
            fresh.cancel()
            result.attacker = await attacker.stop()
            await asyncio.gather(kept, fresh, return_exceptions=True)
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(timeout=10) as client:
                metrics = (await client.get(d.url + "/metrics")).text
                sites = (await client.get(d.url + "/grid/status")).json()["sites"]
            for kind, n in re.findall(
                r'^gridctl_http_parse_errors_total\{kind="(\w+)"\} (\d+)', metrics, re.M
            ):
                result.daemon_counted[kind] = int(n)
            result.site_in_flight = next(s["in_flight"] for s in sites if s["site"] == "hostile")
            result.rss_after_kib = proc_status_kib(pid, "VmRSS")
            result.hwm_kib = proc_status_kib(pid, "VmHWM")
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(20):  # refused connections drain away: the daemon serves again
                    with contextlib.suppress(httpx.HTTPError):
                        if (
                            await client.post(d.url + "/v1/chat/completions", json=chat())
                        ).status_code == 200:
                            result.after_ok = True
                            break
                    await asyncio.sleep(0.25)

        asyncio.run(drive())
    finally:
        if d is not None:
            d.stop()
        hostile.kill()
        good.kill()
    result.wall_s = time.monotonic() - started
    return result
