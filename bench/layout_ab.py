"""Issue 16 moved and split most of the code without meaning to change what it costs: this
runs the benchmarks that time that code in the current tree and in a baseline commit's (a
`git worktree`, as bench/daemon_bench.py's --baseline), interleaved round by round, each tree
with its own copy of the benchmark, and prints the ratios. Target: no regression beyond 10%.

    python bench/layout_ab.py                              # current vs e6fd95b, 2 rounds
    python bench/layout_ab.py --baseline HEAD~5 --rounds 3
    python bench/layout_ab.py --write-readme               # and rewrite its section

What it runs in each tree, and reads from its output (the median each prints):
- `bench/placement_bench.py --sites 2000 --regions 20 --render-repeat 1`: Planner.order, and
  a routing table built and rendered for nginx;
- `bench/inventory_bench.py --bench validate --sites 3000 --runs 3 --pure-subset 100`: the
  whole `inventory validate` command on 3,000 generated sites;
- `bench/inventory_bench.py --bench startup --startup-runs 9`: `site ls -o json`'s start-up.

The daemon's request path has its own side-by-side benchmarks (bench/daemon_bench.py and
bench/daemon_instructions.py, `--baseline`), as the simulator has bench/sim_bench.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "daemon"))
sys.path.insert(0, str(HERE))
from baseline import baseline_tree  # noqa: E402
from inventory_bench import write_readme  # noqa: E402

TARGET = 1.10
RUN_TIMEOUT_S = 900.0


def _ms(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# (what, the benchmark's arguments, how to read its median from its stdout, in ms)
Reader = Callable[[str], float]


def _after(label: str) -> Reader:
    pattern = re.compile(re.escape(label) + r"\s+([\d.]+ (?:us|ms|s))\b")

    def read(out: str) -> float:
        found = pattern.search(out)
        if found is None:
            raise SystemExit(f"layout_ab: no '{label}' in the benchmark's output:\n{out[-2000:]}")
        return _ms(found.group(1))

    return read


BENCHES: list[tuple[str, list[str], dict[str, Reader]]] = [
    (
        "placement",
        ["bench/placement_bench.py", "--sites", "2000", "--regions", "20", "--render-repeat", "1"],
        {
            "Planner.order, 64 sites (us)": lambda out: _after("Planner.order (the decision)")(out) * 1000,
            "routing table + render nginx, 2,000 sites x 20 regions (ms)": _after(
                "table + render nginx (2000 sites x 20 regions)"
            ),
        },
    ),
    (
        "validate",
        [
            "bench/inventory_bench.py",
            "--bench",
            "validate",
            "--sites",
            "3000",
            "--runs",
            "3",
            "--pure-subset",
            "100",
        ],
        {"inventory validate, 3,000 sites (ms)": _after("gridctl -i DIR inventory validate (3000 sites)")},
    ),
    (
        "startup",
        ["bench/inventory_bench.py", "--bench", "startup", "--startup-runs", "9"],
        {"site ls -o json, start-up (ms)": _after("python -m gridctl -i inventory site ls -o json")},
    ),
]


def run_bench(tree: Path, argv: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(
        [sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    if proc.returncode != 0:
        raise SystemExit(f"layout_ab: {' '.join(argv)} in {tree} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="e6fd95b", help="the commit to compare with (default e6fd95b)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    figures: dict[str, dict[str, list[float]]] = {}
    with baseline_tree(REPO, args.baseline) as base:
        trees = {"current": REPO, "baseline": base.tree}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for _, argv, readers in BENCHES:
                for who in order:
                    print(
                        f"round {r + 1}/{args.rounds}: {who}: {' '.join(argv)}", file=sys.stderr, flush=True
                    )
                    out = run_bench(trees[who], argv)
                    for what, read in readers.items():
                        figures.setdefault(what, {}).setdefault(who, []).append(read(out))
        head = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h"], capture_output=True, text=True
        ).stdout.strip()
        lines = [
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {os.cpu_count()} CPUs, CPython "
            f"{platform.python_version()}, gridctl at {head} against {base.short} ({base.subject!r}), "
            f"each tree running its own copy of each benchmark, {args.rounds} rounds interleaved (the order "
            f"alternating). Command: `python bench/layout_ab.py --baseline {args.baseline} --rounds {args.rounds} "
            "--write-readme`. Each figure is the median over the rounds of the median each run printed.",
            "",
            f"| what | current | baseline {base.short} | ratio |",
            "|---|---:|---:|---:|",
        ]
        worst = 0.0
        for what, by in figures.items():
            cur, old = statistics.median(by["current"]), statistics.median(by["baseline"])
            ratio = cur / old
            worst = max(worst, ratio)
            lines.append(f"| {what} | {cur:.1f} | {old:.1f} | {ratio:.2f}x |")
        verdict = "PASS" if worst <= TARGET else "FAIL"
        lines += [
            "",
            f"Target: no figure more than 10% above the baseline's: **{verdict}** (worst {worst:.2f}x).",
        ]
    print("\n".join(lines))
    if args.write_readme:
        title = "## Issue 16's layout: the benchmarks of the moved code against the commit before it"
        write_readme({"layout-ab": title + "\n\n" + "\n".join(lines) + "\n\n"})
        print("wrote bench/README.md: layout-ab")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
