"""Benchmark ``gridctl node provision`` against an Ansible playbook doing the same pushes.

Brings up ``--nodes`` real OpenSSH servers on 127.0.0.1 (the test suite's
harness, tests/fleet/sshd.py), one site per node, each node with its own
prefix, and provisions every node with the ``lab`` profile: four files
rendered per node (the site's one-site lab inventory, grid.yaml and
sites/SITE.yaml, its env file, 0644, and its control script, 0755) and, when
any changed, the control script's ``restart`` (gridctl's real lab site,
``python -m gridctl.lab.process`` under this interpreter, started with
setsid/nohup), then a wait until the site's endpoint serves its model.

Both tools do the same work on the same fleet:

``gridctl``
    ``gridctl -i INV node provision all --yes --forks F -o json``: per node one
    SSH command reads checksums (and preflight facts); changed files go up in
    one more command (base64, temp file, rename), then the restart, then the
    endpoint wait over HTTP from the controller.
``ansible``
    ``ansible-playbook -i INV.yaml -f F provision.yml`` on the inventory from
    ``gridctl inventory export --format ansible``: a ``file`` task (the
    files' directories) and a ``copy`` task (the same four files, rendered by
    gridctl beforehand, untimed, with the same modes) looping over the node's
    files, notifying a ``command`` handler (the same restart) that notifies a ``uri``
    handler (the same endpoint wait, from the controller: ``delegate_to:
    localhost``, ``until`` the model is listed). ``gather_facts: false``,
    ``ANSIBLE_PIPELINING=True``, ``ansible_python_interpreter=/usr/bin/python3``,
    ControlPersist as Ansible's default (60 s); the nodes' sshd offers SFTP.

Two runs of each, timed as whole processes: **first** (every node's prefix
emptied and its server stopped beforehand, untimed; for Ansible a fresh
ControlPath dir, so new connections) and **no-op** (at once again: nothing to
change, nothing restarted; Ansible reuses its ControlPersist masters). Every
run is checked: first runs changed every node and left a server up; no-op runs
changed nothing and the servers' pids are unchanged.

Run from the repository root with the interpreter of the environment where
gridctl and ansible-core are installed::

    PYTHONPATH=. python bench/provision_bench.py                 # 50 nodes, 3 rounds
    PYTHONPATH=. python bench/provision_bench.py --write-readme  # and rewrite its README section

Speed is measured here, never asserted in tests: the target (gridctl's no-op
at most half of Ansible's) is reported as PASS/FAIL; the script exits 0 either
way (non-zero when a run does not do what it should, or a tool is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import inventory_bench as ib  # noqa: E402  (README sections, machine facts, formatting)

PY = sys.executable
BIN = Path(PY).parent
GRIDCTL = str(BIN / "gridctl") if (BIN / "gridctl").exists() else "gridctl"
PLAYBOOK_BIN = str(BIN / "ansible-playbook") if (BIN / "ansible-playbook").exists() else "ansible-playbook"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
NODE_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else (shutil.which("python3") or PY)
SECTION = "provision"
TARGET_RATIO = 0.5  # gridctl's no-op run takes at most half of Ansible's
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


class BenchError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"provision_bench: {message}")


# --------------------------------------------------------------------------- fleet


def quiet_fleet(root: Path, n: int):  # type: ignore[no-untyped-def]
    """The suite's Fleet, with each sshd offering SFTP (as real nodes do; Ansible's copy
    uses it) and SHLVL=1 in the session so bash skips ~/.bashrc (here root's runs
    ``pyenv init``: ~110 ms of CPU per command and a lock 50 sessions queue on; node-side
    cost the same for both tools, but it drowns what is measured; see fleet_bench.py)."""
    from tests.fleet.sshd import Fleet, SshdNode

    class Node(SshdNode):
        def config(self) -> str:
            text = super().config()
            if "\nSetEnv " not in text:
                raise BenchError("the harness's sshd_config has no SetEnv line to extend")
            return text.replace("\nSetEnv ", "\nSetEnv SHLVL=1 ", 1) + "Subsystem sftp internal-sftp\n"

    fleet = Fleet(root, ["healthy-h100x8"] * n)
    fleet.nodes = [Node(x.name, x.workdir, x.authorized_keys, state=x.state) for x in fleet.nodes]
    return fleet


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed) if hard > 0 else needed, hard))


# --------------------------------------------------------------------------- ansible side


PLAYBOOK = """\
# Generated by bench/provision_bench.py: the same pushes as `gridctl node provision` (lab profile).
- hosts: all
  gather_facts: false
  tasks:
    - name: the directories of the node's lab files
      ansible.builtin.file:
        path: "{{ item.dest | dirname }}"
        state: directory
      loop: "{{ bench_files }}"
    - name: push the node's rendered lab files (env file, control script)
      ansible.builtin.copy:
        src: "{{ item.src }}"
        dest: "{{ item.dest }}"
        mode: "{{ item.mode }}"
      loop: "{{ bench_files }}"
      notify: restart the lab site
  handlers:
    - name: restart the lab site
      ansible.builtin.command: "{{ bench_restart }}"
      notify: wait for the endpoint
    - name: wait for the endpoint
      ansible.builtin.uri:
        url: "{{ bench_endpoint }}/v1/models"
        return_content: true
      register: models
      until: models.status == 200 and bench_model in models.content
      retries: 120
      delay: 0.5
      delegate_to: localhost
