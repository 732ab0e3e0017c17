"""Shell completion of names and values: sites, nodes, regions, models from the inventory;
route formats, sim policies and profiles from their one source.

Each function is a Typer ``autocompletion`` callback, run by the shell's completion
script on every Tab (``_GRIDCTL_COMPLETE=complete_bash|complete_zsh|complete_fish``).
It must answer fast and never fail: the inventory is read as plain YAML with the safe
reader (no validation, no SSH/HTTP libraries imported), a broken or unreadable file is
skipped, and any problem gives fewer candidates, never an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from gridctl.inventory.files import read_inventory_text

_INVENTORY_FLAGS = ("-i", "--inventory")
_TARGET_KEYS = ("region:", "kind:", "jurisdiction:", "label:")
SITE_KINDS = ("regional-pop", "central-office", "edge", "cloud")


def _root(ctx: typer.Context, args: list[str]) -> Path:
    """``-i DIR`` wherever it stands on the line being completed, else what the root
    command parsed, else ``$GRIDCTL_INVENTORY``, else ``./inventory`` (as commands read it)."""
    found: str | None = None
    for i, arg in enumerate(args):
        if arg in _INVENTORY_FLAGS and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--inventory="):
            found = arg.split("=", 1)[1]
    if found is None:
        found = ctx.find_root().params.get("inventory")
    return Path(found or os.environ.get("GRIDCTL_INVENTORY") or "inventory")


def _load(root: Path, rel: str) -> Any:
    import yaml

    try:
        text = read_inventory_text(root, rel)
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:  # a completion never fails: a file it cannot read offers nothing
        return None


def _site_files(root: Path) -> list[tuple[str, str]]:
    """(site name, file) from the file names: a site's file is named after it."""
    try:
        entries = sorted(os.listdir(root / "sites"))
    except OSError:
        return []
    return [
        (e.rsplit(".", 1)[0], f"sites/{e}")
        for e in entries
        if e.endswith((".yaml", ".yml")) and not e.startswith(".")
    ]


def _names(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    return [it["name"] for it in items if isinstance(it, dict) and isinstance(it.get("name"), str)]


def _match(candidates: Iterable[str], incomplete: str) -> list[str]:
    return sorted({c for c in candidates if c.startswith(incomplete)})


def list_sites(root: Path) -> list[str]:
    return [name for name, _ in _site_files(root)]


def list_regions(root: Path) -> list[str]:
    grid = _load(root, "grid.yaml")
    return _names(grid.get("regions")) if isinstance(grid, dict) else []


def list_nodes(root: Path, site: str | None = None) -> list[str]:
    out: list[str] = []
    for name, rel in _site_files(root):
        if site is None or name == site:
            doc = _load(root, rel)
            out += _names(doc.get("nodes")) if isinstance(doc, dict) else []
    return out


def list_models(root: Path) -> list[str]:
    out: list[str] = []
    for _, rel in _site_files(root):
        doc = _load(root, rel)
        out += _names(doc.get("models")) if isinstance(doc, dict) else []
    return out


# ------------------------------------------------------------------ the callbacks


def sites(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    return _match(list_sites(_root(ctx, args)), incomplete)


def regions(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    return _match(list_regions(_root(ctx, args)), incomplete)


def models(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    return _match(list_models(_root(ctx, args)), incomplete)


def nodes(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    """Nodes of the SITE argument given before, else of every site."""
    site = ctx.params.get("site")
    return _match(list_nodes(_root(ctx, args), site if isinstance(site, str) else None), incomplete)


def site_targets(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    """A target pattern's last term (after ``,``, ``!`` or ``&``): a site, or
    ``region:``/``kind:`` and their values."""
    return _targets(_root(ctx, args), incomplete, node_names=False)


def node_targets(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    return _targets(_root(ctx, args), incomplete, node_names=True)


def _targets(root: Path, incomplete: str, node_names: bool) -> list[str]:
    cut = max(incomplete.rfind(","), 0)
    while cut < len(incomplete) and incomplete[cut] in ",!&":
        cut += 1
    head, term = incomplete[:cut], incomplete[cut:]
    if term.startswith("region:"):
        values = [f"region:{r}" for r in list_regions(root)]
    elif term.startswith("kind:"):
        values = [f"kind:{k}" for k in SITE_KINDS]
    else:
        values = [*list_sites(root), *(list_nodes(root) if node_names else []), *_TARGET_KEYS]
    return [head + v for v in _match(values, term)]


def route_formats(incomplete: str) -> list[str]:
    from gridctl.placement.render import FORMATS

    return _match(FORMATS, incomplete)


def sim_policies(incomplete: str) -> list[str]:
    """Comma-separated: the last policy completed, those before kept."""
    from gridctl.sim.policy import EXTRA_POLICIES, POLICIES

    head, _, term = incomplete.rpartition(",")
    prefix = f"{head}," if head else ""
    taken = set(head.split(","))
    return [prefix + p for p in _match((*POLICIES, *EXTRA_POLICIES), term) if p not in taken]


def sim_profiles(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    """The built-in profiles and the inventory's scenarios/NAME.yaml."""
    from gridctl.sim.profiles import PROFILES

    try:
        scenarios = [
            e.rsplit(".", 1)[0] for e in os.listdir(_root(ctx, args) / "scenarios") if e.endswith(".yaml")
        ]
    except OSError:
        scenarios = []
    return _match([*PROFILES, *scenarios], incomplete)
