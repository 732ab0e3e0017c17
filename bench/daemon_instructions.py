"""The daemon's CPU work per request counted in instructions (valgrind's callgrind), not timed.

Timing CPU per request on a shared 2-core machine moves by 10-20% from run to run, as much as
the differences worth knowing (issue 12: the daemon within 10% of the commit before llhttp).
Instructions executed in user space do not depend on what else the machine runs: the same
build gives the same count to within a fraction of a percent. What they leave out is the
kernel's share (the system calls, the same for every target here: one read and one write on
each side of a request) and how fast each instruction runs.

Each target is the daemon (`python -m gridctl daemon run`) started under
`valgrind --tool=callgrind --instr-atstart=no` on one fake site (bench/daemon/fake_site.py,
the one bench/daemon_bench.py uses). After a warm-up, counting is switched on
(`callgrind_control -i on`) for N non-streaming requests sent one after another on one
keep-alive connection, dumped, then for N streaming requests (20 tokens each); the figure is
the dump's total over N. Targets:

- `daemon`: as shipped (access log on, to stderr: here a file);
- `daemon --access-log off`: the same without its access log (issue 13's part of the cost);
- `baseline (REV)` with `--baseline REV`: the daemon of commit REV from a git worktree
  (bench/daemon/baseline.py), the same interpreter, inventory and flags.

    python bench/daemon_instructions.py --baseline cb3675e                 # print the figures
    python bench/daemon_instructions.py --baseline cb3675e --write-readme  # and rewrite its section

Needs valgrind (Debian: `apt-get install valgrind`); each target takes about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "daemon"))
from baseline import Baseline, baseline_tree, run_import_check  # noqa: E402
from daemon_bench import BENCH_KEY, MODEL, REGION, free_port, write_inventory  # noqa: E402
from inventory_bench import REPO, machine, write_readme  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable
TARGET_VS_BASELINE_MAX = 1.10  # issue 12: CPU per request within 10% of the baseline's


def _request(stream: bool) -> bytes:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (BENCH_KEY.encode(), len(body), body)
    )


def _read_answer(sock: socket.socket, buf: bytes) -> tuple[int, bytes]:
    """One answer (Content-Length or chunked): its status and what came after it."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the daemon closed the connection")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    fields = {
        k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
    }
    if b"content-length" in fields:
        n = int(fields[b"content-length"])
        while len(rest) < n:
            rest += sock.recv(65536)
        return status, rest[n:]
    while b"\r\n0\r\n\r\n" not in rest and not rest.startswith(b"0\r\n\r\n"):
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the daemon closed a stream before its end")
        rest += data
    end = rest.find(b"0\r\n\r\n") if rest.startswith(b"0\r\n\r\n") else rest.find(b"\r\n0\r\n\r\n") + 2
    return status, rest[end + 5 :]


def send(port: int, n: int, stream: bool) -> int:
    """``n`` requests one after another on one connection; how many were answered 200."""
    req, ok, buf = _request(stream), 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for _ in range(n):
            sock.sendall(req)
            status, buf = _read_answer(sock, buf)
            ok += status == 200
    return ok


@dataclass
class Target:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    counts: dict[str, float] = field(default_factory=dict)  # instructions per request, by kind


