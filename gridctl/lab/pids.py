"""The lab's process told apart from any other: a pid is the lab's only while it is alive, not a
zombie, started at the time recorded (``/proc/PID/stat``, which a recycled pid does not share) and
running ``gridctl.lab.process --state DIR``; stopping it signals that process alone."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from gridctl.core.errors import GridctlError


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22), which a recycled pid does not share."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """The process exists, is not a zombie, and (when ``start`` is given) is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return not os.path.isdir("/proc/self")  # no /proc here: trust kill(0)
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def _cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None when it cannot be read (gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw.decode("utf-8", "replace").split("\0")


def is_lab_process(pid: int, start: str | None, d: Path) -> bool:
    """``pid`` is alive and is the lab process of state directory ``d``: started when
    recorded (``start``, when known) and running ``gridctl.lab.process --state D``.
    Where there is no /proc to read, the start time (or kill 0) alone decides."""
    if not pid_alive(pid, start):
        return False
    argv = _cmdline(pid)
    if argv is None:
        return not os.path.isdir("/proc/self")
    if "gridctl.lab.process" not in argv or "--state" not in argv:
        return False
    i = argv.index("--state")
    return i + 1 < len(argv) and Path(argv[i + 1]) == d.resolve()


def terminate(pid: int, start: str | None, timeout: float) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True when SIGKILL was needed."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return sig == signal.SIGKILL
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid, start):
                return sig == signal.SIGKILL
            time.sleep(0.02)
    raise GridctlError(f"lab process {pid} did not exit after SIGKILL", hint=f"check it with `ps -p {pid}`")
