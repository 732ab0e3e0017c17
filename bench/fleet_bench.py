"""Benchmark gridctl's SSH fan-out against Ansible and ``xargs -P ssh`` on loopback sshd nodes.

Brings up ``--nodes`` real OpenSSH servers on 127.0.0.1 (the test suite's
harness, tests/fleet/sshd.py: one ``sshd -D`` per node, its own host key, the
stand-in nvidia-smi first on PATH, GPU state ``healthy-h100x8``) and, for each
fleet size, times side by side the same query on every node:

``gridctl exec``
    ``gridctl -i INV exec all --forks F -o json -- QUERY``
``gridctl health``
    ``gridctl -i INV health -o json --forks F`` (it runs QUERY itself; site
    endpoints answer from the suite's FakeEndpoint in this process)
``ansible (cold)`` / ``ansible (warm)``
    ``ansible all -i INV.yaml -m raw -a QUERY -f F`` on the inventory from
    ``gridctl inventory export --format ansible``, with Ansible's default SSH
    arguments (ControlMaster=auto, ControlPersist=60s). "cold": a fresh
    ControlPath directory, so every host gets a new connection; "warm": the
    same command again right after, reusing the masters the cold run left.
``xargs ssh``
    ``xargs -P F -I @PORT@ ssh -o KexAlgorithms=curve25519-sha256 -o BatchMode=yes
    -o UserKnownHostsFile=INV/known_hosts -i KEY -p @PORT@ 127.0.0.1 QUERY``

QUERY is ``gridctl.core.health.nvidia_smi.build_node_probe_command()`` (``--query
probe``, the default: exactly what ``gridctl health`` runs) or the bare
``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` (``--query plain``).
Every run is checked: every node answered with its 8 GPUs, or the benchmark
stops with an error. Wall time is ``time.perf_counter`` around the process;
the controller's peak memory (``ru_maxrss``) and CPU time come from GNU
``/usr/bin/time`` wrapped around it. Host keys are checked against the
inventory's known_hosts by every tool. Also timed, as a diagnostic:
``gridctl -i INV site ls -o json``, gridctl's start-up without SSH.

The nodes' login shell skips the user's ~/.bashrc unless ``--login-rc`` (see
``skip_login_rc``). Servers, Ansible's ControlPersist masters, the endpoints
and the temp dir are cleaned up on exit, Ctrl-C and errors.

Run from the repository root with the interpreter of the environment where
gridctl and ansible-core are installed::

    PYTHONPATH=. python bench/fleet_bench.py                  # 50 and 200 nodes, 3 runs
    PYTHONPATH=. python bench/fleet_bench.py --write-readme   # and rewrite its README section

Speed is measured here, never asserted in tests: targets are reported as
pass/fail and the script exits 0 either way (non-zero only when a run fails
to reach every node, or a tool is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import inventory_bench as ib  # noqa: E402  (README sections, machine facts, formatting)

PY = sys.executable
BIN = Path(PY).parent
GRIDCTL = str(BIN / "gridctl") if (BIN / "gridctl").exists() else "gridctl"
ANSIBLE = str(BIN / "ansible") if (BIN / "ansible").exists() else (shutil.which("ansible") or "ansible")
SSH = shutil.which("ssh") or "/usr/bin/ssh"
XARGS = shutil.which("xargs") or "/usr/bin/xargs"

SECTION = "fleet-fanout"
GPU_STATE = "healthy-h100x8"
GPUS = "{model: H100, count: 8}"
GPU_ROWS = 8  # healthy-h100x8 answers 8 rows
NODES_PER_SITE = 25
XARGS_KEX = "curve25519-sha256"

RATIO_XARGS_MAX = 1.1  # gridctl time <= 1.1x the xargs ssh time
RATIO_ANSIBLE_MIN = 1.5  # gridctl at least 1.5x faster than ansible
RSS_TARGET_MB = 150.0  # controller peak memory at 200 nodes
RSS_TARGET_NODES = 200

GPU_ROW = re.compile(r"^\d+, NVIDIA H100[^\n]*$", re.M)
END_MARK = "@@gridctl:end"


class BenchError(SystemExit):
    """A run that did not reach every node, or a missing tool: stop loudly."""

    def __init__(self, message: str) -> None:
        super().__init__(f"fleet_bench: {message}")


# --------------------------------------------------------------------------- the query


def build_query(kind: str) -> str:
    from gridctl.core.health.nvidia_smi import CSV_FORMAT, QUERY_GPU_FIELDS, build_node_probe_command

    if kind == "probe":
        return build_node_probe_command()
    return shlex.join(["nvidia-smi", "--query-gpu=" + ",".join(QUERY_GPU_FIELDS), CSV_FORMAT])


def check_node_output(text: str, kind: str, where: str) -> None:
    """One node's answer to the query: its 8 GPU rows (and the probe's end marker)."""
    rows = len(GPU_ROW.findall(text))
    if rows != GPU_ROWS or (kind == "probe" and END_MARK not in text):
        raise BenchError(f"{where}: expected {GPU_ROWS} GPU rows and a complete answer, got: {text[-400:]!r}")


# --------------------------------------------------------------------------- timing


@dataclass
class Run:
    seconds: float
    maxrss_kb: int  # largest RSS of the controller process (or of any one waited-for child)
    cpu_s: float  # user + system CPU of the controller and its waited-for children
    busy: float  # share of the machine's CPU time that was busy during the run (all processes)


@dataclass
class Case:
    key: str
    label: str
    argv: list[str]
    check: Callable[[str, str, int], None]  # (stdout, stderr, rc) -> raise BenchError
    env: dict[str, str] | None = None
    stdin: Path | None = None
    before: Callable[[], None] | None = None  # untimed, right before the run
    shown: str = ""  # the command as a user types it (placeholders for paths)
    runs: list[Run] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [r.seconds for r in self.runs]

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def cpu_counters() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            parts = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0, 0
    return parts[3] + parts[4], sum(parts[:8])


GNU_TIME = "/usr/bin/time"
# Without GNU time: a small Python parent forks the command and reports its rusage.
# (Not os.wait4 from this process: a child forked from here inherits this process's
# RSS as its ru_maxrss floor, since exec keeps the high-water mark of the old image.)
RUSAGE_RUNNER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, st, ru = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(f'{ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}\\n')\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n"
)


def rusage_argv(argv: list[str], report: Path) -> tuple[list[str], str]:
    """``argv`` wrapped so its peak RSS (KiB) and CPU seconds land in ``report``."""
    if os.access(GNU_TIME, os.X_OK):
        return [GNU_TIME, "-f", "%M %U %S", "-o", str(report), *argv], "GNU time (`/usr/bin/time -f %M`)"
    return [PY, "-c", RUSAGE_RUNNER, str(report), *argv], "a small Python parent's `os.wait4`"


def run_once(case: Case, scratch: Path) -> Run:
    """Run the case once with its output in files; wall time, rusage, check."""
    if case.before is not None:
        case.before()
    out_path, err_path = scratch / f"{case.key}.out", scratch / f"{case.key}.err"
    report = scratch / f"{case.key}.rusage"
    argv, _ = rusage_argv(case.argv, report)
    with contextlib.ExitStack() as stack:
        stdin = stack.enter_context(open(case.stdin, "rb")) if case.stdin else subprocess.DEVNULL
        out = stack.enter_context(open(out_path, "wb"))
        err = stack.enter_context(open(err_path, "wb"))
        idle0, total0 = cpu_counters()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=out, stderr=err, env=case.env, cwd=REPO, start_new_session=True
        )
        try:
            proc.wait()
        except BaseException:  # Ctrl-C or an error: end the command's whole process group
            end_process_group(proc)
            raise
        elapsed = time.perf_counter() - t0
        idle1, total1 = cpu_counters()
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    case.check(stdout, stderr, proc.returncode)
    try:
        maxrss, utime, stime = report.read_text().strip().splitlines()[-1].split()
    except (OSError, IndexError, ValueError):
        raise BenchError(f"{case.label}: no resource usage report from {argv[0]}") from None
    busy = 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else float("nan")
    return Run(elapsed, int(maxrss), float(utime) + float(stime), busy)


def end_process_group(proc: subprocess.Popen[bytes]) -> None:
    """The command runs in its own session: TERM its group (it and e.g. the ssh clients
    it started), then KILL what is left after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def time_units(units: Sequence[Sequence[Case]], runs: int, scratch: Path, progress: str) -> None:
    """``runs`` rounds; each round runs every unit once (a unit's cases back to back, e.g.
    Ansible cold then warm), in an order rotated every round, so a noisy stretch of the
    shared machine hits all of them alike."""
    for r in range(runs):
        k = r % len(units)
        for unit in list(units[k:]) + list(units[:k]):
            for case in unit:
                print(f"  {progress}: run {r + 1}/{runs}: {case.label} ...", end="", flush=True)
                run = run_once(case, scratch)
                case.runs.append(run)
                print(f" {run.seconds:.2f} s")