"""


def write_ansible_side(scratch: Path, inv: Path, jobs: list) -> tuple[Path, Path]:  # type: ignore[type-arg]
    """The exported inventory, host_vars naming each node's files, and the playbook."""
    out = subprocess.run(
        [GRIDCTL, "-i", str(inv), "inventory", "export", "--format", "ansible"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    adir = scratch / "ansible"
    (adir / "host_vars").mkdir(parents=True)
    (adir / "group_vars").mkdir()
    inventory = adir / "inventory.yaml"
    inventory.write_text(out)
    (adir / "group_vars" / "all.yml").write_text(f"ansible_python_interpreter: {NODE_PYTHON}\n")
    tree = adir / "files"
    for job in jobs:
        r = job.render
        files = []
        for f in r.files:
            local = tree / job.node.name / os.path.relpath(f.dest, r.prefix)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(f.content)
            files.append({"src": str(local), "dest": f.dest, "mode": f"{f.mode:04o}"})
        host = {
            "bench_files": files,
            "bench_restart": r.restart[0],
            "bench_endpoint": r.verify.url,
            "bench_model": r.verify.models[0],
        }
        (adir / "host_vars" / f"{job.node.name}.yml").write_text(json.dumps(host) + "\n")
    playbook = adir / "provision.yml"
    playbook.write_text(PLAYBOOK)
    return inventory, playbook


def ansible_env(inv: Path, control_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        {
            "ANSIBLE_SSH_COMMON_ARGS": f"-o UserKnownHostsFile={inv / 'known_hosts'}",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_LOCALHOST_WARNING": "False",
        }
    )
    return env


def close_masters(control_dir: Path) -> None:
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


# --------------------------------------------------------------------------- runs and checks


@dataclass
class Case:
    key: str
    label: str
    argv: list[str]
    check: Callable[[str, str, int], None]
    env: dict[str, str] | None = None
    before: Callable[[], None] | None = None
    shown: str = ""
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def run_once(case: Case, scratch: Path) -> float:
    if case.before is not None:
        case.before()
    out_path, err_path = scratch / f"{case.key}.out", scratch / f"{case.key}.err"
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            case.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=case.env, cwd=REPO
        )
        proc.wait()
        elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    case.check(stdout, stderr, proc.returncode)
    case.times.append(elapsed)
    case.cpu.append((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime))
    return elapsed


class Nodes:
    """The nodes' side: prefixes, pid files, servers."""

    def __init__(self, grid) -> None:  # type: ignore[no-untyped-def]
        self.grid = grid
        self.names = [n.name for n in grid.fleet.nodes]

    def pids(self) -> dict[str, int | None]:
        return {n: self.grid.pid(n) for n in self.names}

    def reset(self) -> None:
        """Stop every server and empty every prefix (untimed, before a first run)."""
        self.grid.stop_servers()
        deadline = time.monotonic() + 10
        for pid in [p for p in self.pids().values() if p]:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.02)
        for n in self.names:
            prefix = self.grid.prefix(n)
            shutil.rmtree(prefix, ignore_errors=True)
            prefix.mkdir(parents=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


Pids = dict[str, dict[str, int | None]]  # tool -> node -> the server pid its first run left
Check = Callable[[str, str, int], None]


def check_gridctl(nodes: Nodes, expect: str, pids: Pids) -> Check:
    def check(stdout: str, stderr: str, rc: int) -> None:
        try:
            rows = json.loads(stdout)
        except ValueError:
            raise BenchError(f"gridctl exited {rc} without JSON: {stderr[-1500:]}") from None
        bad = [f"{r['node']}: {r['status']} {r['error']}" for r in rows if r["status"] != expect]
        if rc != 0 or bad or len(rows) != len(nodes.names):
            raise BenchError(f"gridctl ({expect}) exited {rc}: {'; '.join(bad[:5])} {stderr[-800:]}")
        _check_nodes(nodes, expect, pids, "gridctl")

    return check


def check_ansible(nodes: Nodes, expect: str, pids: Pids) -> Check:
    def check(stdout: str, stderr: str, rc: int) -> None:
        recap = {m.group(1): tuple(int(m.group(i)) for i in range(2, 6)) for m in RECAP.finditer(stdout)}
        if rc != 0 or set(recap) != set(nodes.names):
            fatal = [ln for ln in stdout.splitlines() if ln.startswith(("fatal:", "failed:"))]
            detail = "\n".join(fatal[:5]) or f"{stdout[-1500:]} {stderr[-800:]}"
            raise BenchError(f"ansible exited {rc}, recap for {len(recap)} hosts: {detail}")
        for host, (_ok, changed, unreachable, failed) in recap.items():
            if unreachable or failed or (changed == 0) == (expect == "changed"):
                raise BenchError(
                    f"ansible ({expect}): {host}: changed={changed} unreachable={unreachable} failed={failed}"
                )
        _check_nodes(nodes, expect, pids, "ansible")

    return check


def _check_nodes(nodes: Nodes, expect: str, pids: Pids, tool: str) -> None:
    now = nodes.pids()
    if not all(now.values()):
        raise BenchError(f"{tool}: no server pid on {[n for n, p in now.items() if not p][:5]}")
    if expect == "changed":
        pids[tool] = now
    elif now != pids.get(tool):
        raise BenchError(f"{tool}: a no-op run restarted servers")


# --------------------------------------------------------------------------- main


@dataclass
class Result:
    cases: dict[str, Case]
    env: dict[str, str]
    args: argparse.Namespace
    versions: dict[str, str]


def build_cases(
    nodes: Nodes, inv: Path, ansible_inv: Path, playbook: Path, scratch: Path, forks: int
) -> list[list[Case]]:
    pids: Pids = {}
    control = scratch / "ansible-cp"

    def fresh() -> None:
        nodes.reset()

    def fresh_ansible() -> None:
        nodes.reset()
        close_masters(control)
        control.mkdir()

    g_argv = [
        GRIDCTL,
        "-i",
        str(inv),
        "node",
        "provision",
        "all",
        "--yes",
        "--forks",
        str(forks),
        "-o",
        "json",
    ]
    g_shown = f"gridctl -i INV node provision all --yes --forks {forks} -o json"
    a_argv = [PLAYBOOK_BIN, "-i", str(ansible_inv), "-f", str(forks), str(playbook)]
    a_shown = f"ansible-playbook -i INV.yaml -f {forks} provision.yml"
    env = ansible_env(inv, control)
    gridctl = [
        Case("gridctl-first", "gridctl, first run", g_argv, check_gridctl(nodes, "changed", pids)),
        Case("gridctl-noop", "gridctl, no-op re-run", g_argv, check_gridctl(nodes, "unchanged", pids)),
    ]
    gridctl[0].before = fresh
    ansible = [
        Case("ansible-first", "ansible, first run", a_argv, check_ansible(nodes, "changed", pids), env=env),
        Case(
            "ansible-noop", "ansible, no-op re-run", a_argv, check_ansible(nodes, "unchanged", pids), env=env
        ),
    ]
    ansible[0].before = fresh_ansible
    for case in gridctl:
        case.shown = g_shown
    ansible[0].shown, ansible[1].shown = a_shown, a_shown + "  # at once: masters reused"
    return [gridctl, ansible]


def measure(args: argparse.Namespace) -> Result:
    from gridctl.inventory.load import load_inventory
    from gridctl.provision.profile import shown_root
    from gridctl.provision.rollout import build_jobs
    from gridctl.templating import builtin_templates_dir
    from tests.provision.conftest import LAB_SERVER, Grid

    for tool in (GRIDCTL, PLAYBOOK_BIN):
        if shutil.which(tool) is None and not os.path.exists(tool):
            raise BenchError(f"{tool} not found; install gridctl and ansible-core in this environment")
    raise_fd_limit(8 * args.nodes + 256)
    scratch = Path(tempfile.mkdtemp(prefix="gridctl-provision-bench-"))
    fleet = quiet_fleet(scratch / "fleet", args.nodes)
    grid = Grid(scratch / "grid", fleet, site_vars={"lab_server": LAB_SERVER})
    control = scratch / "ansible-cp"
    nodes = Nodes(grid)
    try:
        print(f"starting {args.nodes} sshd nodes under {scratch} ...", flush=True)
        fleet.start()
        grid.write()
        inv = load_inventory(grid.inv)
        templates = builtin_templates_dir()
        jobs = build_jobs(inv, list(inv.nodes()), templates, shown_root(templates, templates))
        ansible_inv, playbook = write_ansible_side(scratch, grid.inv, jobs)
        units = build_cases(nodes, grid.inv, ansible_inv, playbook, scratch, args.forks)
        for r in range(-args.warmup, args.runs):
            label = "warm-up" if r < 0 else f"round {r + 1}/{args.runs}"
            order = units if r % 2 == 0 else units[::-1]
            for unit in order:
                for case in unit:
                    print(f"  {label}: {case.label} ...", end="", flush=True)
                    seconds = run_once(case, scratch)
                    print(f" {seconds:.2f} s", flush=True)
                    if r < 0:
                        case.times.clear()
                        case.cpu.clear()
        cases = {c.key: c for unit in units for c in unit}
        versions = {
            "ansible": _version([PLAYBOOK_BIN, "--version"]),
            "openssh": _version([SSH, "-V"], err=True),
        }
        return Result(cases, ib.machine(), args, versions)
    finally:
        with contextlib.suppress(Exception):
            close_masters(control)
        grid.stop_servers()
        fleet.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _version(argv: list[str], err: bool = False) -> str:
    p = subprocess.run(argv, capture_output=True, text=True)
    text = (p.stderr if err else p.stdout).strip().splitlines()
    return text[0].replace("[", "").replace("]", "").split(",")[0] if text else "?"


def verdict(res: Result) -> tuple[float, str]:
    ratio = res.cases["gridctl-noop"].median / res.cases["ansible-noop"].median
    ok = ratio <= TARGET_RATIO
    return ratio, ("**PASS**" if ok else "**FAIL**")


def markdown(res: Result, command: str) -> str:
    c, env, a = res.cases, res.env, res.args
    ratio, mark = verdict(res)
    first_ratio = c["gridctl-first"].median / c["ansible-first"].median
    lines = [
        f"## Provisioning: `gridctl node provision` vs an Ansible playbook ({a.nodes} nodes, lab profile)",
        "",
        f"- date: {env['date']}",
        f"- machine: {env['nproc']} CPUs ({env['cpu']}), {env['os']}, {env['python']}, {env['gridctl']}, "
        f"{res.versions['ansible']}, {res.versions['openssh']}",
        f"- source: {env['tree']}",
        f"- command: `{command}` (from the repository root; `python` is the interpreter of the environment "
        "gridctl and ansible-core are installed in)",
        f"- fleet: {a.nodes} real `sshd -D` servers on 127.0.0.1 (tests/fleet/sshd.py, plus `Subsystem sftp "
        "internal-sftp` for Ansible's copy, and `SHLVL=1` so the login shell skips ~/.bashrc), one site per "
        "node, each node with its own prefix; host keys pinned and checked by both tools.",
        "- work, the same for both: per node four files rendered from templates/provision/lab (the site's "
        "one-site lab inventory: grid.yaml and sites/SITE.yaml, its env file, all 0644, its control script "
        "0755) pushed into the node's prefix when they differ; when any changed, the control script's "
        "`restart` (gridctl's real lab site: `python -m gridctl.lab.process` under the benchmark's "
        "interpreter, started with setsid/nohup), then a wait from the controller until the site's "
        "endpoint lists its model. gridctl renders the files itself; Ansible copies the same files, rendered "
        "by gridctl beforehand (untimed), with the same modes.",
        "- gridctl: preflight and checksums in one SSH command per node; changed files in one more (base64 "
        "in the command, temp file + rename), then the restart, then the endpoint wait (httpx). "
        "Ansible: a `file` task (the files' directories) and a `copy` task looping over the four files "
        "(the other idiomatic form, one `copy` of the node's directory tree, was no faster in a 5-node "
        "trial: 10.6 s against 10.1 s, medians of 3 no-op runs), a "
        "`command` handler (restart) and a `uri` handler (`until` the model is listed, `delegate_to: "
        "localhost`); `gather_facts: false`, "
        "pipelining on, `ansible_python_interpreter` set (no discovery), ControlPersist as default.",
        f"- what: wall time of each whole command (`time.perf_counter` around the process), {a.runs} rounds "
        f"after {a.warmup} warm-up round(s); a round is gridctl first + no-op and Ansible first + no-op, the "
        "order of the two tools alternating. **first**: every prefix emptied and every server stopped "
        "beforehand (untimed), Ansible with a fresh ControlPath dir; **no-op**: the same command again at "
        "once (Ansible reuses its masters). Every run is checked: first runs changed every node and left a "
        "server running; no-op runs changed nothing and every server's pid is unchanged. Controller CPU: "
        f"user + system of the command and its waited-for children (median). `--forks {a.forks}` / `-f "
        f"{a.forks}`.",
        "- **caveat**: the 50 sshd servers, the remote shells and the lab servers share the same 2 CPUs with "
        "the tool measured (and with other work on this shared machine), so absolute times are inflated; "
        "compare the ratios of the same round.",
        "",
        "Commands (INV: the inventory dir; INV.yaml: `gridctl -i INV inventory export --format ansible`, "
        "with `host_vars/` naming each node's files and `group_vars/all.yml` its interpreter):",
        "",
        f"- gridctl: `{c['gridctl-first'].shown}`",
        f"- ansible: `{c['ansible-first'].shown}` (the playbook is `PLAYBOOK` in bench/provision_bench.py)",
        "",
        "| run | median | min | max | controller CPU | ratio gridctl / ansible |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, other in (
        ("gridctl-first", "ansible-first"),
        ("ansible-first", None),
        ("gridctl-noop", "ansible-noop"),
        ("ansible-noop", None),
    ):
        case = c[key]
        r = f"{case.median / c[other].median:.2f}" if other else ""
        lines.append(
            f"| {case.label} | {ib.fmt_s(case.median)} | {ib.fmt_s(min(case.times))} | "
            f"{ib.fmt_s(max(case.times))} | {statistics.median(case.cpu):.2f} s | {r} |"
        )
    lines += [
        "",
        f"- target: gridctl's no-op re-run at most {TARGET_RATIO:g}× Ansible's: "
        f"{ratio:.2f}× ({ib.fmt_s(c['gridctl-noop'].median)} vs {ib.fmt_s(c['ansible-noop'].median)}) {mark}",
        f"- first run: gridctl {first_ratio:.2f}× Ansible's ({ib.fmt_s(c['gridctl-first'].median)} vs "
        f"{ib.fmt_s(c['ansible-first'].median)}); both include starting {a.nodes} servers and waiting "
        "for their endpoints.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=50, help="fleet size (default 50)")
    p.add_argument("--runs", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="discarded rounds first (default 1)")
    p.add_argument("--forks", type=int, default=50, help="parallelism of both tools (default 50)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir (servers are stopped anyway)")
    p.add_argument(
        "--write-readme", action="store_true", help="rewrite this benchmark's section of bench/README.md"
    )
    args = p.parse_args(argv)
    if min(args.nodes, args.runs, args.forks) < 1 or args.warmup < 0:
        p.error("--nodes, --runs and --forks must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    res = measure(args)
    shown = " ".join(["python bench/provision_bench.py", *(argv if argv is not None else sys.argv[1:])])
    text = markdown(res, shown.replace(" --write-readme", "") + " --write-readme")
    print()
    print(text)
    if args.write_readme:
        ib.write_readme({SECTION: text})
        print(f"wrote the {SECTION} section of {ib.README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
