"""What gridctl learned about the grid, kept beside the inventory in ``.state/``.

``health.json`` holds the last health verdict of every site and node with its
time, so ``site ls`` can show it and the router can leave failed sites out.
Runs that check part of the grid update only what they checked. Written
atomically under the inventory lock; a missing or unreadable file is "never
checked", not an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_DIR = ".state"
HEALTH_FILE = "health.json"


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
    from gridctl.inventory.store import inventory_lock, write_atomic

    with inventory_lock(root):
        current = load_health(root)
        current["sites"].update(sites)
        current["nodes"].update(nodes)
        text = json.dumps(current, indent=2, sort_keys=True) + "\n"
        write_atomic(health_path(root), text)