def _total(path: Path) -> int:
    text = path.read_text(errors="replace")
    m = re.search(r"^totals: (\d+)", text, re.M) or re.search(r"^summary: (\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"no totals in {path}")
    return int(m.group(1))


def measure(t: Target, tmp: Path, n: int, warmup: int) -> None:
    port = free_port()
    out = tmp / f"cg-{len(t.counts)}-{abs(hash(t.name))}"
    out.mkdir()
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}/cg.%p",
        *t.argv,
        "--listen",
        f"127.0.0.1:{port}",
    ]
    log = tmp / f"{out.name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=t.env, cwd=t.cwd)
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{t.name} did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        ctl = ["callgrind_control"]
        for kind, stream in (("request", False), ("stream", True)):
            if send(port, warmup, stream) != warmup:
                raise RuntimeError(f"{t.name}: warm-up requests failed ({log})")
            subprocess.run([*ctl, "-z", str(proc.pid)], capture_output=True, check=True)
            subprocess.run([*ctl, "-i", "on", str(proc.pid)], capture_output=True, check=True)
            ok = send(port, n, stream)
            subprocess.run([*ctl, "-i", "off", str(proc.pid)], capture_output=True, check=True)
            before = set(out.iterdir())
            subprocess.run([*ctl, "-d", kind, str(proc.pid)], capture_output=True, check=True)
            dumps = sorted(set(out.iterdir()) - before, key=lambda p: p.stat().st_mtime)
            if ok != n or not dumps:
                raise RuntimeError(f"{t.name}: {ok}/{n} {kind}s answered 200, {len(dumps)} dumps ({log})")
            t.counts[kind] = _total(dumps[-1]) / n
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(targets: list[Target], args: argparse.Namespace, base: Baseline | None) -> str:
    daemon, env = targets[0], machine()
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "## Daemon: instructions per request (callgrind), against the commit before llhttp\n",
        f"- date: {env['date']}",
        f"- machine: {env['nproc']} CPUs ({env['cpu']}), {env['os']}, {env['python']}, {env['gridctl']}, {valgrind}",
        f"- source: {env['tree']}"
        + (f"; baseline {base.short} ({base.subject})" if base is not None else ""),
        f"- command: `python bench/daemon_instructions.py{' --baseline ' + args.baseline if args.baseline else ''}"
        f" --requests {args.requests} --write-readme` (from the repository root)",
        f"- what: user-space instructions the daemon process executed per request, counted by valgrind's"
        f" callgrind over {args.requests} requests sent one after another on one keep-alive connection,"
        f" after {args.warmup} uncounted ones; non-streaming (a 25 ms JSON answer) and streaming"
        " (20 tokens); one fake site (bench/daemon/fake_site.py). The kernel's share (the reads and writes on each side,"
        " the same calls for every row) is not counted. A count does not vary"
        " with the machine's load: rerunning gives the same figure to within a fraction of a percent.\n",
        "| daemon | instructions per request | per stream (20 tokens) | vs daemon |",
        "|---|---:|---:|---|",
    ]
    for t in targets:
        rel = "" if t is daemon else f"{t.counts['request'] / daemon.counts['request']:.3f}×"
        lines.append(f"| {t.name} | {t.counts['request']:,.0f} | {t.counts['stream']:,.0f} | {rel} |")
    lines.append("")
    if base is not None:
        b = targets[-1]
        for kind, label in (("request", "non-streaming request"), ("stream", "20-token stream")):
            ratio = daemon.counts[kind] / b.counts[kind]
            ok = "PASS" if ratio <= TARGET_VS_BASELINE_MAX else "FAIL"
            lines.append(
                f"- instructions per {label}: daemon {daemon.counts[kind]:,.0f} vs {b.name}"
                f" {b.counts[kind]:,.0f}: {ratio:.3f}× (target ≤ {TARGET_VS_BASELINE_MAX:.2f}×): **{ok}**"
            )
        if len(targets) == 3:
            off = targets[1]
            share = (daemon.counts["request"] - off.counts["request"]) / daemon.counts["request"]
            lines.append(
                f"- the access log's part: {daemon.counts['request'] - off.counts['request']:,.0f}"
                f" instructions per request ({share:.1%} of the daemon's); without it the daemon is at"
                f" {off.counts['request'] / b.counts['request']:.3f}× the baseline"
            )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _maybe_baseline(rev: str | None) -> Iterator[Baseline | None]:
    if rev is None:
        yield None
        return
    with baseline_tree(REPO, rev) as base:
        yield base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", metavar="REV", help="also count the daemon of commit REV (a git worktree)")
    p.add_argument("--requests", type=int, default=1000, help="requests counted per kind (default 1000)")
    p.add_argument("--warmup", type=int, default=100, help="uncounted requests first (default 100)")
    p.add_argument("--write-readme", action="store_true", help="rewrite this section of bench/README.md")
    p.add_argument("--keep", metavar="DIR", type=Path, help="keep callgrind's dumps and logs in DIR")
    p.add_argument(
        "--only-daemon", action="store_true", help="count the shipped daemon only (while exploring)"
    )
    args = p.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found\nhint: apt-get install valgrind", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="daemon-instr-"))
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="daemon-instr-", dir=args.keep))
    backend_port = free_port()
    site = subprocess.Popen(
        [PY, str(HERE / "daemon" / "fake_site.py"), str(backend_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        inv = tmp / "inventory"
        write_inventory(inv, backend_port)
        env = {**os.environ, "NO_COLOR": "1"}
        daemon = [PY, "-m", "gridctl", "-i", str(inv), "daemon", "run", "--region", REGION]
        with _maybe_baseline(args.baseline) as base:
            targets = [
                Target("daemon", daemon, env, REPO),
                Target("daemon --access-log off", [*daemon, "--access-log", "off"], env, REPO),
            ]
            if args.only_daemon:
                del targets[1:]
            if base is not None:
                benv = base.env(env)
                run_import_check(PY, base, benv)
                targets.append(Target(base.name, daemon, benv, base.tree))
            for t in targets:
                print(f"counting {t.name} ...", file=sys.stderr, flush=True)
                measure(t, tmp, args.requests, args.warmup)
            text = report(targets, args, base)
        print(text)
        if args.write_readme:
            write_readme({"daemon-instructions": text})
    finally:
        site.terminate()
        site.wait()
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"callgrind dumps kept in {tmp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
