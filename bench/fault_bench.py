"""The daemon under faults and attacks, counted (issue 13, "Tests and figures").

    python bench/fault_bench.py                  # print the two tables
    python bench/fault_bench.py --write-readme   # and rewrite its section of bench/README.md
    python bench/fault_bench.py --requests 24 --duration 2   # a quick run

The same runs as tests/daemon/test_fault_matrix.py (tests/daemon/faults.py), larger:

1. {503, drop, hang, slow, killed} x {streaming, not}: the real daemon (`gridctl daemon run`),
   a broken site tried first and a healthy one, each in its own process; ``--requests`` per
   cell, ``--concurrency`` at a time. Counted at the client, in the access log and at the sites.
2. Hostile clients and sites, each against a fresh daemon: the daemon's RSS (VmRSS sampled
   every 20 ms, VmHWM at the end) and a well-behaved client's latency (one small request after
   another on its keep-alive connection) before and during the attack; a second well-behaved
   client opens a new connection per request.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from inventory_bench import machine, write_readme  # noqa: E402

from tests.daemon.faults import ATTACKS, FAULTS, KILLED_TIMING, SLOW_MS, Attack, Cell, run_attack, run_cell  # noqa: E402

SECTION = "daemon-faults"


def _ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def _counts(c: object) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(c.items(), key=lambda kv: -kv[1])) or "–"  # type: ignore[attr-defined]


def matrix_table(cells: list[Cell]) -> list[str]:
    lines = [
        "| fault | mode | sent | answered (2xx) | by the broken site | failed over | straight to the healthy"
        " site | cut after the first byte (SSE error event) | errors | lost | duplicated | wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c.fault} | {c.mode} | {c.sent} | {c.answered} | {c.via_broken} | {c.failed_over} | {c.skipped} "
            f"| {c.cut} | {c.errors + c.broken} | {c.lost} | {c.duplicated} | {c.wall_s:.1f} s |"
        )
    return lines


def attack_table(attacks: list[Attack]) -> list[str]:
    lines = [
        "| attack | daemon RSS before / peak / after (VmHWM), MiB | keep-alive client p50 / p99, baseline"
        " | during | its errors | new-connection client during | what the attacker saw | the daemon counted |",
        "|---|---|---|---|---:|---|---|---|",
    ]
    for a in attacks:
        b, d = a.baseline, a.during
        lines.append(
            f"| {a.attack} | {_mib(a.rss_before_kib)} / {_mib(a.rss_peak_kib)} / {_mib(a.rss_after_kib)} "
            f"({_mib(a.hwm_kib)}) | {_ms(b.pct(50))} / {_ms(b.pct(99))} ms (n={b.ok}) "
            f"| {_ms(d.pct(50))} / {_ms(d.pct(99))} ms (n={d.ok}) | {d.not_ok} | {_counts(a.fresh.statuses)} "
            f"| {_counts(a.attacker)} | {_counts(a.daemon_counted)} |"
        )
    return lines


def report(cells: list[Cell], attacks: list[Attack], args: argparse.Namespace, command: str) -> str:
    env = machine()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lost = sum(c.lost for c in cells)
    dup = sum(c.duplicated for c in cells)
    broken = sum(c.broken + c.errors for c in cells)
    cut = sum(c.cut for c in cells)
    lines = [
        "## Daemon under faults and attacks: counted (issue 13, tests and figures)",
        "",
        f"- date: {env['date']}",
        f"- machine: {env['nproc']} CPUs ({env['cpu']}), {env['os']}, {env['python']}, {env['gridctl']}; "
        f"load average at the end: {load} (shared machine)",
        f"- source: {env['tree']}",
        f"- command: `{command}` (from the repository root; the same runs, smaller and asserted, are "
        "tests/daemon/test_fault_matrix.py; both use tests/daemon/faults.py)",
        "- what: the real daemon (`gridctl daemon run --region metro --probe-interval 0.5 --calibration-probe 0`),"
        " a fresh one per row, and sites each in its own process (tests/daemon/fault_site.py). Matrix: site `bad`"
        " (cheaper, so tried first) broken, site `good` healthy (5 ms to the first token, 8 tokens 1 ms apart);"
        f" {args.requests} chat requests per cell, {args.concurrency} at a time, each with its own"
        f" `x-request-id`. Faults: `503` (an error answer), `drop` (the request read, the connection closed"
        f" without a byte), `hang` (read, never answered: the daemon's deadline, here its 2 s floor), `slow`"
        f" (the first token after {SLOW_MS} ms, inside that deadline), `killed` (the site answering, "
        f"`{' '.join(KILLED_TIMING)}`, SIGKILLed once two requests are in flight at it, a stream among them"
        " past its first token).",
        "- counted: answered = 2xx and whole (a stream up to `data: [DONE]`); by the broken site / failed"
        " over / straight to the healthy site from the access log's `site` and `sites_tried` (straight:"
        " the broken site not tried, its breaker open or its probe failed); cut = a 2xx stream that ends with"
        " the daemon's SSE error event (`upstream_cut`); errors = non-2xx, or 2xx but incomplete without an"
        " error event; lost = no HTTP answer at all; duplicated = request ids that more than one site (or one"
        " site twice) answered whole, as the sites recorded them.",
        "",
        "### Faults x {streaming, not}",
        "",
        *matrix_table(cells),
        "",
        f"Over all cells: {sum(c.sent for c in cells)} requests, {lost} lost, {dup} duplicated, {broken} errors;"
        f" {cut} stream{'' if cut == 1 else 's'} cut after the first byte, each ended with an SSE error event.",
        "",
        "### Hostile clients and sites",
        "",
        f"Each attack runs {args.duration:g} s against a fresh daemon, after {args.baseline:g} s of baseline"
        " (and a 0.5 s warm-up not counted). Well-behaved: a client sending one non-streamed 8-token request"
        " to `good` after another, 10 ms apart, over one keep-alive connection opened before the attack (its"
        " p50/p99 before and during); another opening a new connection for each (its statuses during)."
        " Attacks: slowloris (200 connections each sending a request head 1 byte a second;"
        " `--client-head-timeout 1`), non-reader (32 clients asking for a stream from a site"
        " that sends 64 KiB events as fast as it can, with a 4 KiB receive buffer and never reading, each"
        " replaced after 1.5 s; `--send-timeout 1`), fd exhaustion (the daemon under a file limit of 1,024,"
        " soft and hard, as `ulimit -n 1024`; 1,100 idle connections opened), and three hostile sites serving"
        " a model of their own, asked by two clients in a loop: huge body (`Content-Length` 1.5 GB;"
        " `--max-answer 1048576`), 1xx flood (up to 100,000 `103 Early Hints` heads), endless trailers (a"
        " chunked answer whose last chunk is followed by trailer lines without end).",
        "",
        *attack_table(attacks),
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=60, help="requests per matrix cell")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=12.0, help="seconds of each attack")
    p.add_argument("--baseline", type=float, default=3.0, help="seconds of baseline before each attack")
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--write-readme", action="store_true")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fault-bench-"))
    try:
        cells = []
        for fault in [f for f in args.faults.split(",") if f]:
            for streaming in (False, True):
                cell = run_cell(
                    tmp / f"{fault}-{streaming}", fault, streaming, args.requests, args.concurrency
                )
                print(f"{fault} {cell.mode}: {matrix_table([cell])[-1]}", file=sys.stderr)
                cells.append(cell)
        attacks = []
        for attack in [a for a in args.attacks.split(",") if a]:
            result = run_attack(tmp / attack, attack, args.duration, args.baseline)
            print(attack_table([result])[-1], file=sys.stderr)
            attacks.append(result)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    command = "python bench/fault_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(cells, attacks, args, command.strip())
    print(text)
    if args.write_readme:
        write_readme({SECTION: text})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    sys.exit(main())