# --------------------------------------------------------------------------- fleet and inventory


def site_names(n: int) -> dict[str, range]:
    """Site name -> indexes of its nodes: the first ``n`` nodes, 25 to a site."""
    return {
        f"lab-{i // NODES_PER_SITE:02d}": range(i, min(i + NODES_PER_SITE, n))
        for i in range(0, n, NODES_PER_SITE)
    }


def write_inventory(dest: Path, fleet: Any, n: int, endpoints: dict[str, str]) -> Path:
    """The test suite's ``write_fleet_inventory`` (host keys pinned) for the first ``n``
    nodes, in sites of 25, each site's endpoint its own ``FakeEndpoint``."""
    from tests.fleet.conftest import write_fleet_inventory

    sites = site_names(n)
    write_fleet_inventory(dest, fleet, gpus=GPUS, endpoints={s: endpoints[s] for s in sites}, sites=sites)
    return dest


def skip_login_rc(fleet: Any) -> None:
    """Make the nodes' login shell skip the user's ~/.bashrc.

    sshd runs each command through the user's login shell, and bash sources
    ~/.bashrc when started by sshd as a top-level shell (SHLVL unset). On a
    developer machine that file can be heavy: here root's runs ``pyenv init``,
    whose ``pyenv rehash`` costs ~110 ms of CPU per command and takes a lock it
    waits up to 60 s for, so 50 concurrent sessions serialise on it and a node
    can stall past the tools' deadlines. That is node-side work, the same for
    every tool, but it drowns what is measured. With ``SHLVL=1`` in the session
    environment bash counts itself nested and skips ~/.bashrc. (sshd honours
    only the first ``SetEnv`` line, so the harness's line is extended.)"""
    from tests.fleet.sshd import SshdNode

    class QuietNode(SshdNode):
        def config(self) -> str:
            text = super().config()
            if "\nSetEnv " not in text:
                raise BenchError("the harness's sshd_config has no SetEnv line to extend")
            return text.replace("\nSetEnv ", "\nSetEnv SHLVL=1 ", 1)

    fleet.nodes = [QuietNode(n.name, n.workdir, n.authorized_keys, state=n.state) for n in fleet.nodes]


