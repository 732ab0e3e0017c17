"""``gridctl lab up | down | status | fail``: the lab as one background process.

``lab up`` starts ``python -m gridctl.lab.process`` detached (its own session,
stdin from /dev/null, output to the log), waits for it to write ``lab.json``
and for every site to answer its health route, then returns. State, under
``<inventory>/.state/lab/``:

- ``pid``: the process id and its start time (``/proc/PID/stat``), written by
  ``lab up`` as soon as it starts the process, so that a recycled pid is never
  taken for the lab;
- ``lab.json``: written by the process once every site listens: the sites'
  URLs, the control URL, the overlay, the options;
- ``lab.log``: the process's output;
- ``inventory/``: the overlay inventory (``synthetic/``: the generated one,
  with ``--sites N``).

``lab down`` sends SIGTERM, then SIGKILL after a bound, and removes the
directory (and ``.state`` when it is left empty). It signals only the lab's own
process: the pid's start time must be the one recorded and its command line
must be ``gridctl.lab.process --state`` this directory; a pid that the system
gave to another process since is left alone (:mod:`gridctl.lab.pids`).

The lab belongs to the inventory it was started for, found from any working
directory by that inventory's path; ``-i`` the overlay finds it too (the
overlay is ``.state/lab/inventory`` of that inventory). ``up`` and ``down`` hold the
inventory's lock, so two of them never race. A process that is a zombie counts as gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridctl.core.errors import GridctlError, LockError, NotFoundError, UnreachableError, UsageError
from gridctl.inventory.load import load_inventory
from gridctl.inventory.state import STATE_DIR
from gridctl.lab.pids import is_lab_process, pid_alive, process_start, terminate
from gridctl.lab.truth import DEFAULT_SEED

LAB_DIR = "lab"
PID_FILE = "pid"
LAB_FILE = "lab.json"
LOG_FILE = "lab.log"
OVERLAY_DIR = "inventory"
SYNTHETIC_DIR = "synthetic"
MAX_SITES = 2000
Progress = Callable[[str], None]


def lab_root(root: Path) -> Path:
    """The inventory whose lab ``root`` names: ``root`` itself, or, when ``root`` is a
    lab's overlay (``X/.state/lab/inventory``), X."""
    resolved = root.resolve()
    if (
        resolved.name == OVERLAY_DIR
        and resolved.parent.name == LAB_DIR
        and resolved.parents[1].name == STATE_DIR
    ):
        return resolved.parents[2]
    return root


def lab_dir(root: Path) -> Path:
    return lab_root(root) / STATE_DIR / LAB_DIR


@dataclass(frozen=True)
class UpOptions:
    sites: int | None = None  # synthetic sites instead of the inventory's
    region: str | None = None  # default client region; the first of grid.yaml when None
    speed: float = 1.0
    port_base: int | None = None
    timeout_s: float = 60.0  # for the process to start and every site to answer
    hidden_speed: int | None = DEFAULT_SEED  # seed of the sites' true speeds (lab.truth); None: off


def parse_hidden_speed(text: str) -> int | None:
    """``--hidden-speed`` SEED (an integer) or ``off``; ValueError otherwise."""
    value = text.strip().lower()
    if value in ("off", "none", "no"):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--hidden-speed {text!r}: expected a seed (an integer) or 'off'") from None


@dataclass(frozen=True)
class UpResult:
    overlay: Path
    pid: int
    sites: int
    log: Path
    already: bool  # it was already running


@dataclass(frozen=True)
class DownResult:
    pid: int | None  # None: nothing was running
    killed: bool  # needed SIGKILL
    removed: bool  # the state directory was removed
    dir: Path  # the lab's state directory
    stranger: int | None = None  # the recorded pid, now another process's (left alone)


