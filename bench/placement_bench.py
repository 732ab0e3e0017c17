"""Benchmark the placement engine and routing-table rendering (issue 4 targets).

``decision``
    One placement decision over 64 candidate sites (all serving the model, all
    allowed, round trips within the SLO; mixed GPUs, live load, site queues,
    calibration and prefix-cache hits on every site), in process:
    ``Planner.order`` (the decision: every site's latency predicted, the
    cheapest feasible first, the full failover order), the same with a session
    key, and ``Planner.explain`` (every site with its prediction's parts). Side
    by side, the floor: Python's ``min()`` over 64 precomputed (penalty, rtt,
    name) tuples, i.e. the cost of looking at 64 items at all. Target (issue
    11): the decision, prediction included, <= 20x the floor in the same run.
``render``
    ``build_routing_table`` + ``render_routing`` for 10,000 sites x 100 client
    regions (one model), for json and nginx, in process, against the floor of
    one great-circle distance per (site, region) pair, the work no table can
    skip. Target: < 10 s.

Run from the repository root::

    python bench/placement_bench.py [--write-readme]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inventory_bench import write_readme  # noqa: E402

from gridctl.core.inventory.jurisdictions import expand_jurisdictions  # noqa: E402
from gridctl.core.inventory.model import (  # noqa: E402
    Gpus,
    Grid,
    Inventory,
    Location,
    ModelServing,
    Node,
    Region,
    Site,
)
from gridctl.core.placement.decision import Request  # noqa: E402
from gridctl.core.placement.engine import Planner  # noqa: E402
from gridctl.core.placement.latency import haversine_km, radians_of  # noqa: E402
from gridctl.core.placement.predict import Shape  # noqa: E402
from gridctl.core.placement.signals import SiteSignals  # noqa: E402
from gridctl.core.placement.table import build_routing_table  # noqa: E402

DECISION_TARGET_X_FLOOR = 20.0
GPUS = ["H100", "L40S", "L4", "RTX PRO 6000", "A100", "H200"]
RENDER_TARGET_S = 10.0
KINDS = ["regional-pop", "central-office", "edge", "cloud"]


def make_inventory(n_sites: int, n_regions: int, seed: int = 1) -> Inventory:
    rnd = random.Random(seed)
    sites = tuple(
        Site(
            name=f"s{i:05d}",
            kind=KINDS[i % 4],
            region="r000",
            jurisdiction="US",
            location=Location(rnd.uniform(30, 45), rnd.uniform(-120, -75)),
            endpoint=f"http://10.{i // 65536}.{(i // 256) % 256}.{i % 256}:8000",
            cost_per_gpu_hour=rnd.uniform(0.5, 4.5),
            models=(ModelServing("llama-3.1-8b-instruct", rnd.randint(8, 256), 1),),
            nodes=(
                Node(
                    "n1", f"s{i:05d}", "10.0.0.1", 22, None, None, Gpus(GPUS[i % 6], rnd.choice([1, 2, 4, 8]))
                ),
            ),
        )
        for i in range(n_sites)
    )
    regions = tuple(
        Region(
            f"r{j:03d}",
            Location(rnd.uniform(30, 45), rnd.uniform(-120, -75)),
            "US",
            ("US",),
            expand_jurisdictions(["US"]),
        )
        for j in range(n_regions)
    )
    return Inventory(Path("."), Grid("bench", slo_ms=10_000.0, regions=regions), sites)


def per_call_us(fn, number: int, repeat: int) -> list[float]:
    return [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]


def bench_decision(repeat: int) -> tuple[str, list[tuple[str, list[float]]]]:
    inv = make_inventory(64, 1)
    planner = Planner(inv)
    request = Request("r000", "llama-3.1-8b-instruct")
    shape = Shape(430, 20)
    rnd = random.Random(2)
    live = {
        s.name: SiteSignals(
            health="ok",
            in_flight=rnd.randint(0, 7),
            running=rnd.randint(0, 9),
            waiting=rnd.randint(0, 2),
            first_factor=rnd.uniform(0.7, 1.3),
            decode_factor=rnd.uniform(0.7, 1.3),
        )
        for s in inv.sites
    }
    cached = {s.name: rnd.randint(0, 400) for s in inv.sites[::3]}
    assert len(planner.order(request, shape, live, cached).sites) == 64, "all 64 sites must be candidates"
    planner.static_candidates(
        "r000", "llama-3.1-8b-instruct"
    )  # precomputed once per inventory, as in the daemon
    floor_items = [(rnd.random(), rnd.random(), s.name) for s in inv.sites]
    rows = [
        ("floor: min() over 64 tuples", per_call_us(lambda: min(floor_items), 20_000, repeat)),
        (
            "Planner.order (the decision)",
            per_call_us(lambda: planner.order(request, shape, live, cached), 5_000, repeat),
        ),
        (
            "Planner.order with a session key",
            per_call_us(lambda: planner.order(request, shape, live, cached, "call-7"), 5_000, repeat),
        ),
        (
            "Planner.explain (every part)",
            per_call_us(lambda: planner.explain(request, shape, live, cached), 500, repeat),
        ),
    ]
    return "decision", rows


def bench_render(n_sites: int, n_regions: int, repeat: int) -> list[tuple[str, list[float]]]:
    from gridctl.placement.render import render_routing
    from gridctl.templating import builtin_templates_dir

    inv = make_inventory(n_sites, n_regions)
    out: dict[str, list[float]] = {"json": [], "nginx": [], "floor": []}
    for _ in range(repeat):
        for fmt in ("json", "nginx"):
            start = time.perf_counter()
            table = build_routing_table(Planner(inv))
            files = render_routing(table, fmt, builtin_templates_dir())
            out[fmt].append(time.perf_counter() - start)
            assert sum(len(t) for t in files.values()) > 0
        start = time.perf_counter()
        here = [radians_of(r.location) for r in inv.grid.regions]
        there = [radians_of(s.location) for s in inv.sites]
        for h in here:
            for t in there:
                haversine_km(h, t)
        out["floor"].append(time.perf_counter() - start)
    return [
        (f"floor: one haversine per (site, region) pair ({n_sites * n_regions:,})", out["floor"]),
        (f"table + render json ({n_sites} sites x {n_regions} regions)", out["json"]),
        (f"table + render nginx ({n_sites} sites x {n_regions} regions)", out["nginx"]),
    ]


def describe_machine() -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{when}: {os.cpu_count()} CPUs, CPython {platform.python_version()}, gridctl at {commit.strip()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--sites", type=int, default=10_000)
    p.add_argument("--regions", type=int, default=100)
    p.add_argument("--render-repeat", type=int, default=3)
    p.add_argument("--write-readme", action="store_true")
    args = p.parse_args(argv)
    machine = describe_machine()
    print(machine)
    _, rows = bench_decision(args.repeat)
    floor = statistics.median(rows[0][1])
    lines = ["| what | median us | min | max | vs floor |", "|---|---:|---:|---:|---:|"]
    print("\ndecision over 64 candidate sites (per call)")
    for label, times in rows:
        med = statistics.median(times)
        print(
            f"  {label:34s} {med:8.2f} us  (min {min(times):.2f}, max {max(times):.2f})  {med / floor:5.1f}x floor"
        )
        lines.append(f"| {label} | {med:.2f} | {min(times):.2f} | {max(times):.2f} | {med / floor:.1f}x |")
    decide = statistics.median(rows[1][1])
    ratio = decide / floor
    verdict = "PASS" if ratio <= DECISION_TARGET_X_FLOOR else "FAIL"
    render_rows = bench_render(args.sites, args.regions, args.render_repeat)
    rfloor = statistics.median(render_rows[0][1])
    rlines = ["| what | median s | min | max | vs floor |", "|---|---:|---:|---:|---:|"]
    print(f"\nrouting tables, {args.sites} sites x {args.regions} regions")
    for label, times in render_rows:
        med = statistics.median(times)
        print(
            f"  {label:58s} {med:7.2f} s  (min {min(times):.2f}, max {max(times):.2f})  {med / rfloor:6.1f}x floor"
        )
        rlines.append(f"| {label} | {med:.2f} | {min(times):.2f} | {max(times):.2f} | {med / rfloor:.1f}x |")
    worst = max(statistics.median(t) for _, t in render_rows[1:])
    rverdict = "PASS" if worst < RENDER_TARGET_S else "FAIL"
    print(
        f"\ntargets: decision <= {DECISION_TARGET_X_FLOOR:g}x floor ({ratio:.1f}x): {verdict}; "
        f"render < {RENDER_TARGET_S:g} s: {rverdict}"
    )
    if args.write_readme:
        cmd = "python bench/placement_bench.py --write-readme"
        body = (
            "## Placement: one decision over 64 candidate sites\n\n"
            f"{machine}. Command: `{cmd}`. In process, `timeit`, median of {args.repeat} repeats; "
            "64 sites all eligible (mixed GPUs), live load, site queues, calibration on every site, "
            "prefix-cache hits on a third; a 430-token prompt and a 20-token answer; candidates "
            "precomputed per inventory (as the daemon holds them).\n\n" + "\n".join(lines) + "\n\n"
            f"Target: the decision, every site's latency predicted, <= {DECISION_TARGET_X_FLOOR:g}x the floor "
            f"in the same run: **{verdict}** ({decide:.1f} us, {ratio:.1f}x).\n\n"
        )
        rbody = (
            f"## Routing tables: {args.sites} sites x {args.regions} regions\n\n"
            f"{machine}. Command: `{cmd}`. In process, median of {args.render_repeat} runs; one model, every "
            "site serving it, 2 primaries + 2 backups per route; each run builds the planner and table from "
            "scratch and renders.\n\n" + "\n".join(rlines) + "\n\n"
            f"Target < {RENDER_TARGET_S:g} s: **{rverdict}** (slowest format {worst:.2f} s).\n\n"
        )
        write_readme({"placement-decision": body, "placement-render": rbody})
        print("wrote bench/README.md: placement-decision, placement-render")
    return 0


if __name__ == "__main__":
    sys.exit(main())
