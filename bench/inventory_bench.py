"""Benchmark gridctl's inventory commands as a user runs them: whole CLI processes.

Two benchmarks, each timed side by side with its floor or peer in one run
(runs interleaved round-robin, after one discarded warm-up run of each), as
wall time of a real process measured with ``time.perf_counter`` around
``subprocess.run``:

``startup``
    ``gridctl -i inventory site ls -o json`` on the example inventory, against
    ``python -c pass`` (interpreter start) and ``python -c "import yaml, json"``.
    Beside it, one Tab completion as bash's script runs it (``COMP_WORDS``,
    ``_GRIDCTL_COMPLETE=complete_bash``): node names, every site file parsed.
    Plus one ``python -X importtime`` run, summarised as the biggest import costs.
``validate``
    ``gridctl -i DIR inventory validate`` on a generated inventory of ``--sites``
    sites, against the same files loaded with ``yaml.load(CSafeLoader)`` in a
    loop (parsing only, no validation), and with PyYAML's pure-Python
    ``SafeLoader`` on a subset, scaled to the whole inventory.

Run from the repository root with the interpreter of the environment where
gridctl is installed::

    python bench/inventory_bench.py                  # both, print a table
    python bench/inventory_bench.py --write-readme   # and rewrite bench/README.md

Speed is measured here, never asserted in tests; targets are reported as
pass/fail, and the script exits 0 either way (non-zero only when a command
under test fails, e.g. the generated inventory does not validate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "bench" / "README.md"
PY = sys.executable

STARTUP_TARGET_S = 0.250  # median, start-up included
VALIDATE_TARGET_S = 2.0  # median, 10,000 sites


# --------------------------------------------------------------------------- timing


@dataclass
class Case:
    """One command to time; ``check`` validates a completed run (raise on failure)."""

    label: str
    argv: list[str]
    check: Callable[[subprocess.CompletedProcess[str]], None] | None = None
    times: list[float] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # stdout of each timed run
    warmup: str = ""  # stdout of the discarded warm-up run
    env: dict[str, str] = field(default_factory=dict)  # set on top of this process's environment

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def shell(self) -> str:
        """The command as a user types it: the environment's python and gridctl by name."""
        names = {PY: "python", str(Path(PY).parent / "gridctl"): "gridctl"}
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*env, shlex.join([names.get(a, a) for a in self.argv])])


def run_once(case: Case) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    env = {**os.environ, **case.env} if case.env else None
    proc = subprocess.run(case.argv, cwd=REPO, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"benchmark command failed (exit {proc.returncode}): {case.shell()}\n" + proc.stderr[-2000:]
        )
    if case.check is not None:
        case.check(proc)
    return elapsed, proc


