"""Sim against live (issue 11, item 7): one trace through the real daemon on the lab and through
``gridctl sim --trace``, request by request.

What runs, in one invocation:

1. **The trace.** Generated from the built-in ``voice-burst`` profile (gridctl/sim/traffic.py) for
   the example inventory's US client regions (us-east, us-phl, us-central), at ``--scale`` of its
   rate over ``--duration`` seconds (its 4x burst window starting at 20 s), seed ``--seed``, and
   written as a JSONL trace (gridctl/sim/trace.py). Every site of the example inventory serves
   llama-3.1-8b-instruct, so the lab's sites and ``--sites all`` deploy the same 15 sites.
   Two changes make the trace one that the lab can replay exactly (both are also in the trace file,
   so the sim gets the same requests):

   - **Output length.** A lab site answers exactly ``max_tokens`` tokens: it cannot stop early the
     way a model stops at its end of sequence. So every request's ``output_tokens`` is the
     profile's largest output (48 for voice), and the live client sends ``max_tokens: 48``, as
     the simulator's grid policy does for a profile. The daemon therefore predicts with 48 output
     tokens, which here is also the true length. The trace carries the same ``max_tokens``, so
     ``gridctl sim --trace`` predicts with the shape the daemon sees (a trace without it would be
     predicted with the daemon's other estimator, the model's p90 of completed answers). This
     lab does not test how well
     the output length is estimated; it tests the timing model and its calibration.
   - **Sessions dropped.** A session's next turn would start with the previous answer's text,
     which only the live run knows. The ``session`` key is left out. Each request keeps its
     ``prompt_tokens``, history included, as unique text, and the sim then sees no history either.

2. **Live.** A private copy of the inventory. ``gridctl lab up`` (gridctl.lab.service.start_lab:
   one background process, every site at ``--speed 1``, real time, with hidden speed factors
   seeded ``--seed``, the same seed as the sim's). ``gridctl daemon run`` on the lab's overlay
   inventory in a second process, with its default settings (probes every 5 s, the same period
   as the sim's REFRESH_S; best-effort SLO policy). The lab, the daemon and the client each get a
   process, so no one GIL serves all three. The daemon starts cold: no calibration, as the sim.
   Each trace request is sent at its trace time (asyncio, aiohttp, keep-alive, at most
   ``--connections`` at once) as a streaming chat completion: a system message (the shared
   prefix's text, ``prefix_tokens`` x 4 characters, the same text for every request with that
   prefix id) and a user message of unique text. The rendered prompt is ``prompt_tokens`` x 4
   characters, so the lab's prefix cache and the daemon's prefix index see the sharing the trace
   says. It carries ``x-grid-region`` and ``max_tokens: 48``. The client measures TTFT (the first
   event carrying a token, not the role event that opens the stream) and end to end
   (``[DONE]``) from the moment it sends, and reads ``x-grid-site``, ``x-grid-predicted-ms`` and
   ``x-grid-slo`` (expected-miss). The CPU time that the lab, the
   daemon and the client used during the replay, and how late the client sent (its own event
   loop), are printed so that a saturated process shows.

3. **Sim.** ``gridctl -i COPY sim --trace TRACE --sites all --policy grid --seed SEED -o json``
   as a subprocess (its p99 is the figure compared), and the same plan in process
   (gridctl.sim.compare.plan_run / simulate_plan) for each request's site and end to end. The
   bench checks that both give the same p99. Beside it, in process, the same trace with the
   grid policy's shape taking ``max_tokens`` 48 (the plan given the voice profile, whose largest
   output compare.max_tokens reads): the shape the daemon sees. Where the two sims differ, the
   256-token default of ``sim --trace``'s first requests is the cause (see the README section).

Figures and targets (issue 11, "Live"):

- per request, sim against live end to end: |sim - live| / live, p50 and p99 (no target);
- the share of requests the two sent to the same site (no target);
- live p99 within 15% of the sim's p99 for the same trace: |live - sim| / sim <= 0.15;
- the daemon's prediction, per request after a warm-up of the first 100 (in trace order):
  |x-grid-predicted-ms - observed e2e| / observed, p50 <= 10% and p90 <= 25%;
- requests predicted feasible (predicted <= 0.9 x SLO) that missed the SLO: <= 2% (after the
  warm-up; the figure over every request is printed too).

The sim's own prediction error (its grid policy's prediction at send against its end to end,
the same definitions) is printed beside the daemon's.

Bounded and on loopback only: one trace of a few hundred requests (default 0.035 x the profile's
rate over 45 s: about 400 requests, 6 to 20 a second), at most ``--connections`` at once. Every
wait has a timeout (lab start 60 s, daemon start 30 s, each request 30 s, the replay
duration + 60 s). The default run takes about 1.5 minutes.

Run from the repository root::

    python bench/live_bench.py [--write-readme] [--seed 1] [--scale 0.035] [--duration 45]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inventory_bench import write_readme  # noqa: E402

PY = sys.executable
MODEL = "llama-3.1-8b-instruct"
PROFILE = "voice-burst"
US_REGIONS = ("us-east", "us-phl", "us-central")
WARMUP = 100
SLO_MARGIN = 0.1  # gridctl.core.placement.decision.SLO_MARGIN: feasible = predicted <= SLO x (1 - margin)
TARGET_P99_WITHIN = 0.15
P99_KEY = "live p99 within 15% of `sim --trace`"
TARGET_PRED_P50 = 0.10
TARGET_PRED_P90 = 0.25
TARGET_FEASIBLE_MISSED = 0.02
REQUEST_TIMEOUT_S = 30.0
CHARS_PER_TOKEN = 4
# the first event carrying a token: the role event that opens a chat stream has empty content
FIRST_TOKEN = re.compile(rb'"content":"[^"]')


def describe_machine() -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "gridctl"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    tree = f"gridctl at {commit}" + (" + uncommitted changes" if dirty else "")
    return f"{when}: {os.cpu_count()} CPUs, CPython {platform.python_version()}, {tree}"


# -- the trace ---------------------------------------------------------------------------------------


def build_trace(inv: Any, seed: int, scale: float, duration_s: float) -> list[dict[str, Any]]:
    """The voice-burst requests from the US regions, as trace rows (sorted by time): every output
    the profile's largest, no sessions (the module docstring says why)."""
    import random

    from gridctl.sim.profiles import PROFILES
    from gridctl.sim.traffic import generate_workload

    profile = replace(PROFILES[PROFILE], duration_s=duration_s)
    regions = [r.name for r in inv.grid.regions if r.name in US_REGIONS]
    w = generate_workload(profile, regions, MODEL, random.Random(seed), scale)
    out_tokens = profile.output_tokens.hi
    rows = []
    for i in range(len(w)):
        row: dict[str, Any] = {
            "t": round(w.t[i], 6),
            "region": w.regions[w.region[i]],
            "model": w.models[w.model[i]],
            "prompt_tokens": w.prompt[i],
            "output_tokens": out_tokens,
            "max_tokens": out_tokens,  # what the live client sends; placement predicts with it
        }
        if w.prefix[i] >= 0:
            row["prefix"] = w.prefix[i]
            row["prefix_tokens"] = w.prefix_tokens[i]
        rows.append(row)
    rows.sort(key=lambda r: r["t"])  # stable: the sim sorts the same way (by time, then line)
    return rows