def _read_pid(d: Path) -> tuple[int, str | None] | None:
    try:
        parts = (d / PID_FILE).read_text(encoding="ascii").split()
        return int(parts[0]), (parts[1] if len(parts) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def _running_pid(d: Path) -> int | None:
    found = _read_pid(d)
    return found[0] if found and is_lab_process(*found, d) else None


def _read_lab(d: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((d / LAB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_lab_file(d: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees no file or the whole file."""
    tmp = d / (LAB_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, d / LAB_FILE)


def log_tail(d: Path, lines: int = 20) -> str:
    try:
        text = (d / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(f"  | {line}" for line in text.rstrip().splitlines()[-lines:]) or "  | (empty log)"


@contextlib.contextmanager
def _lab_lock(root: Path, timeout: float = 120.0) -> Iterator[None]:
    """The inventory's own lock (``.gridctl.lock``): two `lab up`/`lab down` never race."""
    from gridctl.inventory.atomic import inventory_lock

    try:
        with inventory_lock(root, timeout):
            yield
    except LockError as exc:
        raise LockError(f"{exc.message} (another `gridctl lab` or inventory change)", exc.hint) from None


def _remove(d: Path) -> None:
    """The lab's directory, and ``.state`` too when nothing else is left in it."""
    shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        d.parent.rmdir()


# -- up ----------------------------------------------------------------------------------------------------


def start_lab(root: Path, opts: UpOptions, progress: Progress) -> UpResult:
    """Start the lab for the inventory at ``root``, or find it already running."""
    root = lab_root(root)
    n = _check_up(root, opts)
    d = lab_dir(root)
    with _lab_lock(root):
        pid = _running_pid(d)
        if pid is not None:
            info = _read_lab(d) or {}
            progress(f"the lab is already up (pid {pid}); `gridctl lab down` first to change its options")
            overlay = Path(info.get("overlay") or (d / OVERLAY_DIR).resolve())
            return UpResult(overlay, pid, len(info.get("sites", [])), d / LOG_FILE, True)
        if d.exists():
            progress(f"removing the state of a lab that is no longer running ({d})")
            shutil.rmtree(d)
        d.mkdir(parents=True)
        what = f"{_sites(n)} (synthetic)" if opts.sites is not None else f"{_sites(n)} of {root}"
        hidden = "off" if opts.hidden_speed is None else f"seed {opts.hidden_speed}"
        progress(f"starting the lab: {what}, speed {opts.speed:g}, hidden speed {hidden}, log {d / LOG_FILE}")
        return _bring_up(root, d, opts, progress)


def _check_up(root: Path, opts: UpOptions) -> int:
    """The options checked against the inventory at ``root``; the number of sites to start."""
    inv = load_inventory(root)
    if opts.region is not None and inv.region(opts.region) is None:
        from gridctl.core.suggest import did_you_mean

        raise UsageError(
            f"--from {opts.region}: no such client region in grid.yaml",
            hint=did_you_mean(opts.region, [r.name for r in inv.grid.regions], "regions"),
        )
    if opts.speed <= 0:
        raise UsageError(
            f"--speed {opts.speed:g}: must be above 0", hint="e.g. --speed 10 runs ten times faster"
        )
    if opts.sites is not None and not 1 <= opts.sites <= MAX_SITES:
        raise UsageError(f"--sites {opts.sites}: must be from 1 to {MAX_SITES}")
    n = opts.sites if opts.sites is not None else len(inv.sites)
    if n == 0:
        raise UsageError(
            f"inventory {root} has no sites", hint="add sites, or use --sites N for synthetic ones"
        )
    if opts.port_base is not None and not 1024 <= opts.port_base <= 65535 - n:
        raise UsageError(f"--port-base {opts.port_base}: its {n} ports must lie in 1024..65535")
    return n


def _bring_up(root: Path, d: Path, opts: UpOptions, progress: Progress) -> UpResult:
    """Start the lab process in state directory ``d`` and wait until it has written ``lab.json``
    and every site answers its health route; on any failure, stop it, remove ``d`` and raise with
    the log's tail."""
    proc = _spawn(root, d, opts)
    try:
        deadline = time.monotonic() + opts.timeout_s
        info = _wait_written(proc, d, deadline)
        progress(f"waiting for {_sites(len(info['sites']))} to answer their health route")
        _wait_healthy(info["sites"], deadline)
    except BaseException as exc:
        terminate(proc.pid, None, 5.0)
        proc.wait()
        tail = log_tail(d)
        _remove(d)
        if isinstance(exc, GridctlError):
            raise GridctlError(
                f"the lab did not come up: {exc.message}; its log ended with:\n{tail}",
                hint=exc.hint or "fix the cause above, then run `gridctl lab up` again",
            ) from None
        raise
    proc.returncode = 0  # detached on purpose: it outlives us (no ResourceWarning for it)
    progress(f"lab up: {_sites(len(info['sites']))}, pid {proc.pid}, client region {info['from']}")
    return UpResult(Path(info["overlay"]), proc.pid, len(info["sites"]), d / LOG_FILE, False)


def _sites(n: int) -> str:
    return f"{n} site{'s' if n != 1 else ''}"


def _spawn(root: Path, d: Path, opts: UpOptions) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "gridctl.lab.process",
        "--root",
        str(root.resolve()),
        "--state",
        str(d.resolve()),
    ]
    argv += ["--speed", repr(opts.speed)]
    argv += ["--hidden-speed", "off" if opts.hidden_speed is None else str(opts.hidden_speed)]
    if opts.region:
        argv += ["--from", opts.region]
    if opts.sites is not None:
        argv += ["--sites", str(opts.sites)]
    if opts.port_base is not None:
        argv += ["--port-base", str(opts.port_base)]
    with open(d / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    start = None
    for _ in range(50):  # /proc/PID appears at once; its start time is what a recycled pid lacks
        start = process_start(proc.pid)
        if start:
            break
        time.sleep(0.01)
    (d / PID_FILE).write_text(f"{proc.pid} {start or ''}\n".rstrip() + "\n", encoding="ascii")
    return proc


def _wait_written(proc: subprocess.Popen[bytes], d: Path, deadline: float) -> dict[str, Any]:
    while True:
        code = proc.poll()
        if code is not None:
            raise GridctlError(f"the lab process exited with code {code}")
        info = _read_lab(d)
        if info is not None and info.get("pid") == proc.pid:
            return info
        if time.monotonic() >= deadline:
            raise GridctlError(
                "the lab process did not start its sites in time", hint="try a longer --timeout"
            )
        time.sleep(0.05)


def _wait_healthy(sites: list[dict[str, Any]], deadline: float) -> None:
    import httpx

    async def one(client: httpx.AsyncClient, site: dict[str, Any]) -> str | None:
        url = site["url"] + site.get("health_path", "/health")
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = await client.get(url, timeout=max(0.1, deadline - time.monotonic()))
                if r.status_code == 200:
                    return None
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.05)
        return f"{site['name']} ({url}): {last}"

    async def all_sites() -> list[str | None]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(trust_env=False, limits=limits) as client:
            sem = asyncio.Semaphore(64)

            async def bounded(site: dict[str, Any]) -> str | None:
                async with sem:
                    return await one(client, site)

            return await asyncio.gather(*(bounded(s) for s in sites))

    failed = [f for f in asyncio.run(all_sites()) if f]
    if failed:
        more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
        raise GridctlError(f"{_sites(len(failed))} did not answer in time: {'; '.join(failed[:3])}{more}")


# -- down, status, fail -------------------------------------------------------------------------------


def stop_lab(root: Path, timeout_s: float = 10.0) -> DownResult:
    """Stop the lab's process and remove its state; nothing to do is not an error.
    Only the lab's own process is signalled (``is_lab_process``)."""
    root = lab_root(root)
    d = lab_dir(root)
    if not d.exists():
        return DownResult(None, False, False, d)
    with _lab_lock(root):
        found = _read_pid(d)
        if found is None:
            info = _read_lab(d)
            found = (info["pid"], None) if info and isinstance(info.get("pid"), int) else None
        pid, killed, stranger = None, False, None
        if found is not None and is_lab_process(*found, d):
            pid = found[0]
            killed = terminate(pid, found[1], timeout_s)
        elif found is not None and pid_alive(found[0]):
            stranger = found[0]
        existed = d.exists()
        _remove(d)
        return DownResult(pid, killed, existed, d, stranger)


def _running_info(root: Path) -> tuple[int, dict[str, Any]]:
    d = lab_dir(root)
    found = _read_pid(d)
    if found is None:
        raise UnreachableError(
            f"the lab is not running for inventory {lab_root(root).resolve()} (nothing in {d.resolve()})",
            hint="start it with `gridctl -i DIR lab up`; a lab started for another inventory is "
            "found with -i that inventory, from any directory",
        )
    if not is_lab_process(*found, d):
        raise UnreachableError(
            f"the lab process {found[0]} is gone; its log: {d / LOG_FILE}",
            hint="`gridctl lab down` cleans up, then `gridctl lab up` starts it again",
        )
    info = _read_lab(d)
    if info is None:
        raise UnreachableError(f"the lab process {found[0]} is still starting", hint="try again in a moment")
    return found[0], info


def _control(info: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    import httpx

    try:
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            r = client.request(method, info["control"] + path, json=body)
    except httpx.HTTPError as exc:
        raise UnreachableError(f"the lab's control port {info['control']} did not answer: {exc}") from None
    data = r.json()
    if r.status_code == 404:
        raise NotFoundError(data["error"]["message"])
    if r.status_code == 400:
        raise UsageError(data["error"]["message"])
    if r.status_code != 200:
        raise GridctlError(f"the lab's control port answered HTTP {r.status_code}: {r.text[:200]}")
    return data


def fetch_lab_status(root: Path) -> dict[str, Any]:
    """The lab's process and every site's live state; UnreachableError when it is not running."""
    pid, info = _running_info(root)
    sites = {s["name"]: s for s in info["sites"]}
    live = _control(info, "GET", "/lab/sites")["sites"]
    rows = []
    for s in live:
        rows.append(
            {
                **s,
                "models": [m["name"] for m in s["models"]],
                "serving": s["models"],  # per model: GPUs, replicas, running per replica
                "health_path": sites.get(s["name"], {}).get("health_path", "/health"),
            }
        )
    return {
        "running": True,
        "pid": pid,
        "started_at": info["started_at"],
        "uptime_s": round(time.time() - info["started_ts"], 1),
        "from": info["from"],
        "speed": info["speed"],
        "hidden_speed": info.get("hidden_speed"),
        "synthetic": info.get("synthetic"),
        "overlay": info["overlay"],
        "log": str(lab_dir(root) / LOG_FILE),
        "control": info["control"],
        "sites": rows,
    }


def run_lab_fail(root: Path, pattern: str, mode: str, delay_ms: float | None = None) -> list[dict[str, str]]:
    """Switch the failure mode of the lab sites matching ``pattern``: a target pattern, read as
    every command reads one (gridctl/core/inventory/targets.py: names, globs, ``region:``, ``&``,
    ``!``), against the lab's overlay inventory."""
    from gridctl.core.inventory.targets import select_sites
    from gridctl.inventory.load import load_inventory

    _, info = _running_info(root)
    names = [s.name for s in select_sites(load_inventory(Path(info["overlay"])), pattern)]
    if not names:
        raise NotFoundError(
            f"no lab site matches '{pattern}'", hint="see `gridctl lab status` for the lab's sites"
        )
    changed: list[dict[str, str]] = _control(
        info, "POST", "/lab/fail", {"sites": names, "mode": mode, "delay_ms": delay_ms}
    )["changed"]
    return changed