def raise_fd_limit(needed: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return f"RLIMIT_NOFILE {soft} (enough; not changed)"
    new = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return f"RLIMIT_NOFILE raised from {soft} to {new} for this process and the tools it starts"


# --------------------------------------------------------------------------- checks


def check_gridctl_exec(names: set[str], kind: str) -> Callable[[str, str, int], None]:
    def check(stdout: str, stderr: str, rc: int) -> None:
        if rc != 0:
            raise BenchError(f"gridctl exec exited {rc}: {stderr[-1500:]}")
        rows = json.loads(stdout)
        got = {r["node"] for r in rows}
        if got != names or len(rows) != len(names):
            raise BenchError(f"gridctl exec answered for {len(got)} of {len(names)} nodes")
        for r in rows:
            if r["status"] != "ok" or r["rc"] != 0:
                raise BenchError(f"gridctl exec: {r['node']}: {r['status']} rc={r['rc']} {r['error']}")
            check_node_output(r["stdout"], kind, f"gridctl exec: {r['node']}")

    return check


def check_gridctl_health(names: set[str], sites: int) -> Callable[[str, str, int], None]:
    def check(stdout: str, stderr: str, rc: int) -> None:
        try:
            rows = json.loads(stdout)
        except ValueError:
            raise BenchError(f"gridctl health exited {rc} without JSON: {stderr[-1500:]}") from None
        nodes = [r for r in rows if r.get("kind") == "node"]
        bad = [
            f"{r.get('node')}: {r.get('status')} {r.get('reasons')}" for r in rows if r.get("status") != "ok"
        ]
        if bad:
            raise BenchError(f"gridctl health (exit {rc}): not ok: {'; '.join(bad[:5])}")
        if {r["node"] for r in nodes} != names or len(nodes) != len(names):
            raise BenchError(f"gridctl health answered for {len(nodes)} of {len(names)} nodes")
        for r in nodes:
            gpus = r.get("readings", {}).get("gpus", [])
            if len(gpus) != GPU_ROWS:
                raise BenchError(f"gridctl health: {r['node']}: {len(gpus)} GPUs read, expected {GPU_ROWS}")
        if len(rows) - len(nodes) != sites:
            raise BenchError(f"gridctl health: {len(rows) - len(nodes)} site rows, expected {sites}")
        if rc != 0:
            raise BenchError(f"gridctl health exited {rc} with every row ok: {stderr[-1500:]}")

    return check


ANSIBLE_HEAD = re.compile(r"^(\S+) \| ([A-Z!]+)(?: \| rc=(-?\d+))?(?: >>| => \{)$", re.M)


def check_ansible(names: set[str], kind: str) -> Callable[[str, str, int], None]:
    def check(stdout: str, stderr: str, rc: int) -> None:
        heads = list(ANSIBLE_HEAD.finditer(stdout))
        ok = set()
        for i, m in enumerate(heads):
            body = stdout[m.end() : heads[i + 1].start() if i + 1 < len(heads) else len(stdout)]
            host, state, code = m.group(1), m.group(2), m.group(3)
            if state != "CHANGED" or code != "0":
                raise BenchError(f"ansible: {host}: {state} rc={code}: {body[:600]!r}")
            check_node_output(body, kind, f"ansible: {host}")
            ok.add(host)
        if ok != names or rc != 0:
            raise BenchError(
                f"ansible exited {rc}, {len(ok)} of {len(names)} hosts answered: {stderr[-1500:]}"
            )

    return check


def check_site_ls(sites: int) -> Callable[[str, str, int], None]:
    def check(stdout: str, stderr: str, rc: int) -> None:
        if rc != 0 or len(json.loads(stdout)) != sites:
            raise BenchError(f"gridctl site ls exited {rc}: {stderr[-1500:]}")

    return check


def check_xargs(n: int, kind: str) -> Callable[[str, str, int], None]:
    def check(stdout: str, stderr: str, rc: int) -> None:
        # xargs exits 123 when any ssh exited non-zero; ssh exits with the remote status
        # (the probe ends with `echo`, so 0 when it ran) or 255 for its own errors.
        if rc != 0:
            raise BenchError(f"xargs ssh exited {rc}: {stderr[-1500:]}")
        rows = len(GPU_ROW.findall(stdout))
        ends = stdout.count(END_MARK)
        if (kind == "probe" and ends != n) or rows != n * GPU_ROWS:
            raise BenchError(f"xargs ssh: {ends} complete answers, {rows} GPU rows from {n} nodes")

    return check


# --------------------------------------------------------------------------- cases


@dataclass
class Setup:
    n: int
    inv: Path
    ansible_inv: Path
    ports: Path
    names: set[str]
    sites: int
    client_key: Path


def ansible_env(inv: Path, control_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("ANSIBLE_"):
            del env[k]
    env.update(
        {
            "ANSIBLE_SSH_COMMON_ARGS": f"-o UserKnownHostsFile={inv / 'known_hosts'}",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    return env


def close_masters(control_dir: Path) -> None:
    """End the ControlPersist masters a run left (they would linger 60 s)."""
    if not control_dir.exists():
        return
    for sock in control_dir.iterdir():
        subprocess.run(
            [SSH, "-o", f"ControlPath={sock}", "-O", "exit", "placeholder"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    shutil.rmtree(control_dir, ignore_errors=True)


def build_units(s: Setup, query: str, kind: str, forks: int, scratch: Path, health: bool) -> list[list[Case]]:
    f = str(forks)
    inv = str(s.inv)
    units: list[list[Case]] = [
        [
            Case(
                "gridctl-exec",
                "gridctl exec",
                [GRIDCTL, "-i", inv, "exec", "all", "--forks", f, "-o", "json", "--", query],
                check_gridctl_exec(s.names, kind),
                shown=f"gridctl -i INV exec all --forks {f} -o json -- QUERY",
            )
        ]
    ]
    units.append(
        [
            Case(
                "startup-floor",
                "diagnostic: gridctl start-up (no SSH)",
                [GRIDCTL, "-i", inv, "site", "ls", "-o", "json"],
                check_site_ls(s.sites),
                shown="gridctl -i INV site ls -o json",
            )
        ]
    )
    if health:
        units.append(
            [
                Case(
                    "gridctl-health",
                    "gridctl health",
                    [GRIDCTL, "-i", inv, "health", "-o", "json", "--forks", f],
                    check_gridctl_health(s.names, s.sites),
                    shown=f"gridctl -i INV health -o json --forks {f}",
                )
            ]
        )
    control = scratch / f"ansible-cp-{s.n}"

    def fresh_control_dir() -> None:
        close_masters(control)
        control.mkdir()

    env = ansible_env(s.inv, control)
    ansible_argv = [ANSIBLE, "all", "-i", str(s.ansible_inv), "-m", "raw", "-a", query, "-f", f]
    shown = f"ansible all -i INV.yaml -m raw -a QUERY -f {f}"
    units.append(
        [
            Case(
                "ansible-cold",
                "ansible (cold)",
                ansible_argv,
                check_ansible(s.names, kind),
                env=env,
                before=fresh_control_dir,
                shown=shown + "  # fresh ControlPath dir",
            ),
            Case(
                "ansible-warm",
                "ansible (warm)",
                ansible_argv,
                check_ansible(s.names, kind),
                env=env,
                shown=shown + "  # again at once: ControlPersist masters reused",
            ),
        ]
    )
    units.append(
        [
            Case(
                "xargs-ssh",
                "xargs ssh",
                [
                    XARGS,
                    "-P",
                    f,
                    "-I",
                    "@PORT@",
                    SSH,
                    "-o",
                    f"KexAlgorithms={XARGS_KEX}",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    f"UserKnownHostsFile={s.inv / 'known_hosts'}",
                    "-i",
                    str(s.client_key),
                    "-p",
                    "@PORT@",
                    "127.0.0.1",
                    query,
                ],
                check_xargs(s.n, kind),
                stdin=s.ports,
                shown=(
                    f"xargs -P {f} -I @PORT@ ssh -o KexAlgorithms={XARGS_KEX} -o BatchMode=yes "
                    "-o UserKnownHostsFile=INV/known_hosts -i KEY -p @PORT@ 127.0.0.1 QUERY < PORTS"
                ),
            )
        ]
    )
    return units


# --------------------------------------------------------------------------- key exchange


@dataclass
class KexNotes:
    xargs_ssh: str
    ansible: str
    gridctl: str


def find_kex_openssh(text: str) -> str:
    kex = re.search(r"kex: algorithm: ([\w@.-]+)", text)
    cipher = re.search(
        r"kex: server->client cipher: ([\w@.-]+) MAC: ([\w@.<>-]+) compression: ([\w@.-]+)", text
    )
    if not kex:
        return "not found in ssh -v output"
    return kex.group(1) + (
        f" (cipher {cipher.group(1)}, MAC {cipher.group(2)}, compression {cipher.group(3)})" if cipher else ""
    )


def detect_kex(s: Setup, scratch: Path) -> KexNotes:
    """What each tool negotiated with node000: ssh -v; ansible -vvv with ANSIBLE_SSH_VERBOSITY=1
    (its ssh at -v);
    gridctl exec with paramiko's logger at DEBUG (it logs the agreed algorithms)."""
    port = s.ports.read_text().split()[0]
    ssh_v = subprocess.run(
        [SSH, "-v", "-o", f"KexAlgorithms={XARGS_KEX}", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={s.inv / 'known_hosts'}", "-i", str(s.client_key),
         "-p", port, "127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    control = scratch / "ansible-cp-kex"
    control.mkdir(exist_ok=True)
    try:
        ans = subprocess.run(
            [ANSIBLE, "node000", "-i", str(s.ansible_inv), "-m", "raw", "-a", "true", "-vvv"],
            capture_output=True, text=True, timeout=120,
            env={**ansible_env(s.inv, control), "ANSIBLE_SSH_VERBOSITY": "1"},
        )  # fmt: skip
    finally:
        close_masters(control)
    snippet = (
        "import logging, sys\n"
        "h = logging.StreamHandler(sys.stderr)\n"
        "log = logging.getLogger('paramiko'); log.addHandler(h); log.setLevel(logging.DEBUG)\n"
        "import paramiko\n"
        "print('paramiko', paramiko.__version__, file=sys.stderr)\n"
        f"sys.argv = ['gridctl', '-i', {str(s.inv)!r}, 'exec', 'node000', '--', 'true']\n"
        "from gridctl.cli.main import main\n"
        "main()\n"
    )
    grid = subprocess.run([PY, "-c", snippet], capture_output=True, text=True, timeout=60, cwd=REPO)
    g = grid.stderr
    kex = re.search(r"^Kex: (.+)$", g, re.M)
    cipher = re.search(r"^Cipher: (.+)$", g, re.M)
    mac = re.search(r"^MAC: (.+)$", g, re.M)
    version = re.search(r"^paramiko (\S+)$", g, re.M)
    gridctl = (
        f"{kex.group(1)} (paramiko {version.group(1) if version else '?'}; "
        f"cipher {cipher.group(1) if cipher else '?'}, MAC {mac.group(1) if mac else '?'})"
        if kex
        else "not found in paramiko's debug log"
    )
    return KexNotes(
        xargs_ssh=find_kex_openssh(ssh_v.stderr),
        ansible=find_kex_openssh(ans.stdout + ans.stderr),
        gridctl=gridctl,
    )


# --------------------------------------------------------------------------- report


@dataclass
class SizeResult:
    n: int
    cases: list[Case]
    health_measured: bool

    def get(self, key: str) -> Case | None:
        return next((c for c in self.cases if c.key == key), None)


def fmt_mb(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def peers(res: SizeResult) -> tuple[Case, Case, Case]:
    x, cold, warm = res.get("xargs-ssh"), res.get("ansible-cold"), res.get("ansible-warm")
    assert x is not None and cold is not None and warm is not None
    return x, cold, warm


def ratio_text(case: Case, res: SizeResult) -> str:
    x, cold, warm = peers(res)
    if case.key == "xargs-ssh":
        return "1.00× (floor)"
    if case.key == "startup-floor":
        return "start-up only: interpreter, imports, inventory load"
    parts = [f"{case.median / x.median:.2f}× xargs ssh"]
    if case.key.startswith("gridctl"):
        parts.append(
            f"ansible cold {cold.median / case.median:.2f}× slower, warm {warm.median / case.median:.2f}×"
        )
    return ", ".join(parts)


def judged(res: SizeResult) -> list[Case]:
    return [c for c in res.cases if c.key in ("gridctl-exec", "gridctl-health")]


def verdicts(case: Case, res: SizeResult) -> list[str]:
    x, cold, warm = peers(res)
    vs_x = case.median / x.median

    def mark(ok: bool) -> str:
        return "**PASS**" if ok else "**FAIL**"

    out = [
        f"≤ {RATIO_XARGS_MAX}× xargs ssh: {vs_x:.2f}× {mark(vs_x <= RATIO_XARGS_MAX)}",
        f"≥ {RATIO_ANSIBLE_MIN}× faster than ansible: cold {cold.median / case.median:.2f}× "
        f"{mark(cold.median / case.median >= RATIO_ANSIBLE_MIN)}, warm {warm.median / case.median:.2f}× "
        f"{mark(warm.median / case.median >= RATIO_ANSIBLE_MIN)}",
    ]
    if res.n == RSS_TARGET_NODES:
        peak = max(r.maxrss_kb for r in case.runs) / 1024
        out.append(
            f"peak RSS ≤ {RSS_TARGET_MB:.0f} MB: {peak:.0f} MiB {mark(peak * 1.048576 <= RSS_TARGET_MB)}"
        )
    return out


TABLE_HEAD = (
    "| command | median | min | max | ratio | controller CPU | controller peak RSS | machine busy |\n"
    "|---|---:|---:|---:|---|---:|---:|---:|"
)


def table_row(case: Case, res: SizeResult) -> str:
    cpu = statistics.median(r.cpu_s for r in case.runs)
    rss = max(r.maxrss_kb for r in case.runs)
    busy = statistics.median(r.busy for r in case.runs)
    return (
        f"| {case.label} | {ib.fmt_s(case.median)} | {ib.fmt_s(min(case.times))} "
        f"| {ib.fmt_s(max(case.times))} | {ratio_text(case, res)} | {cpu:.2f} s | {fmt_mb(rss)} "
        f"| {busy * 100:.0f}% |"
    )


def size_notes(res: SizeResult) -> list[str]:
    """Verdicts, and what the start-up floor says about the gap to xargs."""
    x, _, _ = peers(res)
    lines = [f"- `{c.label}`, {res.n} nodes: " + "; ".join(verdicts(c, res)) for c in judged(res)]
    floor = res.get("startup-floor")
    grid = res.get("gridctl-exec")
    if floor is not None and grid is not None:
        fan = grid.median - floor.median
        lines.append(
            f"- start-up vs fan-out, {res.n} nodes: gridctl's fixed start-up (interpreter, imports, "
            f"inventory: `site ls`) is {ib.fmt_s(floor.median)} of `gridctl exec`'s {ib.fmt_s(grid.median)}; "
            f"the rest, {ib.fmt_s(fan)}, is {fan / x.median:.2f}× the whole xargs ssh run. Controller CPU: "
            f"gridctl exec {statistics.median(r.cpu_s for r in grid.runs):.2f} s in one process, the "
            f"{res.n} ssh clients of xargs {statistics.median(r.cpu_s for r in x.runs):.2f} s together."
        )
    return lines


QUERY_TEXT = {
    "probe": "`gridctl.core.health.nvidia_smi.build_node_probe_command()`: the POSIX sh script `gridctl health` "
    "runs on each node (`nvidia-smi --query-gpu=... --format=csv,noheader,nounits`, "
    "`--query-remapped-rows`, `-q -d TEMPERATURE`, `journalctl -k` for XIDs: 4 stand-in calls), "
    "passed as one argument to every tool",
    "plain": "`nvidia-smi --query-gpu=<gridctl's 14 fields> --format=csv,noheader,nounits`, the same string "
    "for every tool",
}


def build_markdown(
    results: Sequence[SizeResult],
    env: dict[str, str],
    command: str,
    args: argparse.Namespace,
    kex: KexNotes | None,
    limits: str,
    shown: dict[str, str],
    health_note: str,
) -> str:
    busy = [r.busy for res in results for c in res.cases if c.key != "startup-floor" for r in c.runs]
    rc_note = (
        "The nodes' login shell (root's bash) sources ~/.bashrc as on this machine (`--login-rc`)."
        if args.login_rc
        else "The nodes' login shell (root's bash) is kept from sourcing ~/.bashrc (`SHLVL=1` added to the "
        "harness's `SetEnv` line): on this machine that file runs `pyenv init`, ~110 ms of CPU per command "
        "plus `pyenv rehash`'s lock, which 50 concurrent sessions queue on for up to 60 s (200 such shells, "
        "50 at a time and no SSH at all: median 6.5 s, max 31 s each), so a node stalls past the tools' "
        "deadlines at random. `--login-rc` measures with it."
    )
    lines = [
        "## Fleet fan-out: `gridctl exec` / `gridctl health` vs Ansible and `xargs -P ssh`",
        "",
        f"- date: {env['date']}",
        f"- machine: {env['nproc']} CPUs ({env['cpu']}), {env['os']}, {env['python']}, {env['gridctl']}, "
        f"{env['ansible']}, {env['openssh']}",
        f"- source: {env['tree']}",
        f"- command: `{command}` (from the repository root; `python` is the interpreter of the environment "
        "gridctl and ansible-core are installed in)",
        f"- fleet: {' and '.join(str(r.n) for r in results)} real `sshd -D` servers on 127.0.0.1, "
        "started by the suite's harness (tests/fleet/sshd.py: one per node, each with its own ed25519 host "
        f"key, `MaxStartups 500:30:1000`), stand-in nvidia-smi in state `{GPU_STATE}` (8 GPUs per node); "
        "inventory from the suite's `write_fleet_inventory`, host keys pinned in INV/known_hosts, "
        f"{NODES_PER_SITE} nodes per site, each site's endpoint a `FakeEndpoint` (tests/fleet/endpoint.py) "
        f"in the benchmark process. {limits}; sshd's MaxStartups is far above the 50 connections open at "
        f"once, so nothing else needed raising. {rc_note}",
        f"- query (QUERY): {QUERY_TEXT[args.query]}.",
        f"- what: wall time of each whole command (`time.perf_counter` around the process), {args.runs} runs "
        "each per size, interleaved round-robin (the order rotates every round; Ansible cold is followed at "
        f"once by Ansible warm), after one discarded warm-up round at {results[0].n} nodes. Every run is "
        "checked to have reached every node and read its 8 GPUs (exit status and parsed output: JSON for "
        "gridctl, one `| CHANGED | rc=0 >>` block per host for Ansible, one complete probe answer per node "
        "and exit 0 for xargs), else the benchmark stops; `gridctl health` must also report every node and "
        f"site `ok` and exit 0. `--forks {args.forks}` / `-f {args.forks}` / `-P {args.forks}` everywhere; "
        "host keys are checked against INV/known_hosts by every tool.",
        f"- controller CPU and peak RSS come from {rusage_argv([], Path())[1]} around each command: CPU is "
        "user + system of the command and the children it waited for (median of runs); peak RSS is "
        "`ru_maxrss`, the largest single process among them (max of runs; for Ansible one process of "
        "several, for xargs one ssh; Ansible's ControlPersist masters are daemons, in neither). Machine "
        "busy: share of both CPUs busy during the run, from /proc/stat (median).",
        "- **caveat: the node side shares the controller's 2 CPUs.** The sshd servers, their per-connection "
        "processes and the stand-in nvidia-smi scripts run on the same 2 cores as the tool measured, so "
        "every tool competes with the nodes for CPU: the machine was "
        f"{min(busy) * 100:.0f}–{max(busy) * 100:.0f}% busy during the fan-out runs. The node-side work is "
        "the same for every tool and dominates the times, which compresses the ratios toward 1 compared with "
        "a real fleet, where each node does its part on its own CPUs. The machine is also shared and noisy: "
        "compare ratios within this run, not absolute times across runs.",
        "",
        "Commands (INV: the inventory dir; INV.yaml: `gridctl -i INV inventory export --format ansible`; "
        "KEY: the inventory's client key; PORTS: one node port per line):",
        "",
    ]
    lines += [f"- {label}: `{cmd}`" for label, cmd in shown.items()]
    lines += [f"- {health_note}"] if health_note else []
    for res in results:
        lines += ["", f"### {res.n} nodes", "", TABLE_HEAD]
        lines += [table_row(c, res) for c in res.cases]
        if not res.health_measured:
            lines.append("| gridctl health | — | — | — | **not measured** (see above) | — | — | — |")
        lines += ["", *size_notes(res)]
    targets = (
        f"Targets: gridctl within {RATIO_XARGS_MAX}× the xargs ssh time, at least {RATIO_ANSIBLE_MIN}× "
        "faster than Ansible (judged against both the cold and the warm Ansible run), controller peak "
        f"memory ≤ {RSS_TARGET_MB:.0f} MB at {RSS_TARGET_NODES} nodes; medians compared."
    )
    lines += ["", targets]
    if kex is not None:
        lines += [
            "",
            "Key exchange negotiated with a node (node000):",
            "",
            f"- xargs ssh (`-o KexAlgorithms={XARGS_KEX}`; from `ssh -v`): {kex.xargs_ssh}",
            f"- ansible (OpenSSH's defaults, no KexAlgorithms; from `ansible -vvv` with "
            f"`ANSIBLE_SSH_VERBOSITY=1`): {kex.ansible}. Ansible also passes `-C` (zlib) and `-tt` "
            "(a pty) for `raw`",
            f"- gridctl (paramiko's DEBUG log of `gridctl exec node000`): {kex.gridctl}",
        ]
    return "\n".join(lines) + "\n"


def print_size(res: SizeResult) -> None:
    print(f"\n{res.n} nodes ({len(res.cases[0].runs)} runs each)")
    width = max(len(c.label) for c in res.cases)
    head = f"  {'command'.ljust(width)}  {'median':>9} {'min':>9} {'max':>9}  {'cpu':>7} {'peak rss':>9}"
    print(head + f" {'busy':>5}  ratio")
    for c in res.cases:
        cpu = statistics.median(r.cpu_s for r in c.runs)
        rss = max(r.maxrss_kb for r in c.runs)
        busy = statistics.median(r.busy for r in c.runs)
        print(
            f"  {c.label.ljust(width)}  {ib.fmt_s(c.median):>9} {ib.fmt_s(min(c.times)):>9} "
            f"{ib.fmt_s(max(c.times)):>9}  {cpu:6.2f}s {fmt_mb(rss):>9} {busy * 100:4.0f}%  "
            + ratio_text(c, res)
        )
    if not res.health_measured:
        print("  gridctl health: NOT MEASURED")
    for line in size_notes(res):
        print("  " + line.replace("**", "").replace("`", ""))


# --------------------------------------------------------------------------- main


def health_available() -> bool:
    probe = subprocess.run([GRIDCTL, "health", "--help"], capture_output=True, text=True, cwd=REPO)
    return probe.returncode == 0


def tool_versions() -> dict[str, str]:
    ans = subprocess.run([ANSIBLE, "--version"], capture_output=True, text=True)
    ssh = subprocess.run([SSH, "-V"], capture_output=True, text=True)
    first = ans.stdout.splitlines()[0] if ans.returncode == 0 and ans.stdout else "ansible ?"
    return {"ansible": first.replace("[", "").replace("]", ""), "openssh": ssh.stderr.strip().split(",")[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", default="50,200", help="fleet sizes, comma-separated (default 50,200)")
    p.add_argument(
        "--runs", type=int, default=3, metavar="R", help="timed runs of each tool per size (default 3)"
    )
    p.add_argument(
        "--forks", type=int, default=50, metavar="F", help="parallelism of every tool (default 50)"
    )
    p.add_argument(
        "--query",
        choices=["probe", "plain"],
        default="probe",
        help="probe: gridctl's node probe script (default); plain: the bare nvidia-smi --query-gpu",
    )
    p.add_argument("--no-health", action="store_true", help="leave `gridctl health` out")
    p.add_argument(
        "--login-rc",
        action="store_true",
        help="let the nodes' login shell source the user's ~/.bashrc (default: skipped, see skip_login_rc)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the fleet's temp dir (servers are stopped anyway)"
    )
    p.add_argument(
        "--write-readme", action="store_true", help="rewrite this benchmark's section of bench/README.md"
    )
    args = p.parse_args(argv)
    try:
        args.sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    except ValueError:
        p.error("--nodes takes numbers, e.g. 50,200")
    if not args.sizes or min(args.sizes) < 1 or args.runs < 1 or args.forks < 1:
        p.error("--nodes, --runs and --forks must be at least 1")
    return args


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP: unwind like Ctrl-C, so the finally blocks stop every server."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    for tool in (GRIDCTL, ANSIBLE, SSH, XARGS):
        if not (Path(tool).exists() or shutil.which(tool)):
            raise BenchError(f"{tool} not found; run with the environment's python (gridctl + ansible-core)")
    from tests.fleet.endpoint import FakeEndpoint
    from tests.fleet.sshd import Fleet

    health = not args.no_health and health_available()
    health_note = (
        ""
        if health or args.no_health
        else "gridctl health: **not measured**: `gridctl health --help` failed when this run started"
    )
    env = {**ib.machine(), **tool_versions()}
    print(
        f"{env['date']}: {env['nproc']} CPUs ({env['cpu']}), {env['python']}, {env['gridctl']}, "
        f"{env['ansible']}"
    )
    limits = raise_fd_limit(max(args.sizes) * 8 + 1024)
    print(f"  {limits}")
    query = build_query(args.query)
    scratch = Path(tempfile.mkdtemp(prefix="gridctl-fleet-bench-"))
    fleet = None
    stubs: list[Any] = []
    results: list[SizeResult] = []
    kex: KexNotes | None = None
    shown: dict[str, str] = {}
    try:
        fleet = Fleet(scratch / "fleet", [GPU_STATE] * max(args.sizes))
        if not args.login_rc:
            skip_login_rc(fleet)
        t0 = time.perf_counter()
        fleet.start()
        print(f"  started {len(fleet.nodes)} sshd nodes in {time.perf_counter() - t0:.1f} s")
        # one endpoint per site, serving the model write_fleet_inventory lists (one shared
        # server would overflow its listen backlog of 5: SYNs dropped, 1 s retransmits)
        endpoints = {}
        for site in site_names(max(args.sizes)):
            stubs.append(FakeEndpoint())
            endpoints[site] = stubs[-1].url
        setups = []
        for n in args.sizes:
            inv = write_inventory(scratch / f"inv-{n}", fleet, n, endpoints)
            exported = subprocess.run(
                [GRIDCTL, "-i", str(inv), "inventory", "export", "--format", "ansible"],
                capture_output=True, text=True, cwd=REPO,
            )  # fmt: skip
            if exported.returncode != 0:
                raise BenchError(f"gridctl inventory export failed: {exported.stderr[-1500:]}")
            ansible_inv = scratch / f"inv-{n}.yaml"
            ansible_inv.write_text(exported.stdout)
            ports = scratch / f"ports-{n}"
            ports.write_text("".join(f"{node.port}\n" for node in fleet.nodes[:n]))
            names = {node.name for node in fleet.nodes[:n]}
            sites = len(list((inv / "sites").glob("*.yaml")))
            setups.append(Setup(n, inv, ansible_inv, ports, names, sites, fleet.client_key))
        kex = detect_kex(setups[0], scratch)
        print(f"  kex: xargs ssh {kex.xargs_ssh}; ansible {kex.ansible}; gridctl {kex.gridctl}")
        for i, s in enumerate(setups):
            units = build_units(s, query, args.query, args.forks, scratch, health)
            if i == 0:
                warm = build_units(s, query, args.query, args.forks, scratch, health)
                time_units(warm, 1, scratch, f"{s.n} nodes, warm-up")
            time_units(units, args.runs, scratch, f"{s.n} nodes")
            for unit in units:
                for case in unit:
                    shown.setdefault(case.label, case.shown)
            close_masters(scratch / f"ansible-cp-{s.n}")
            res = SizeResult(s.n, [c for u in units for c in u], health)
            results.append(res)
            print_size(res)
    finally:
        for d in scratch.glob("ansible-cp-*"):
            with contextlib.suppress(Exception):
                close_masters(d)
        for stub in stubs:
            stub.close()
        if fleet is not None:
            fleet.stop()
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if not health and not args.no_health and health_available():
        health_note = (
            "gridctl health: **not measured**: `gridctl health` appeared only after this run started; rerun"
        )
    if args.write_readme:
        cmd = [
            "PYTHONPATH=.",
            "python",
            "bench/fleet_bench.py",
            "--nodes",
            args.nodes,
            "--runs",
            str(args.runs),
        ]
        cmd += ["--forks", str(args.forks)] if args.forks != 50 else []
        cmd += ["--query", args.query] if args.query != "probe" else []
        cmd += ["--no-health"] if args.no_health else []
        cmd += ["--login-rc"] if args.login_rc else []
        cmd.append("--write-readme")
        command = " ".join(cmd[:1]) + " " + shlex.join(cmd[1:])
        body = build_markdown(results, env, command, args, kex, limits, shown, health_note)
        ib.write_readme({SECTION: body})
        print(f"\nwrote {ib.README.relative_to(REPO)}: {SECTION}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:  # servers and temp dir already cleaned up by main's finally
        why = f" ({exc})" if str(exc) else ""
        print(f"\nfleet_bench: interrupted{why}; servers stopped", file=sys.stderr)
        sys.exit(130)