def write_trace(rows: Sequence[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows), encoding="utf-8")


def _filler(seed: str, n: int) -> str:
    """``n`` characters of text that depends on ``seed`` from its first block on."""
    if n <= 0:
        return ""
    unit = f"{seed} lorem ipsum dolor sit amet "
    return (unit * (n // len(unit) + 1))[:n]


def request_body(row: dict[str, Any], i: int, max_tokens: int) -> dict[str, Any]:
    """A streaming chat completion whose rendered prompt (the lab's ``role: content`` lines) is
    ``prompt_tokens`` x 4 characters, starting with the shared prefix's text."""
    total = row["prompt_tokens"] * CHARS_PER_TOKEN
    ptoks = row.get("prefix_tokens", 0)
    system = _filler(f"[prefix {row['prefix']}]", ptoks * CHARS_PER_TOKEN) if "prefix" in row else ""
    overhead = len("system: \n") + len("user: \n") if system else len("user: \n")
    user = _filler(f"[request {i}]", max(1, total - overhead - len(system)))
    messages = [{"role": "user", "content": user}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {"model": row["model"], "stream": True, "max_tokens": max_tokens, "messages": messages}


# -- live: the lab and the daemon, each in its own process -------------------------------------------


@dataclass
class Sent:
    status: int = 0
    site: str = ""
    predicted_ms: float = math.nan
    expected_miss: bool = False
    ttft_ms: float = math.nan
    e2e_ms: float = math.nan
    late_ms: float = 0.0  # how long after its trace time the client sent it
    complete: bool = False  # the stream ended with [DONE]
    error: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get_json(url: str, timeout: float = 5.0) -> Any:
    import httpx

    return httpx.get(url, timeout=timeout, trust_env=False).json()


def _wait_daemon(base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until the daemon answers and has probed every site once."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with code {proc.returncode}")
        try:
            sites = _get_json(f"{base}/grid/status")["sites"]
            if sites and all(s["probe_ok"] is not None for s in sites):
                return
            last = f"{sum(s['probe_ok'] is None for s in sites)} sites not probed yet"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise SystemExit(f"the daemon at {base} was not ready in {timeout_s:g} s: {last}")


async def _send(session: Any, url: str, row: dict[str, Any], body: bytes, t0: float, out: Sent) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    delay = t0 + row["t"] - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    start = loop.time()
    out.late_ms = (start - t0 - row["t"]) * 1000.0
    headers = {"content-type": "application/json", "x-grid-region": row["region"]}
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            out.status = resp.status
            out.site = resp.headers.get("x-grid-site", "")
            pred = resp.headers.get("x-grid-predicted-ms")
            out.predicted_ms = float(pred) if pred else math.nan
            out.expected_miss = resp.headers.get("x-grid-slo", "") == "expected-miss"
            tail = b""
            async for chunk in resp.content.iter_any():
                tail = tail[-32:] + chunk
                if out.ttft_ms != out.ttft_ms and FIRST_TOKEN.search(tail):
                    out.ttft_ms = (loop.time() - start) * 1000.0
                tail = tail[-64:]
            out.e2e_ms = (loop.time() - start) * 1000.0
            out.complete = resp.status == 200 and tail.rstrip().endswith(b"data: [DONE]")
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"


async def _lag_monitor(stop: asyncio.Event, lags: list[float], period_s: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(period_s)
        lags.append((loop.time() - before - period_s) * 1000.0)


async def replay(
    base: str, rows: Sequence[dict[str, Any]], bodies: Sequence[bytes], connections: int
) -> tuple[list[Sent], list[float]]:
    import aiohttp

    url = f"{base}/v1/chat/completions"
    results = [Sent() for _ in rows]
    lags: list[float] = []
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
        stop = asyncio.Event()
        monitor = asyncio.create_task(_lag_monitor(stop, lags))
        t0 = asyncio.get_running_loop().time() + 0.2
        tasks = [
            asyncio.create_task(_send(session, url, r, b, t0, out))
            for r, b, out in zip(rows, bodies, results, strict=True)
        ]
        bound = rows[-1]["t"] + 60.0
        done, pending = await asyncio.wait(tasks, timeout=bound)
        for task in pending:
            task.cancel()
        stop.set()
        await monitor
    for out, task in zip(results, tasks, strict=True):
        if task in pending:
            out.error = "not done within the replay's bound"
    return results, lags


@dataclass
class LiveRun:
    sent: list[Sent]
    lags_ms: list[float]
    cpu: dict[str, float]  # process -> share of one core during the replay
    wall_s: float
    calibration: dict[str, dict[str, Any]]  # site -> the daemon's calibration at the end
    hidden: dict[str, float]  # site -> the lab's true speed factor


def run_live(root: Path, rows: Sequence[dict[str, Any]], seed: int, connections: int) -> LiveRun:
    from gridctl.lab.service import UpOptions, start_lab, stop_lab
    from gridctl.lab.truth import speed_factor

    bodies = [
        json.dumps(request_body(r, i, r["output_tokens"]), separators=(",", ":")).encode()
        for i, r in enumerate(rows)
    ]
    up = start_lab(
        root,
        UpOptions(speed=1.0, hidden_speed=seed, region=US_REGIONS[0]),
        lambda text: print(f"  {text}", file=sys.stderr),
    )
    daemon: subprocess.Popen[bytes] | None = None
    log = root / "daemon.log"
    try:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        argv = [PY, "-m", "gridctl", "-i", str(up.overlay), "daemon", "run", "--listen", f"127.0.0.1:{port}"]
        argv += ["--region", US_REGIONS[0]]
        with open(log, "wb") as fh:
            daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
        _wait_daemon(base, daemon, 30.0)
        print(f"  daemon pid {daemon.pid} at {base}; replaying {len(rows)} requests", file=sys.stderr)
        pids = {"lab": up.pid, "daemon": daemon.pid}
        cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
        self0 = time.process_time()
        wall0 = time.monotonic()
        sent, lags = asyncio.run(replay(base, rows, bodies, connections))
        wall = time.monotonic() - wall0
        cpu = {k: (_cpu_s(p) - cpu0[k]) / wall for k, p in pids.items()}
        cpu["client"] = (time.process_time() - self0) / wall
        status = _get_json(f"{base}/grid/status")
        calibration = {s["site"]: s["models"].get(MODEL, {}).get("calibration", {}) for s in status["sites"]}
    except BaseException:
        if log.exists():
            sys.stderr.write(log.read_text(encoding="utf-8", errors="replace")[-2000:])
        raise
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        stop_lab(root)
    hidden = {name: speed_factor(seed, name) for name in calibration}
    return LiveRun(sent, lags, cpu, wall, calibration, hidden)


# -- the sim -------------------------------------------------------------------------------------------


@dataclass
class SimRun:
    label: str
    site: list[str]  # per request, "" when rejected
    e2e_ms: list[float]
    ttft_ms: list[float]
    predicted_ms: list[float]  # the grid policy's prediction for the chosen site at send


def _sim_outcome(label: str, plan: Any) -> SimRun:
    from gridctl.sim.compare import simulate_plan

    _w, sites, outcomes = simulate_plan(plan)
    out = outcomes[0]
    names = [sites[s].name if s >= 0 else "" for s in out.site]
    pred = out.predicted_ms or [math.nan] * len(names)
    return SimRun(label, names, list(out.e2e_ms), list(out.ttft_ms), list(pred))


def run_sim(root: Path, trace: Path, seed: int) -> tuple[dict[str, Any], list[SimRun]]:
    """``gridctl sim --trace`` (its grid policy's JSON), and in process: the same plan, and the
    same trace with ``max_tokens`` 48 in every request's shape (what the live client sends)."""
    from gridctl.inventory.load import load_inventory
    from gridctl.inventory.state import probe_rtts
    from gridctl.sim.compare import SimOptions, plan_run
    from gridctl.sim.profiles import PROFILES

    argv = [PY, "-m", "gridctl", "-i", str(root), "sim", "--trace", str(trace), "--sites", "all"]
    argv += ["--policy", "grid", "--seed", str(seed), "-o", "json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"gridctl sim failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cli = json.loads(proc.stdout)["policies"][0]
    inv = load_inventory(root)
    opts = SimOptions(trace=trace, policies=("grid",), seed=seed, sites="all", hidden_speed=True)
    plan = plan_run(inv, probe_rtts(inv.root), opts)
    # the same trace, but the grid policy's shape takes max_tokens from a profile (compare.max_tokens):
    # the voice profile's largest output, 48, as the live client sends it
    voice = replace(PROFILES[PROFILE], duration_s=plan.duration_s, slo_ms=plan.slo_ms)
    plan48 = replace(plan, profile=voice)
    return cli, [_sim_outcome("sim --trace", plan), _sim_outcome("sim, max_tokens 48", plan48)]


# -- figures -------------------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile, nearest rank (as gridctl sim reports)."""
    v = sorted(x for x in values if x == x)
    if not v:
        return math.nan
    k = max(0, min(len(v) - 1, math.ceil(p / 100.0 * len(v)) - 1))
    return v[k]


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def noise_floor(p: float) -> float:
    """|sim - live| / live at the p-th percentile when the two differ only by their own per-request
    noise: two independent log-normal draws (sigma NOISE_SIGMA each, gridctl.lab.truth)."""
    from statistics import NormalDist

    from gridctl.lab.truth import NOISE_SIGMA

    q = NormalDist().inv_cdf(0.5 + p / 200.0) * NOISE_SIGMA * math.sqrt(2.0)
    return math.exp(q) - 1.0


@dataclass
class Figures:
    header: list[str]
    rows: list[list[str]]  # what, live, each sim, target
    sites: list[list[str]]
    verdicts: dict[str, bool]
    notes: list[str]


def _prediction(
    pred: Sequence[float], obs: Sequence[float], idx: Sequence[int], slo: float
) -> tuple[float, float, int, int, float]:
    """(error p50, error p90, predicted feasible, of which missed, missed share) over ``idx``."""
    budget = slo * (1.0 - SLO_MARGIN)
    known = [i for i in idx if pred[i] == pred[i] and obs[i] == obs[i] and obs[i] > 0]
    errors = [abs(pred[i] - obs[i]) / obs[i] for i in known]
    feasible = [i for i in known if pred[i] <= budget]
    missed = sum(1 for i in feasible if obs[i] > slo)
    return (
        pct(errors, 50),
        pct(errors, 90),
        len(feasible),
        missed,
        (missed / len(feasible) if feasible else math.nan),
    )


def _pc(x: float) -> str:
    return "-" if x != x else f"{x:.1%}"


def analyze(
    rows: Sequence[dict[str, Any]], live: LiveRun, cli: dict[str, Any], sims: Sequence[SimRun], slo: float
) -> Figures:
    n = len(rows)
    sent = live.sent
    ok = [i for i in range(n) if sent[i].complete]
    live_e2e = [sent[i].e2e_ms if sent[i].complete else math.nan for i in range(n)]
    live_ttft = [sent[i].ttft_ms if sent[i].complete else math.nan for i in range(n)]
    live_pred = [s.predicted_ms for s in sent]
    live_p99 = pct(live_e2e, 99)
    budget = slo * (1.0 - SLO_MARGIN)
    after = [i for i in range(n) if i >= WARMUP]
    cols = [live_e2e] + [s.e2e_ms for s in sims]
    ttfts = [live_ttft] + [s.ttft_ms for s in sims]
    preds = [live_pred] + [s.predicted_ms for s in sims]
    done = [len(ok)] + [sum(1 for x in s.site if x) for s in sims]

    def e2e_row(p: float) -> list[str]:
        return [f"{pct(c, p):.0f} ms" for c in cols]

    p99_off = [abs(live_p99 - pct(s.e2e_ms, 99)) / pct(s.e2e_ms, 99) for s in sims]
    pred = [_prediction(pr, c, after, slo) for pr, c in zip(preds, cols, strict=True)]
    pred_all = [_prediction(pr, c, range(n), slo) for pr, c in zip(preds, cols, strict=True)]
    verdicts = {
        P99_KEY: p99_off[0] <= TARGET_P99_WITHIN,
        "prediction error p50 <= 10%": pred[0][0] <= TARGET_PRED_P50,
        "prediction error p90 <= 25%": pred[0][1] <= TARGET_PRED_P90,
        "predicted feasible that missed <= 2%": pred[0][4] <= TARGET_FEASIBLE_MISSED,
    }
    t: list[list[str]] = []
    t.append(["requests completed (of the trace's)", *[f"{d} of {n}" for d in done], ""])
    t.append(["e2e p50", *e2e_row(50), ""])
    t.append(["e2e p99", *e2e_row(99), ""])
    t.append(
        [
            "live p99 off the sim's p99",
            "",
            *[f"{x:.1%}" for x in p99_off],
            f"<= {TARGET_P99_WITHIN:.0%} (sim --trace): {_ok(verdicts[P99_KEY])}",
        ]
    )
    t.append(["TTFT p50 / p99", *[f"{pct(c, 50):.0f} / {pct(c, 99):.0f} ms" for c in ttfts], ""])
    t.append(["within the SLO", *[_pc(sum(1 for x in c if x <= slo) / n) for c in cols], ""])
    for p in (50, 99):
        errs = []
        for s in sims:
            both = [i for i in ok if s.e2e_ms[i] == s.e2e_ms[i]]
            errs.append(pct([abs(s.e2e_ms[i] - live_e2e[i]) / live_e2e[i] for i in both], p))
        t.append(
            [
                f"per request, \\|sim - live\\| / live, p{p}",
                "",
                *[_pc(e) for e in errs],
                f"noise alone: {noise_floor(p):.1%}",
            ]
        )
    same = []
    for s in sims:
        both = [i for i in ok if s.site[i]]
        k = sum(1 for i in both if s.site[i] == sent[i].site)
        same.append(f"{k / len(both):.1%}" if both else "-")
    t.append(["sent to the same site as live", "", *same, ""])
    tag = f"after the first {WARMUP}"
    t.append(
        [
            f"prediction error p50 ({tag})",
            *[_pc(x[0]) for x in pred],
            f"live <= {TARGET_PRED_P50:.0%}: {_ok(verdicts['prediction error p50 <= 10%'])}",
        ]
    )
    t.append(
        [
            f"prediction error p90 ({tag})",
            *[_pc(x[1]) for x in pred],
            f"live <= {TARGET_PRED_P90:.0%}: {_ok(verdicts['prediction error p90 <= 25%'])}",
        ]
    )
    t.append(
        [
            f"predicted feasible that missed the SLO ({tag})",
            *[f"{_pc(x[4])} ({x[3]} of {x[2]})" for x in pred],
            f"live <= {TARGET_FEASIBLE_MISSED:.0%}: {_ok(verdicts['predicted feasible that missed <= 2%'])}",
        ]
    )
    t.append(
        [
            "predicted feasible that missed the SLO (every request)",
            *[f"{_pc(x[4])} ({x[3]} of {x[2]})" for x in pred_all],
            "",
        ]
    )
    miss = [sum(1 for x in pr if x == x and x > budget) for pr in preds]
    headers = sum(1 for s in sent if s.expected_miss)
    t.append(
        [
            "sent predicted to miss (no site feasible)",
            f"{miss[0]} (x-grid-slo: expected-miss: {headers})",
            *[str(m) for m in miss[1:]],
            "",
        ]
    )
    names = sorted({s.site for s in sent if s.site} | {x for s in sims for x in s.site if x})
    site_rows = []
    for name in names:
        cal = live.calibration.get(name, {})
        site_rows.append(
            [
                name,
                f"{live.hidden.get(name, math.nan):.2f}",
                f"{cal.get('first_factor', math.nan):.2f} / {cal.get('decode_factor', math.nan):.2f} "
                f"({cal.get('samples', 0)})",
                str(sum(1 for s in sent if s.site == name)),
                *[str(sum(1 for x in s.site if x == name)) for s in sims],
            ]
        )
    lags = live.lags_ms
    late = [s.late_ms for s in sent]
    cli_p99 = cli["e2e_ms"]["p99"]
    in_p99 = pct(sims[0].e2e_ms, 99)
    notes = [
        f"`gridctl sim --trace -o json` p99 {cli_p99:.0f} ms; the same plan in process {in_p99:.0f} ms"
        + (" (the same)" if abs(cli_p99 - in_p99) < 0.6 else " (THEY DIFFER)"),
        "CPU used during the replay, share of one core: "
        + ", ".join(f"{k} {v:.0%}" for k, v in live.cpu.items())
        + f" (replay {live.wall_s:.1f} s wall)",
        f"client: sent late by p50 {pct(late, 50):.1f} ms, p99 {pct(late, 99):.1f} ms, "
        f"max {max(late):.1f} ms; "
        f"its event loop's lag p99 {pct(lags, 99):.1f} ms, max {max(lags, default=0.0):.1f} ms",
    ]
    fails = [s.error or f"HTTP {s.status}" for s in sent if not s.complete]
    if fails:
        notes.append(f"failed live requests: {len(fails)}; the first: {fails[0]}")
    header = ["", "live (daemon on the lab)", *[s.label for s in sims], "target"]
    return Figures(header, t, site_rows, verdicts, notes)


SITE_HEADER = ["site", "hidden speed", "daemon's factors first / decode (samples)", "live"]


def write_dump(path: Path, rows: Sequence[dict[str, Any]], live: LiveRun, sims: Sequence[SimRun]) -> None:
    def num(x: float) -> float | None:
        return None if x != x else round(x, 3)

    with open(path, "w", encoding="utf-8") as fh:
        for i, (row, s) in enumerate(zip(rows, live.sent, strict=True)):
            rec: dict[str, Any] = {"i": i, **row}
            rec["live"] = {k: (num(v) if isinstance(v, float) else v) for k, v in vars(s).items()}
            for sim in sims:
                rec[sim.label] = {
                    "site": sim.site[i],
                    "e2e_ms": num(sim.e2e_ms[i]),
                    "ttft_ms": num(sim.ttft_ms[i]),
                    "predicted_ms": num(sim.predicted_ms[i]),
                }
            fh.write(json.dumps(rec) + "\n")


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[k].replace("\\|", "|")) for r in (header, *rows)) for k in range(len(header))]
    out = []
    for r in (header, *rows):
        out.append("  ".join(c.replace("\\|", "|").ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(out)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def print_figures(f: Figures, sims: Sequence[SimRun]) -> None:
    print(_text_table(f.header, f.rows))
    print()
    print(_text_table([*SITE_HEADER, *[s.label for s in sims]], f.sites))
    for note in f.notes:
        print(f"- {note}")


def readme_section(
    f: Figures, machine: str, cmd: str, args: argparse.Namespace, sims: Sequence[SimRun]
) -> str:
    verdict = "; ".join(f"{k}: **{_ok(v)}**" for k, v in f.verdicts.items())
    return (
        "## Sim against live: one trace through the daemon on the lab and through `gridctl sim --trace`\n\n"
        f"{machine}. Command: `{cmd}`: one run; percentiles are nearest-rank over its requests "
        "(the medians are the p50 rows).\n\n"
        f"Trace: the `{PROFILE}` profile from {', '.join(US_REGIONS)} at {args.scale:g}x its rate for "
        f"{args.duration:g} s (seed {args.seed}). Every answer is 48 tokens and the client sends "
        "`max_tokens: 48` (a lab site answers exactly max_tokens). Sessions are dropped; shared "
        "prefixes stay shared text. Live: `gridctl lab up --speed 1 "
        f"--hidden-speed {args.seed}` and `gridctl daemon run` (its defaults), each in its own process, "
        "on a copy of the example inventory (15 sites, all serving llama-3.1-8b-instruct). Each "
        "request is a real streaming chat completion sent at its trace time (at most "
        f"{args.connections} at once) and timed by the client. Sim: "
        f"`gridctl -i COPY sim --trace TRACE --sites all --policy grid --seed {args.seed}` (hidden "
        "speed factors on, the same seed). Beside it is the same trace simulated in process with "
        "`max_tokens` 48 from the profile instead of the trace (a check that nothing else differs). "
        "The trace carries each request's `max_tokens` (48, what the live client sends), so `sim "
        "--trace` predicts with the shape the daemon sees. The script's docstring defines each figure.\n\n"
        + _md_table(f.header, f.rows)
        + "\n\n"
        + _md_table([*SITE_HEADER, *[s.label for s in sims]], f.sites)
        + "\n\n"
        + "".join(f"- {n}\n" for n in f.notes)
        + f"\nTargets (issue 11, live): {verdict}.\n\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="traffic, hidden speed factors and noise (both runs)")
    p.add_argument("--scale", type=float, default=0.035, help="of the profile's rate (default 0.035)")
    p.add_argument("--duration", type=float, default=45.0, help="seconds of trace (default 45)")
    p.add_argument("--connections", type=int, default=64, help="the client's connection bound")
    p.add_argument("--max-requests", type=int, default=2000, help="refuse a bigger trace")
    p.add_argument("--keep-trace", type=Path, help="also copy the trace to this file")
    p.add_argument("--dump", type=Path, help="write every request's live and sim outcome (JSONL) here")
    p.add_argument("--write-readme", action="store_true")
    args = p.parse_args(argv)
    from gridctl.inventory.load import load_inventory

    machine = describe_machine()
    print(machine)
    work = Path(tempfile.mkdtemp(prefix="gridctl-live-bench-"))
    try:
        root = work / "inventory"
        shutil.copytree(REPO / "inventory", root, ignore=shutil.ignore_patterns(".state", ".gridctl.lock"))
        inv = load_inventory(root)
        rows = build_trace(inv, args.seed, args.scale, args.duration)
        if not rows or len(rows) > args.max_requests:
            raise SystemExit(f"the trace has {len(rows)} requests (1..{args.max_requests} allowed)")
        trace = work / "trace.jsonl"
        write_trace(rows, trace)
        if args.keep_trace:
            shutil.copyfile(trace, args.keep_trace)
        print(f"trace: {len(rows)} requests over {rows[-1]['t']:.1f} s from {', '.join(US_REGIONS)}")
        print("sim: gridctl sim --trace ...", file=sys.stderr)
        cli, sims = run_sim(root, trace, args.seed)
        print("live: lab + daemon ...", file=sys.stderr)
        live = run_live(root, rows, args.seed, args.connections)
        figures = analyze(rows, live, cli, sims, float(cli["slo_ms"]))
        if args.dump:
            write_dump(args.dump, rows, live, sims)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_figures(figures, sims)
    verdict = "; ".join(f"{k}: {_ok(v)}" for k, v in figures.verdicts.items())
    print(f"\ntargets: {verdict}")
    if args.write_readme:
        cmd = "python bench/live_bench.py --write-readme"
        defaults = (("seed", args.seed, 1), ("scale", args.scale, 0.035), ("duration", args.duration, 45.0))
        extra = [f"--{k} {v:g}" for k, v, d in defaults if v != d]
        if args.connections != 64:
            extra.append(f"--connections {args.connections}")
        if extra:
            cmd += " " + " ".join(extra)
        write_readme({"live-vs-sim": readme_section(figures, machine, cmd, args, sims)})
        print("wrote bench/README.md: live-vs-sim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
