"""A systemd to start units under, for tests: the machine's own when it is PID 1, else a
throwaway one booted as PID 1 of new PID, mount and cgroup namespaces (root only).

The throwaway systemd sees only the units in its own directory (``SYSTEMD_UNIT_PATH``): empty
boot targets, journald, and whatever the test installs; its /run and journal are tmpfs. It
shares the host's file systems and network, so a unit it starts reads the test's files and
talks to servers on loopback. Stopping it kills every process in its PID namespace, and its
cgroups are removed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

SYSTEMD = Path("/lib/systemd/systemd")
CGROUP = Path("/sys/fs/cgroup")
EMPTY_TARGETS = ("sysinit.target", "basic.target", "shutdown.target",
                 "network-online.target", "multi-user.target")  # fmt: skip
JOURNALD_UNITS = ("systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket")

BOOT = """set -e
mount --make-rprivate /
{cgroups}
mount -t tmpfs -o mode=755 tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
exec env -i container=gridctl-test SYSTEMD_UNIT_PATH={units} PATH=/usr/sbin:/usr/bin:/sbin:/bin \\
    {systemd} --system --unit=gridtest.target --log-target=journal --log-level=warning
"""


def why_not_available() -> str | None:
    """None when ``systemd_host()`` can give a systemd here; else why not."""
    if Path("/run/systemd/system").is_dir():
        return None if os.geteuid() == 0 else "systemd is PID 1 but installing a system unit needs root"
    if os.geteuid() != 0:
        return "systemd is not PID 1 here, and booting one in a namespace needs root"
    if not SYSTEMD.exists() or not shutil.which("unshare") or not shutil.which("nsenter"):
        return f"systemd is not PID 1 here, and {SYSTEMD}, unshare or nsenter is missing"
    if not (CGROUP / "unified").is_dir() and not (CGROUP / "cgroup.controllers").exists():
        return "systemd is not PID 1 here, and there is no cgroup2 hierarchy to boot one on"
    if not all(os.access(CGROUP / name, os.W_OK) for name in _hierarchies()):
        return "systemd is not PID 1 here, and the cgroup hierarchy is read-only"
    probe = subprocess.run(
        ["unshare", "--pid", "--mount", "--cgroup", "--fork", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"systemd is not PID 1 here, and namespaces cannot be made: {probe.stderr.strip()}"
    return None


class Systemd:
    """Run systemctl and journalctl against one systemd; install and start units."""

    def __init__(self, prefix: Sequence[str], units: Path) -> None:
        self.prefix = list(prefix)  # nsenter into the throwaway systemd's namespaces, or nothing
        self.units = units

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, timeout=timeout)

    def install(self, name: str, text: str) -> None:
        (self.units / name).write_text(text)
        self.systemctl("daemon-reload").check_returncode()

    def uninstall(self, name: str) -> None:
        self.systemctl("stop", name)
        with contextlib.suppress(FileNotFoundError):
            (self.units / name).unlink()
        self.systemctl("daemon-reload")

    def journal(self, unit: str) -> str:
        r = self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit)
        return r.stdout + r.stderr

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "--value", "-p", prop, unit).stdout.strip()


@contextlib.contextmanager
def systemd_host(scratch: Path) -> Iterator[Systemd]:
    """A systemd to install units into (see the module's docstring)."""
    if Path("/run/systemd/system").is_dir():
        units = Path("/run/systemd/system")
        yield Systemd([], units)
        return
    units = scratch / "units"
    units.mkdir()
    for name in EMPTY_TARGETS:
        (units / name).write_text("[Unit]\nDescription=empty target for tests\n")
    journald = [n for n in JOURNALD_UNITS if (Path("/lib/systemd/system") / n).exists()]
    for name in journald:
        (units / name).symlink_to(Path("/lib/systemd/system") / name)
    sockets = " ".join(n for n in journald if n.endswith(".socket"))
    (units / "gridtest.target").write_text(f"[Unit]\nDescription=boot target for tests\nWants={sockets}\n")
    cgroup = f"gridctl-test-{uuid.uuid4().hex[:12]}"
    hierarchies = _hierarchies()
    made = [CGROUP / name / cgroup for name in hierarchies]
    for d in made:
        d.mkdir()
    # in the new cgroup namespace, the hierarchies mounted again show this cgroup as their root
    mounts = "\n".join(
        f"umount {CGROUP / name}; mount -t {fs} -o {opts} gridtest-{fs} {CGROUP / name}"
        for name, (fs, opts) in _mount_specs(hierarchies).items()
    )
    script = BOOT.format(cgroups=mounts, units=shlex.quote(str(units)), systemd=SYSTEMD)
    # the shell joins the new cgroup first: unshare --cgroup then makes it the namespace's root
    enter = "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}\n" for d in made)
    unshare = ["unshare", "--pid", "--mount", "--cgroup", "--fork", "--mount-proc", "sh", "-c", script]
    proc = subprocess.Popen(
        ["sh", "-c", enter + "exec " + shlex.join(unshare)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    pid1 = None
    try:
        pid1 = _pid1(proc)
        host = Systemd(["nsenter", "-t", str(pid1), "-m", "-p"], units)
        _wait_running(host, proc)
        yield host
    finally:
        if pid1 is not None:  # SIGKILL to the namespace's PID 1 takes every process in it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, 9)
        _reap(proc)
        for d in made:
            _remove_cgroup(d)


def _hierarchies() -> dict[str, str]:
    """Mount point name under /sys/fs/cgroup -> the hierarchy systemd needs there."""
    if (CGROUP / "cgroup.controllers").exists():
        return {"": "cgroup2"}
    found = {"unified": "cgroup2"}
    if (CGROUP / "systemd" / "cgroup.procs").exists():
        found["systemd"] = "name=systemd"
    return found


def _mount_specs(hierarchies: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {
        name: ("cgroup2", "rw") if kind == "cgroup2" else ("cgroup", f"none,{kind}")
        for name, kind in hierarchies.items()
    }


def _pid1(proc: subprocess.Popen[bytes]) -> int:
    """The host PID of the namespace's PID 1 (unshare's child)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if children:
                return int(children[0])
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"could not boot systemd in a namespace: {_stderr(proc)}")


def _wait_running(host: Systemd, proc: subprocess.Popen[bytes]) -> None:
    state = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"systemd in a namespace exited {proc.returncode}: {_stderr(proc)}")
        state = host.systemctl("is-system-running", timeout=10).stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"systemd in a namespace did not finish booting ({state!r})")


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None or proc.stderr is None:
        return "(still running)"
    return proc.stderr.read().decode(errors="replace")[-2000:]


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _remove_cgroup(root: Path) -> None:
    """The cgroup tree the throwaway systemd made, leaves first (once its processes are gone)."""
    deadline = time.monotonic() + 10
    while root.exists() and time.monotonic() < deadline:
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()
        if root.exists():
            time.sleep(0.05)
