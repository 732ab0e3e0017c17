"""Read an inventory directory, validate all of it, and build the model.

Every problem in every file is collected before anything is reported, each
located as ``file:line: path: message``. ``overrides`` lets a writer validate
the inventory as it *would* be after a change, before touching the disk.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from gridctl.errors import InventoryError, NotFoundError, Problem
from gridctl.inventory.model import Grid, Inventory, Site, SshDefaults
from gridctl.inventory.schema import Issue, build_grid, build_site
from gridctl.inventory.yamldoc import Document, DocumentError, parse_document, path_str

GRID_FILE = "grid.yaml"
SITES_DIR = "sites"
KNOWN_HOSTS = "known_hosts"
SITE_SUFFIXES = (".yaml", ".yml")


def resolve_root(option: str | None, environ: Mapping[str, str]) -> Path:
    """``--inventory`` option, else ``$GRIDCTL_INVENTORY``, else ``./inventory``."""
    return Path(option or environ.get("GRIDCTL_INVENTORY") or "inventory")


def site_file(name: str) -> str:
    return f"{SITES_DIR}/{name}.yaml"


def list_site_files(root: Path) -> list[str]:
    sites = root / SITES_DIR
    try:
        entries = os.listdir(sites)
    except FileNotFoundError:
        return []
    return sorted(
        f"{SITES_DIR}/{e}" for e in entries if e.endswith(SITE_SUFFIXES) and not e.startswith(".")
    )


def read_text(root: Path, rel: str) -> str:
    with open(root / rel, encoding="utf-8") as fh:
        return fh.read()


def load_inventory(root: Path, overrides: Mapping[str, str | None] | None = None) -> Inventory:
    """Load and validate; raise InventoryError listing every problem found."""
    overrides = overrides or {}
    if not root.is_dir():
        raise NotFoundError(
            f"inventory directory {root} not found",
            hint="pass --inventory DIR, set GRIDCTL_INVENTORY, or create one with `gridctl init`",
        )
    problems: list[Problem] = []
    grid, gdoc = _load_grid(root, overrides, problems)
    ssh = grid.ssh if grid else SshDefaults()
    files = set(list_site_files(root)) | {f for f, t in overrides.items() if t is not None and f.startswith(f"{SITES_DIR}/")}
    files -= {f for f, t in overrides.items() if t is None}
    sites: list[tuple[Site, Document]] = []
    for rel in sorted(files):
        text = overrides.get(rel)
        try:
            if text is None:
                text = read_text(root, rel)
            doc = parse_document(text)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(rel, 0, "", f"cannot read: {exc}"))
            continue
        except DocumentError as exc:
            problems.append(Problem(rel, exc.line, "", exc.message))
            continue
        site, issues = build_site(doc.value, ssh)
        problems.extend(_locate(rel, doc, issues))
        if site is not None:
            stem = rel.rsplit("/", 1)[1].rsplit(".", 1)[0]
            if site.name != stem:
                problems.append(_at(rel, doc, ("name",), f"must match the file name '{stem}' (rename the file or the site)"))
                continue
            sites.append((replace(site, file=rel), doc))
    if grid is not None and gdoc is not None:
        problems.extend(_check_references(grid, gdoc, sites))
    problems.extend(_check_duplicates(sites))
    if problems:
        raise InventoryError(problems, str(root))
    assert grid is not None
    return Inventory(root=root, grid=grid, sites=tuple(sorted((s for s, _ in sites), key=lambda s: s.name)))


def _load_grid(
    root: Path, overrides: Mapping[str, str | None], problems: list[Problem]
) -> tuple[Grid | None, Document | None]:
    text = overrides.get(GRID_FILE)
    try:
        if text is None:
            text = read_text(root, GRID_FILE)
        doc = parse_document(text)
    except FileNotFoundError:
        problems.append(Problem(GRID_FILE, 0, "", "missing: every inventory needs a grid.yaml (see `gridctl init`)"))
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(GRID_FILE, 0, "", f"cannot read: {exc}"))
        return None, None
    except DocumentError as exc:
        problems.append(Problem(GRID_FILE, exc.line, "", exc.message))
        return None, None
    grid, issues = build_grid(doc.value)
    problems.extend(_locate(GRID_FILE, doc, issues))
    return grid, doc


def _locate(rel: str, doc: Document, issues: list[Issue]) -> list[Problem]:
    return [Problem(rel, doc.line_of(i.path, i.at_key), path_str(i.path), i.message) for i in issues]


def _at(rel: str, doc: Document, path: tuple[str | int, ...], message: str, at_key: bool = False) -> Problem:
    return Problem(rel, doc.line_of(path, at_key), path_str(path), message)


def _check_references(grid: Grid, gdoc: Document, sites: list[tuple[Site, Document]]) -> list[Problem]:
    problems: list[Problem] = []
    regions = [r.name for r in grid.regions]
    for site, doc in sites:
        if site.region not in regions:
            near = difflib.get_close_matches(site.region, regions, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            known = ", ".join(regions) or "none defined"
            problems.append(_at(site.file, doc, ("region",), f"unknown region '{site.region}'; {hint}(regions in grid.yaml: {known})"))
    names = {s.name for s, _ in sites}
    for i, region in enumerate(grid.regions):
        for site_name in region.latency_ms:
            if site_name not in names:
                near = difflib.get_close_matches(site_name, sorted(names), n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                problems.append(_at(GRID_FILE, gdoc, ("regions", i, "latency_ms", site_name), f"unknown site '{site_name}'{hint}", at_key=True))
    return problems


def _check_duplicates(sites: list[tuple[Site, Document]]) -> list[Problem]:
    problems: list[Problem] = []
    site_seen: dict[str, str] = {}
    node_seen: dict[str, str] = {}
    addr_seen: dict[tuple[str, int], str] = {}
    for site, doc in sites:
        if site.name in site_seen:
            problems.append(_at(site.file, doc, ("name",), f"duplicate site name '{site.name}' (also in {site_seen[site.name]})"))
        else:
            site_seen[site.name] = site.file
        for i, node in enumerate(site.nodes):
            where = f"{site.file}:{doc.line_of(('nodes', i, 'name'))}"
            if node.name in node_seen:
                problems.append(_at(site.file, doc, ("nodes", i, "name"), f"duplicate node name '{node.name}' (also at {node_seen[node.name]}); node names are unique across the grid"))
            else:
                node_seen[node.name] = where
            addr = (node.host.lower(), node.port)
            if addr in addr_seen:
                problems.append(_at(site.file, doc, ("nodes", i, "host"), f"duplicate address {node.host}:{node.port} (also at {addr_seen[addr]})"))
            else:
                addr_seen[addr] = where
    return problems
