"""Changes to the client regions in grid.yaml: the services behind ``region`` add, set, rm.

The same transaction as every inventory write (``store.apply_change``): locked,
validated as a whole, atomic; grid.yaml is edited round-trip, comments kept.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridctl.core.errors import ConflictError, NotFoundError
from gridctl.core.inventory.model import Inventory, Region
from gridctl.inventory.edit import Outcome, check_name, edit_fields, edit_text, finish_outcome, same_data
from gridctl.inventory.load import GRID_FILE, read_text
from gridctl.inventory.store import Changes, apply_change


@dataclass(frozen=True)
class RegionSpec:
    name: str
    lat: float
    lon: float
    jurisdiction: str
    allowed: tuple[str, ...] | None = None  # None: [jurisdiction]
    latency_ms: dict[str, float] | None = None


def require_region(inv: Inventory, name: str) -> Region:
    region = inv.region(name)
    if region is None:
        names = [r.name for r in inv.grid.regions]
        near = difflib.get_close_matches(name, names, n=1)
        raise NotFoundError(
            f"no region named '{name}' in {inv.root / GRID_FILE}",
            hint=f"did you mean '{near[0]}'?" if near else "list regions with `gridctl region ls`",
        )
    return region


def _differences(region: Region, spec: RegionSpec) -> list[str]:
    want: dict[str, tuple[Any, Any]] = {
        "location.lat": (region.location.lat, spec.lat),
        "location.lon": (region.location.lon, spec.lon),
        "jurisdiction": (region.jurisdiction, spec.jurisdiction),
    }
    if spec.allowed is not None:
        want["allowed_jurisdictions"] = (list(region.allowed_jurisdictions), list(spec.allowed))
    if spec.latency_ms is not None:
        want["latency_ms"] = (dict(region.latency_ms), spec.latency_ms)
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in want.items() if old != new]


def add_region(root: Path, spec: RegionSpec, dry_run: bool = False) -> Outcome:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    from gridctl.inventory.fields import yaml_scalar

    check_name("region", spec.name)
    result: list[Outcome] = []

    def add(doc: Any) -> None:
        entry = CommentedMap()
        entry["name"] = spec.name
        loc = CommentedMap()
        loc["lat"], loc["lon"] = spec.lat, spec.lon
        loc.fa.set_flow_style()
        entry["location"] = loc
        entry["jurisdiction"] = yaml_scalar(spec.jurisdiction)
        allowed = CommentedSeq(yaml_scalar(c) for c in (spec.allowed or (spec.jurisdiction,)))
        allowed.fa.set_flow_style()
        entry["allowed_jurisdictions"] = allowed
        if spec.latency_ms:
            latency = CommentedMap()
            for site, ms in spec.latency_ms.items():
                latency[site] = ms
            entry["latency_ms"] = latency
        if doc.get("regions") is None:
            doc["regions"] = []
        doc["regions"].append(entry)

    def plan(inv: Inventory) -> Changes:
        existing = inv.region(spec.name)
        if existing is not None:
            diffs = _differences(existing, spec)
            if diffs:
                raise ConflictError(
                    f"region '{spec.name}' already exists with different values: " + "; ".join(diffs),
                    hint=f"change it with `gridctl region set {spec.name} KEY=VALUE`",
                )
            result.append(Outcome("region", spec.name, "unchanged"))
            return {}
        result.append(Outcome("region", spec.name, "created"))
        return {GRID_FILE: edit_text(read_text(root, GRID_FILE), add)}

    return finish_outcome(result, apply_change(root, plan, dry_run))


def set_region(root: Path, name: str, items: list[str], dry_run: bool = False) -> Outcome:
    """``region set NAME KEY=VALUE...``: location.lat, jurisdiction, allowed_jurisdictions=EU,CH,
    latency_ms.SITE=2.5 (``latency_ms.SITE-`` removes one), any region key of the schema."""
    from gridctl.core.inventory.schema import build_grid
    from gridctl.inventory import fields

    result: list[Outcome] = []

    def plan(inv: Inventory) -> Changes:
        require_region(inv, name)
        old = read_text(root, GRID_FILE)
        new, _ = edit_fields(old, items, fields.GRID, lambda d: build_grid(d)[1], prefix=f"regions.{name}.")
        if same_data(old, new):
            result.append(Outcome("region", name, "unchanged"))
            return {}
        result.append(Outcome("region", name, "configured", tuple(items)))
        return {GRID_FILE: new}

    return finish_outcome(result, apply_change(root, plan, dry_run))


def remove_region(root: Path, name: str, dry_run: bool = False) -> Outcome:
    """Remove a region with its probe round trips in .state; refused while sites sit in it."""
    from gridctl.inventory.references import drop_state

    result: list[Outcome] = []

    def drop(doc: Any) -> None:
        regions = doc["regions"]
        for i in range(len(regions) - 1, -1, -1):
            if isinstance(regions[i], dict) and regions[i].get("name") == name:
                del regions[i]

    def plan(inv: Inventory) -> Changes:
        require_region(inv, name)
        users = [s.name for s in inv.sites if s.region == name]
        if users:
            raise ConflictError(
                f"region '{name}' still has {len(users)} site{'s' if len(users) != 1 else ''}: "
                + ", ".join(users),
                hint=f"move them first (`gridctl site set {users[0]} region=OTHER`) or remove them",
            )
        changes: dict[str, str | None] = {GRID_FILE: edit_text(read_text(root, GRID_FILE), drop)}
        state, removed = drop_state(root, regions=frozenset({name}))
        changes.update(state)
        result.append(Outcome("region", name, "deleted", removed=tuple(removed)))
        return changes

    return finish_outcome(result, apply_change(root, plan, dry_run, with_state=True))
