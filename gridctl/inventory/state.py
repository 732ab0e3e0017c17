"""What gridctl learned about the grid, kept beside the inventory in ``.state/``.

``health.json`` holds the last health verdict of every site and node with its
time, so ``site ls`` can show it and the router can leave failed sites out.
Runs that check part of the grid update only what they checked. Written
atomically under the lock of ``.state`` (``.state/.gridctl.lock``), not the
inventory's: the daemon, sandboxed by its systemd unit, can write ``.state``
and nothing else of the inventory. A missing or unreadable file is "never
checked", not an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_DIR = ".state"
HEALTH_FILE = "health.json"


@contextlib.contextmanager
def state_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on the inventory's ``.state`` (made if missing), for its writers."""
    from gridctl.inventory.atomic import inventory_lock

    (root / STATE_DIR).mkdir(exist_ok=True)
    with inventory_lock(root / STATE_DIR):
        yield


def health_path(root: Path) -> Path:
    return root / STATE_DIR / HEALTH_FILE


def load_health(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"sites": {name: entry}, "nodes": {"site/node": entry}}``; entries have
    status, reasons and checked_at (ISO 8601, UTC)."""
    try:
        data = json.loads(health_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"sites": {}, "nodes": {}}
    if not isinstance(data, dict):
        return {"sites": {}, "nodes": {}}
    sites, nodes = data.get("sites"), data.get("nodes")
    return {
        "sites": sites if isinstance(sites, dict) else {},
        "nodes": nodes if isinstance(nodes, dict) else {},
    }


def write_health(root: Path, sites: dict[str, dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> None:
    """Merge these entries into health.json."""
    from gridctl.inventory.atomic import write_atomic

    with state_lock(root):
        current = load_health(root)
        current["sites"].update(sites)
        current["nodes"].update(nodes)
        text = json.dumps(current, indent=2, sort_keys=True) + "\n"
        write_atomic(health_path(root), text)


PROBES_FILE = "probes.json"


def probes_path(root: Path) -> Path:
    return root / STATE_DIR / PROBES_FILE


def load_probes(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{region: {site: {"rtt_ms", "samples", "measured_at"}}}`` from ``route probe``."""
    try:
        data = json.loads(probes_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {r: v for r, v in data.items() if isinstance(v, dict)}


def probe_rtts(root: Path) -> dict[str, dict[str, float]]:
    """Just the medians, for the latency model."""
    out: dict[str, dict[str, float]] = {}
    for region, sites in load_probes(root).items():
        for site, entry in sites.items():
            rtt = entry.get("rtt_ms") if isinstance(entry, dict) else None
            if isinstance(rtt, int | float) and not isinstance(rtt, bool) and rtt >= 0:
                out.setdefault(region, {})[site] = float(rtt)
    return out


def write_probes(root: Path, region: str, results: dict[str, dict[str, Any]]) -> None:
    """Merge one region's probe results into probes.json."""
    from gridctl.inventory.atomic import write_atomic

    with state_lock(root):
        current = load_probes(root)
        current.setdefault(region, {}).update(results)
        write_atomic(probes_path(root), json.dumps(current, indent=2, sort_keys=True) + "\n")


def health_by_site(root: Path) -> dict[str, str]:
    """site -> last recorded status, for placement."""
    return {
        name: entry["status"]
        for name, entry in load_health(root)["sites"].items()
        if isinstance(entry, dict) and isinstance(entry.get("status"), str)
    }


CALIBRATION_FILE = "calibration.json"


def calibration_path(root: Path) -> Path:
    return root / STATE_DIR / CALIBRATION_FILE


MAX_CALIBRATION_BYTES = 16 * 1024 * 1024


def load_calibration(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{site: {model: entry}}`` the placement daemon learned (``Calibration.to_dict`` plus
    ``written_at``, Unix seconds); a missing or unreadable file is no evidence yet."""
    path = calibration_path(root)
    try:
        # a regular file of a sane size only: never a FIFO, a device or /dev/zero behind a symlink
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CALIBRATION_BYTES:
                return {}
            data = json.loads(f.read(MAX_CALIBRATION_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    sites = data.get("sites") if isinstance(data, dict) else None
    if not isinstance(sites, dict):
        return {}
    return {
        s: {m: e for m, e in v.items() if isinstance(e, dict)}
        for s, v in sites.items()
        if isinstance(v, dict)
    }


def write_calibration(root: Path, entries: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Merge these (site -> model -> entry) into calibration.json (``--workers`` processes each
    write what they learned; the last word on a site's model wins)."""
    from gridctl.inventory.atomic import write_atomic

    with state_lock(root):
        current = load_calibration(root)
        for site, models in entries.items():
            current.setdefault(site, {}).update(models)
        text = json.dumps({"sites": current}, indent=2, sort_keys=True) + "\n"
        write_atomic(calibration_path(root), text)