def time_cases(cases: Sequence[Case], runs: int, progress: str) -> None:
    """One discarded warm-up each, then ``runs`` rounds; each round runs every case once,
    in an order rotated every round, so a noisy stretch hits all of them alike."""
    for case in cases:
        case.warmup = run_once(case)[1].stdout
    tty = sys.stderr.isatty()
    for r in range(runs):
        if tty:
            print(f"\r{progress}: run {r + 1}/{runs}", end="", file=sys.stderr, flush=True)
        k = r % len(cases)
        for case in list(cases[k:]) + list(cases[:k]):
            elapsed, proc = run_once(case)
            case.times.append(elapsed)
            case.outputs.append(proc.stdout)
    if tty:
        print(file=sys.stderr)


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def iqr(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    yaml_info = subprocess.run(
        [
            PY,
            "-c",
            "import yaml; print(yaml.__version__, "
            "'with libyaml' if yaml.__with_libyaml__ else 'WITHOUT libyaml')",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    gridctl_version = subprocess.run(
        [PY, "-m", "gridctl", "--version"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "tree": source_tree(),
        "nproc": str(nproc),
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "pyyaml": yaml_info,
        "gridctl": gridctl_version,
    }


def source_tree() -> str:
    """The commit measured, and which of gridctl's files differed from it."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "not a git checkout"
    status = subprocess.run(
        [*git, "status", "--porcelain", "--", "gridctl"], capture_output=True, text=True
    ).stdout.splitlines()
    dirty = [line[3:] for line in status]
    return f"commit {head.stdout.strip()}" + (
        f" + uncommitted changes in {', '.join(dirty)}" if dirty else ", gridctl/ clean"
    )


# --------------------------------------------------------------------------- startup


def _check_site_ls(proc: subprocess.CompletedProcess[str]) -> None:
    sites = json.loads(proc.stdout)
    if not isinstance(sites, list) or not sites or "name" not in sites[0]:
        raise SystemExit(f"`site ls -o json` printed no site list: {proc.stdout[:200]!r}")


def _check_completion(proc: subprocess.CompletedProcess[str]) -> None:
    if "fra-pop-01-gpu-01" not in proc.stdout.split():
        raise SystemExit(f"completion printed no node names: {proc.stdout[:200]!r}")


# Tab after `gridctl -i inventory node trust `: the costliest completion: every
# site file parsed for node names (bash's protocol; zsh and fish run the same callbacks)
COMPLETION_LINE = "gridctl -i inventory node trust "
COMPLETION_ENV = {
    "COMP_WORDS": COMPLETION_LINE,
    "COMP_CWORD": str(len(COMPLETION_LINE.split())),
    "_GRIDCTL_COMPLETE": "complete_bash",
}


def parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """``-X importtime`` lines -> (depth, self_us, cumulative_us, module), in output order."""
    rows: list[tuple[int, int, int, str]] = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((len(m.group(3)) // 2, int(m.group(1)), int(m.group(2)), m.group(4)))
    return rows


@dataclass
class ImportCosts:
    command: str
    total_us: int
    top: list[tuple[int, str, str]]  # (microseconds, module, how it is counted)


def import_costs(argv: list[str], top: int) -> ImportCosts:
    """The biggest import costs of one run, as disjoint pieces: each non-gridctl module
    tree at the point gridctl (or the command) first imports it counts with its
    cumulative time, each gridctl module with its own (self) time. Modules the bare
    interpreter already imports (``python -c pass``) are the floor, left out."""
    floor = {
        m
        for _, _, _, m in parse_importtime(
            subprocess.run([PY, "-X", "importtime", "-c", "pass"], capture_output=True, text=True).stderr
        )
    }
    proc = subprocess.run([PY, "-X", "importtime", *argv], cwd=REPO, capture_output=True, text=True)
    rows = parse_importtime(proc.stderr)
    # importtime prints a module after its children: walk backwards to know each parent.
    pieces: list[tuple[int, str, str]] = []  # (us, module, how)
    parents: list[str] = []  # stack of ancestors for the current row (by depth)
    for depth, self_us, cum_us, mod in reversed(rows):
        del parents[depth:]
        chain = parents[:depth]
        parents.append(mod)
        if (chain[0] if chain else mod) in floor:
            continue  # an interpreter-start import (site, encodings, ...) or inside one
        if mod == "gridctl" or mod.startswith("gridctl."):
            pieces.append((self_us, mod, "self"))
        elif all(p == "gridctl" or p.startswith("gridctl.") for p in chain):
            by = chain[-1] if chain else "top level (python -m, or lazily at run time)"
            pieces.append((cum_us, mod, f"cumulative, imported by {by}"))
    total = sum(us for us, _, _ in pieces)
    pieces.sort(reverse=True)
    return ImportCosts(shlex.join(["python", "-X", "importtime", *argv]), total, pieces[:top])


@dataclass
class StartupResult:
    floor: Case
    yaml_floor: Case
    gridctl: list[Case]
    sites: int
    imports: ImportCosts


def bench_startup(runs: int) -> StartupResult:
    gridctl_argv = ["-m", "gridctl", "-i", "inventory", "site", "ls", "-o", "json"]
    cases = [
        Case("python -c pass (interpreter start)", [PY, "-c", "pass"]),
        Case('python -c "import yaml, json"', [PY, "-c", "import yaml, json"]),
        Case(
            "gridctl -i inventory site ls -o json (python -m gridctl)",
            [PY, *gridctl_argv],
            _check_site_ls,
        ),
    ]
    script = Path(PY).parent / "gridctl"
    if script.exists():
        cases.append(
            Case(
                "gridctl -i inventory site ls -o json (console script)",
                [str(script), *gridctl_argv[2:]],
                _check_site_ls,
            )
        )
    cases.append(
        Case(
            f"Tab completion of `{COMPLETION_LINE}` (bash protocol)",
            [PY, "-m", "gridctl"],
            _check_completion,
            env=COMPLETION_ENV,
        )
    )
    time_cases(cases, runs, "startup")
    n_sites = len(json.loads(cases[2].warmup))
    return StartupResult(cases[0], cases[1], cases[2:], n_sites, import_costs(gridctl_argv, 5))


# --------------------------------------------------------------------------- validate

REGIONS = [
    # name, (lat, lon), jurisdiction, allowed, metros: (code, lat, lon, country)
    (
        "us-east",
        (40.7128, -74.0060),
        "US",
        ["US"],
        [
            ("nyc", 40.7128, -74.0060, "US"),
            ("nwk", 40.7357, -74.1724, "US"),
            ("phl", 39.9526, -75.1652, "US"),
            ("bos", 42.3601, -71.0589, "US"),
            ("was", 38.9072, -77.0369, "US"),
        ],
    ),
    (
        "us-central",
        (41.8781, -87.6298),
        "US",
        ["US"],
        [
            ("chi", 41.8781, -87.6298, "US"),
            ("dal", 32.7767, -96.7970, "US"),
            ("msp", 44.9778, -93.2650, "US"),
            ("stl", 38.6270, -90.1994, "US"),
        ],
    ),
    (
        "us-west",
        (37.7749, -122.4194),
        "US",
        ["US"],
        [
            ("sfo", 37.7749, -122.4194, "US"),
            ("lax", 34.0522, -118.2437, "US"),
            ("sea", 47.6062, -122.3321, "US"),
            ("den", 39.7392, -104.9903, "US"),
        ],
    ),
    (
        "eu-de",
        (50.1109, 8.6821),
        "DE",
        ["EU"],
        [
            ("fra", 50.1109, 8.6821, "DE"),
            ("muc", 48.1351, 11.5820, "DE"),
            ("ber", 52.5200, 13.4050, "DE"),
            ("ams", 52.3676, 4.9041, "NL"),
            ("vie", 48.2082, 16.3738, "AT"),
        ],
    ),
    (
        "eu-fr",
        (48.8566, 2.3522),
        "FR",
        ["EU"],
        [
            ("par", 48.8566, 2.3522, "FR"),
            ("lyo", 45.7640, 4.8357, "FR"),
            ("mrs", 43.2965, 5.3698, "FR"),
            ("mad", 40.4168, -3.7038, "ES"),
            ("mil", 45.4642, 9.1900, "IT"),
        ],
    ),
]
KINDS = [  # kind, abbreviation, weight, gpu choices, cost range, capacity scale
    ("central-office", "co", 45, ["L40S", "L4", "RTX PRO 6000"], (0.9, 1.6), 96),
    ("edge", "edge", 30, ["L4", "RTX PRO 6000"], (0.6, 1.2), 32),
    ("regional-pop", "pop", 20, ["H100", "H200"], (2.8, 3.8), 256),
    ("cloud", "cloud", 5, ["H100"], (4.0, 5.0), 256),
]
GPU_COUNTS = {"L4": [2, 4], "L40S": [4, 8], "RTX PRO 6000": [2, 4], "H100": [8], "H200": [8]}
MODELS = {
    "small": [
        "llama-3.1-8b-instruct",
        "parakeet-tdt-0.6b-v2",
        "mistral-7b-instruct-v0.3",
        "qwen2.5-7b-instruct",
    ],
    "big": ["llama-3.1-70b-instruct", "llama-3.3-70b-instruct"],
}


def build_grid_yaml(site_names_by_region: dict[str, list[str]], rng: random.Random) -> str:
    out = [
        "# Generated by bench/inventory_bench.py: a large synthetic grid for benchmarks.",
        "name: bench-grid",
        "",
        "defaults:",
        "  ssh:",
        "    user: gridops",
        "    port: 22",
        "    key: ~/.ssh/gridops_ed25519",
        "  slo_ms: 500",
        "  weights:",
        "    latency: 0.6",
        "    cost: 0.25",
        "    headroom: 0.15",
        "",
        "regions:",
    ]
    for name, (lat, lon), code, allowed, _ in REGIONS:
        out += [
            f"  - name: {name}",
            f"    location: {{lat: {lat}, lon: {lon}}}",
            f"    jurisdiction: {code}",
            f"    allowed_jurisdictions: [{', '.join(allowed)}]",
        ]
        measured = site_names_by_region.get(name, [])[:5]
        if measured:
            out.append("    latency_ms:                       # measured RTT from the region's probe")
            out += [f"      {s}: {rng.uniform(0.8, 12.0):.1f}" for s in measured]
        out.append("")
    return "\n".join(out)


def build_site_yaml(i: int, rng: random.Random) -> tuple[str, str, str]:
    """-> (site name, region name, YAML text) for site number ``i``: realistic and valid."""
    region, _, _, _, metros = REGIONS[i % len(REGIONS)]
    metro, mlat, mlon, country = metros[(i // len(REGIONS)) % len(metros)]
    kind, abbr, _, gpu_choices, (clo, chi), cap = rng.choices(KINDS, weights=[k[2] for k in KINDS])[0]
    name = f"{metro}-{abbr}-{i:05d}"
    gpu = rng.choice(gpu_choices)
    models = rng.sample(MODELS["small"], 1) + rng.sample(
        MODELS["big" if gpu in ("H100", "H200") else "small"], 1
    )
    if models[0] == models[1]:
        models[1] = next(m for m in MODELS["small"] if m != models[0])
    lines = [
        f"# {metro.upper()} {kind} {i} (synthetic)",
        f"name: {name}",
        f"kind: {kind}",
        f"region: {region}",
        f"jurisdiction: {country}",
        f"location: {{lat: {mlat + rng.uniform(-0.3, 0.3):.4f}, lon: {mlon + rng.uniform(-0.3, 0.3):.4f}}}",
        f"endpoint: https://{name}.infer.example.net",
        f"api_key_env: GRID_KEY_{name.upper().replace('-', '_')}",
        f"cost_per_gpu_hour: {rng.uniform(clo, chi):.2f}",
        f"drain: {'true' if rng.random() < 0.03 else 'false'}",
        "labels:",
        f"  tier: {'metro' if kind in ('central-office', 'regional-pop') else kind}",
        "  operator: acme",
        f"  metro: {metro}",
        "models:",
    ]
    for model in models:
        lines += [f"  - name: {model}", f"    capacity: {cap * rng.choice([1, 2, 3])}"]
    lines.append("nodes:")
    for j in range(1, rng.randint(1, 3) + 1):
        lines += [f"  - name: {name}-gpu-{j:02d}", f"    host: gpu-{j:02d}.{name}.grid.example.net"]
        if rng.random() < 0.1:
            lines.append("    port: 2222   # sshd on 2222: reached through the site's NAT")
        lines.append(f"    gpus: {{model: {gpu}, count: {rng.choice(GPU_COUNTS[gpu])}}}")
    return name, region, "\n".join(lines) + "\n"


def generate_inventory(root: Path, n_sites: int, seed: int = 2026) -> None:
    rng = random.Random(seed)
    (root / "sites").mkdir(parents=True)
    by_region: dict[str, list[str]] = {}
    for i in range(n_sites):
        name, region, text = build_site_yaml(i, rng)
        (root / "sites" / f"{name}.yaml").write_text(text, encoding="utf-8")
        by_region.setdefault(region, []).append(name)
    (root / "grid.yaml").write_text(build_grid_yaml(by_region, rng), encoding="utf-8")
    (root / "known_hosts").write_text("", encoding="utf-8")


# Parsing-only peers: read grid.yaml and the site files (the first LIMIT, 0 = all) in
# the order gridctl reads them, yaml.load each; print the in-process loop time.
LOAD_LOOP = """\
import json, os, sys, time
import yaml
root, loader, limit = sys.argv[1], getattr(yaml, sys.argv[2]), int(sys.argv[3])
names = sorted(n for n in os.listdir(os.path.join(root, "sites")) if n.endswith((".yaml", ".yml")))
files = [os.path.join(root, "grid.yaml")]
files += [os.path.join(root, "sites", n) for n in names[: limit or None]]
t0 = time.perf_counter()
for path in files:
    with open(path, encoding="utf-8") as fh:
        yaml.load(fh.read(), Loader=loader)
print(json.dumps({"files": len(files) - 1, "loop_s": time.perf_counter() - t0}))
"""


# Diagnostic peer: gridctl's own entry point, unchanged, with Python's cyclic GC off,
# to show how much of validate is collector passes over the many objects it keeps.
GC_OFF = "import gc, sys; gc.disable(); from gridctl.cli.main import run; sys.exit(run(sys.argv[1:]))"


@dataclass
class ValidateResult:
    gridctl: Case
    cload: Case
    pure: Case
    gcoff: Case
    sites: int
    summary: str  # what gridctl validate printed
    subset: int
    pure_scaled: list[float]
    pure_loop_per_file: float
    c_loop_per_file: float
    c_loop: float


def bench_validate(n_sites: int, runs: int, pure_subset: int, keep: bool) -> ValidateResult:
    tmp = tempfile.mkdtemp(prefix="gridctl-bench-")
    root = Path(tmp) / "inventory"
    t0 = time.perf_counter()
    generate_inventory(root, n_sites)
    gen_s = time.perf_counter() - t0
    n_files = len(os.listdir(root / "sites"))
    assert n_files == n_sites, f"generated {n_files} site files, wanted {n_sites}"

    def check_valid(proc: subprocess.CompletedProcess[str]) -> None:
        # exit 0 is checked by run_once; the summary must count every generated site
        if f", {n_sites} sites," not in proc.stdout:
            raise SystemExit(f"validate did not report {n_sites} sites: {proc.stdout!r}")

    subset = min(pure_subset, n_sites)
    cases: list[Case] = [
        Case(
            f"gridctl -i DIR inventory validate ({n_sites} sites)",
            [PY, "-m", "gridctl", "-i", str(root), "inventory", "validate"],
            check_valid,
        ),
        Case(
            f"yaml.load CSafeLoader loop, no validation ({n_sites} files)",
            [PY, "-c", LOAD_LOOP, str(root), "CSafeLoader", "0"],
        ),
        Case(
            f"yaml.load SafeLoader (pure Python) loop ({subset} files)",
            [PY, "-c", LOAD_LOOP, str(root), "SafeLoader", str(subset)],
        ),
        Case(
            "diagnostic: the same gridctl validate with the garbage collector off",
            [PY, "-c", GC_OFF, "-i", str(root), "inventory", "validate"],
            check_valid,
        ),
    ]
    print(f"generated {n_sites} sites in {gen_s:.1f} s under {root}", file=sys.stderr)
    try:
        time_cases(cases, runs, "validate")
        first = cases[0].warmup.strip().replace(str(root), "DIR")
    finally:
        if keep:
            print(f"kept the generated inventory: {root}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    # Scale the pure-Python subset to the whole inventory: process time plus the
    # per-file loop time for the files it did not read.
    pure = cases[2]
    loops = [json.loads(o)["loop_s"] for o in pure.outputs]
    scale = n_sites / subset
    pure_scaled = [t + lp * (scale - 1) for t, lp in zip(pure.times, loops, strict=True)]
    c_loops = [json.loads(o)["loop_s"] for o in cases[1].outputs]
    return ValidateResult(
        gridctl=cases[0],
        cload=cases[1],
        pure=cases[2],
        gcoff=cases[3],
        sites=n_sites,
        summary=first,
        subset=subset,
        pure_scaled=pure_scaled,
        pure_loop_per_file=statistics.median(loops) / subset,
        c_loop_per_file=statistics.median(c_loops) / n_sites,
        c_loop=statistics.median(c_loops),
    )


# --------------------------------------------------------------------------- report


def stats_row(label: str, times: Sequence[float], ratio: str) -> str:
    q1, q3 = iqr(times)
    return (
        f"| {label} | {fmt_s(statistics.median(times))} | {fmt_s(min(times))} "
        f"| {fmt_s(max(times))} "
        f"| {fmt_s(q1)} – {fmt_s(q3)} | {ratio} |"
    )


TABLE_HEAD = "| command | median | min | max | IQR | ratio |\n|---|---:|---:|---:|---:|---|"


def verdict(value: float, target: float, le: bool) -> str:
    ok = value <= target if le else value < target
    return "**PASS**" if ok else "**FAIL**"


def startup_markdown(res: StartupResult, env: dict[str, str], command: str, runs: int) -> str:
    floor, yaml_floor, grid = res.floor, res.yaml_floor, res.gridctl
    lines = [
        "## Start-up: `gridctl -i inventory site ls -o json`, and a Tab completion",
        "",
        f"- date: {env['date']}",
        f"- machine: {env['nproc']} CPUs ({env['cpu']}), {env['os']}, {env['python']}, "
        f"PyYAML {env['pyyaml']}, {env['gridctl']}",
        f"- source: {env['tree']}",
        f"- command: `{command}` (from the repository root; `python` is the interpreter of the "
        "environment gridctl is installed in)",
        "- what: wall time of the whole process (`subprocess.run` timed with "
        f"`time.perf_counter`), {runs} runs each, interleaved, after one warm-up; "
        f"example inventory ({res.sites} sites), "
        "stdout to a pipe",
        "",
        TABLE_HEAD,
        stats_row(floor.shell(), floor.times, "1.00× (floor)"),
        stats_row(
            yaml_floor.shell(),
            yaml_floor.times,
            f"{yaml_floor.median / floor.median:.2f}× interpreter",
        ),
    ]
    for case in grid:
        lines.append(
            stats_row(
                case.shell(),
                case.times,
                f"{case.median / floor.median:.2f}× interpreter, "
                f"{case.median / yaml_floor.median:.2f}× import yaml",
            )
        )
    lines.append("")
    for case in grid:
        own = case.median - yaml_floor.median
        lines.append(
            f"- `{case.shell()}`: median {fmt_s(case.median)}, of which about {fmt_s(own)} "
            f"is gridctl itself (above `import yaml, json`; {fmt_s(case.median - floor.median)} "
            f"above a bare interpreter). Target median ≤ {STARTUP_TARGET_S * 1000:.0f} ms: "
            f"{verdict(case.median, STARTUP_TARGET_S, True)}"
        )
    imp = res.imports
    lines += [
        "",
        f"Biggest import costs, from one run of `{imp.command}` (a single run: ±20% noise). "
        "Each third-party or stdlib package counts with its cumulative time where gridctl first "
        "imports it, each gridctl module with its own time; modules a bare `python -c pass` "
        f"imports are left out. Together these pieces sum to {imp.total_us / 1000:.0f} ms:",
        "",
        "| # | import | time | counted as |",
        "|---:|---|---:|---|",
    ]
    for n, (us, mod, how) in enumerate(imp.top, 1):
        lines.append(f"| {n} | `{mod}` | {us / 1000:.1f} ms | {how} |")
    return "\n".join(lines) + "\n"


def validate_markdown(res: ValidateResult, env: dict[str, str], command: str, runs: int) -> str:
    grid, cload, pure, gcoff = res.gridctl, res.cload, res.pure, res.gcoff
    n = res.sites
    pure_scaled = res.pure_scaled
    ps_med = statistics.median(pure_scaled)
    lines = [
        f"## Validate: `gridctl -i DIR inventory validate` on {n:,} generated sites",
        "",
        f"- date: {env['date']}",
        f"- machine: {env['nproc']} CPUs ({env['cpu']}), {env['os']}, {env['python']}, "
        f"PyYAML {env['pyyaml']}, {env['gridctl']}",
        f"- source: {env['tree']}",
        f"- command: `{command}` (from the repository root; `python` is the interpreter of the "
        "environment gridctl is installed in)",
        f"- what: wall time of the whole process, {runs} runs each, interleaved, "
        "after one warm-up. "
        f"The inventory is generated into a temp dir (seed 2026): a grid.yaml with {len(REGIONS)} "
        f"client regions and {n:,} sites/<name>.yaml like the example's (2 models, 1–3 nodes with "
        "unique names and hosts, labels, location, endpoint); gridctl reports "
        f"`{res.summary}` (exit 0, asserted).",
        "- peers: the same files (grid.yaml + every site file, in gridctl's order) "
        "read and parsed with "
        "`yaml.load(text, Loader=...)` in a loop in one `python -c` process: parsing alone, no "
        f"validation. PyYAML's pure-Python `SafeLoader` runs on the first {res.subset:,} files; "
        f"its {n:,}-file figure is scaled: process time + loop time × "
        f"({n:,}/{res.subset:,} − 1).",
        "",
        TABLE_HEAD,
        stats_row(
            grid.shell().replace(str(grid.argv[4]), "DIR"),
            grid.times,
            f"{grid.median / cload.median:.2f}× the CSafeLoader loop",
        ),
        stats_row(f"CSafeLoader loop, {n:,} files (no validation)", cload.times, "1.00× (peer)"),
        stats_row(f"SafeLoader (pure Python) loop, {res.subset:,} files (measured)", pure.times, "—"),
        stats_row(
            f"SafeLoader (pure Python) loop, scaled to {n:,} files",
            pure_scaled,
            f"{ps_med / cload.median:.1f}× the CSafeLoader loop",
        ),
        stats_row(
            "diagnostic: the same gridctl validate, `gc.disable()` first",
            gcoff.times,
            f"{gcoff.median / grid.median:.2f}× gridctl validate",
        ),
        "",
        f"- parsing per file, in-process loop time (medians): CSafeLoader "
        f"{res.c_loop_per_file * 1e6:.0f} µs, pure-Python SafeLoader "
        f"{res.pure_loop_per_file * 1e6:.0f} µs "
        f"({res.pure_loop_per_file / res.c_loop_per_file:.1f}× slower); "
        "the CSafeLoader loop over all "
        f"{n:,} files takes {fmt_s(res.c_loop)} of its process's {fmt_s(cload.median)}.",
        f"- gridctl's whole validate (start-up, read, parse, schema, cross-checks) takes "
        f"{fmt_s(grid.median - cload.median)} more than parsing alone "
        f"({grid.median / cload.median:.2f}×).",
        f"- diagnostic: the same command through gridctl's own entry point with Python's cyclic "
        f"garbage collector off (`{GC_OFF}`) takes {fmt_s(gcoff.median)}: "
        f"{fmt_s(grid.median - gcoff.median)} of the {fmt_s(grid.median)} go to collector "
        "passes over the objects validate keeps alive while loading (a lead for whoever "
        "optimizes it; not a measure of anything users run).",
        f"- Target median < {VALIDATE_TARGET_S:g} s for 10,000 sites: {fmt_s(grid.median)}, "
        + (
            verdict(grid.median, VALIDATE_TARGET_S, False)
            if n == 10_000
            else f"not judged ({n:,} sites measured)"
        ),
    ]
    return "\n".join(lines) + "\n"


INTRO = """\
# Benchmarks

`bench/` holds gridctl's benchmarks. Speed is measured here, never asserted in the
tests. Each benchmark times gridctl side by side with a floor or a peer in the same
run (the same machine, the same minute), and writes its figures below with the exact
command that reproduces them.

Run them from the repository root with the Python of the environment gridctl is
installed in (for a development checkout: `pip install -e '.[test]'`):

```
python bench/inventory_bench.py                 # print the figures
python bench/inventory_bench.py --write-readme  # and rewrite its sections below
python bench/inventory_bench.py --help          # sizes, runs, one benchmark only
```

The figures come from a noisy, shared 2-core machine: they are medians of several
runs, with min/max and the interquartile range; compare ratios against the floor or
peer of the same run rather than absolute times across runs or machines.
"""


def write_readme(sections: dict[str, str]) -> None:
    text = README.read_text(encoding="utf-8") if README.exists() else INTRO
    for key, body in sections.items():
        begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
        block = f"{begin}\n{body}{end}"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if (m := pattern.search(text)) is not None:
            text = text[: m.start()] + block + text[m.end() :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


def print_table(title: str, rows: Sequence[tuple[str, Sequence[float], str]]) -> None:
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows)
    print(f"  {'command'.ljust(width)}  {'median':>9} {'min':>9} {'max':>9}  ratio")
    for label, times, ratio in rows:
        print(
            f"  {label.ljust(width)}  {fmt_s(statistics.median(times)):>9} {fmt_s(min(times)):>9} "
            f"{fmt_s(max(times)):>9}  {ratio}"
        )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--bench",
        choices=["all", "startup", "validate"],
        default="all",
        help="which benchmark (default all)",
    )
    p.add_argument(
        "--sites",
        type=int,
        default=10_000,
        metavar="N",
        help="sites in the generated inventory (default 10000)",
    )
    p.add_argument("--runs", type=int, default=5, metavar="R", help="timed runs of each command (default 5)")
    p.add_argument(
        "--startup-runs",
        type=int,
        default=None,
        metavar="R",
        help="timed runs for the start-up benchmark (default: 3×--runs; those runs are short)",
    )
    p.add_argument(
        "--pure-subset",
        type=int,
        default=1000,
        metavar="K",
        help="files parsed by the pure-Python SafeLoader, scaled to N (default 1000)",
    )
    p.add_argument("--keep", action="store_true", help="keep the generated inventory and print where it is")
    p.add_argument(
        "--write-readme",
        action="store_true",
        help="rewrite this benchmark's sections of bench/README.md",
    )
    args = p.parse_args(argv)
    if args.runs < 1 or args.sites < 1 or args.pure_subset < 1:
        p.error("--runs, --sites and --pure-subset must be at least 1")
    if args.startup_runs is None:
        args.startup_runs = 3 * args.runs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # figures and progress interleave right
    probe = subprocess.run([PY, "-c", "import gridctl, yaml"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(
            f"error: gridctl is not importable with {PY}; run this with the environment's python",
            file=sys.stderr,
        )
        return 1
    env = machine()
    print(
        f"{env['date']}: {env['nproc']} CPUs ({env['cpu']}), {env['python']}, "
        f"PyYAML {env['pyyaml']}, {env['gridctl']}"
    )
    sections: dict[str, str] = {}
    base = ["python", "bench/inventory_bench.py"]
    if args.bench in ("all", "startup"):
        res = bench_startup(args.startup_runs)
        floor, yfloor = res.floor, res.yaml_floor
        rows: list[tuple[str, Sequence[float], str]] = [
            (floor.shell(), floor.times, "1.00x"),
            (yfloor.shell(), yfloor.times, f"{yfloor.median / floor.median:.2f}x interpreter"),
        ]
        rows += [
            (
                c.shell(),
                c.times,
                f"{c.median / floor.median:.2f}x interpreter, {c.median / yfloor.median:.2f}x import yaml",
            )
            for c in res.gridctl
        ]
        print_table(f"start-up ({args.startup_runs} runs each)", rows)
        for c in res.gridctl:
            print(
                f"  target median <= 250 ms ({c.label.rsplit('(', 1)[-1].rstrip(')')}): "
                f"{verdict(c.median, STARTUP_TARGET_S, True).strip('*')}"
            )
        print("  biggest import costs (one -X importtime run):")
        for us, mod, how in res.imports.top:
            print(f"    {us / 1000:7.1f} ms  {mod}  ({how})")
        cmd = shlex.join(
            [
                *base,
                "--bench",
                "startup",
                "--startup-runs",
                str(args.startup_runs),
                "--write-readme",
            ]
        )
        sections["inventory-startup"] = startup_markdown(res, env, cmd, args.startup_runs)
    if args.bench in ("all", "validate"):
        vres = bench_validate(args.sites, args.runs, args.pure_subset, args.keep)
        grid, cload, pure, gcoff = vres.gridctl, vres.cload, vres.pure, vres.gcoff
        ps = vres.pure_scaled
        print_table(
            f"validate, {args.sites} generated sites ({args.runs} runs each)",
            [
                (grid.label, grid.times, f"{grid.median / cload.median:.2f}x CSafeLoader loop"),
                (cload.label, cload.times, "1.00x"),
                (pure.label, pure.times, "measured"),
                (
                    f"  ... scaled to {args.sites} files",
                    ps,
                    f"{statistics.median(ps) / cload.median:.1f}x CSafeLoader loop",
                ),
                (
                    "diagnostic: gridctl validate with gc.disable()",
                    gcoff.times,
                    f"{gcoff.median / grid.median:.2f}x gridctl validate",
                ),
            ],
        )
        if args.sites == 10_000:
            judged = verdict(grid.median, VALIDATE_TARGET_S, False).strip("*")
            print(f"  target median < 2 s for 10000 sites: {judged}")
        cmd = shlex.join(
            [
                *base,
                "--bench",
                "validate",
                "--sites",
                str(args.sites),
                "--runs",
                str(args.runs),
                "--pure-subset",
                str(args.pure_subset),
                "--write-readme",
            ]
        )
        sections["inventory-validate"] = validate_markdown(vres, env, cmd, args.runs)
    if args.write_readme:
        write_readme(sections)
        print(f"\nwrote {README.relative_to(REPO)}: {', '.join(sections)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
