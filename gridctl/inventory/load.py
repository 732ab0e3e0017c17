"""Read an inventory directory, validate all of it, and build the model.

Every problem in every file is collected before anything is reported, each
located as ``file:line: path: message``. :func:`load_partial` also gives the
valid part of a broken inventory (for read commands, for writes that touch no
broken file, and for the daemon's per-file reload). ``overrides`` lets a writer validate
the inventory as it *would* be after a change, before touching the disk.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gridctl.core.errors import InventoryError, NotFoundError, Problem
from gridctl.core.inventory.checks import DNS_LABEL, TLS_KEYS, Issue
from gridctl.core.inventory.model import Grid, Inventory, Site, SshDefaults, TlsFiles
from gridctl.core.inventory.schema import build_grid
from gridctl.core.inventory.site_schema import build_site
from gridctl.core.inventory.yamldoc import Document, DocumentError, parse_document, path_str
from gridctl.inventory.files import read_inventory_text

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
    return sorted(f"{SITES_DIR}/{e}" for e in entries if e.endswith(SITE_SUFFIXES) and not e.startswith("."))


def read_text(root: Path, rel: str) -> str:
    return read_inventory_text(root, rel)  # refuses symlinks out, FIFOs, devices, huge files


class _SiteFile:
    """One site file while loading: its text (for locating problems later), the
    plain parsed value (for cross-file checks, even when the site is invalid)
    and the built Site when valid. The YAML node tree is not kept."""

    __slots__ = ("rel", "text", "value", "site", "_doc")

    def __init__(self, rel: str, text: str, value: Any, site: Site | None) -> None:
        self.rel, self.text, self.value, self.site = rel, text, value, site
        self._doc: Document | None = None

    def at(self, path: tuple[str | int, ...], message: str, at_key: bool = False) -> Problem:
        if self._doc is None:
            self._doc = parse_document(self.text)
        return Problem(self.rel, self._doc.line_of(path, at_key), path_str(path), message)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading builds many small containers that all live to the end: the cyclic
    collector would rescan them again and again (most of the time at 10k sites)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class Loaded:
    """An inventory as read, broken or not: every problem, and the valid part of it.

    A problem belongs to every file it names (its own and, for a duplicate, the file of the
    first occurrence): such a file is *broken* and none of it is in ``inventory``, which holds
    the grid (None when grid.yaml cannot be built) and the sites of the files that are not
    broken. ``texts`` is each inventory file's text as it was read."""

    inventory: Inventory | None
    problems: tuple[Problem, ...]
    texts: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def broken(self) -> frozenset[str]:
        return frozenset(f for p in self.problems for f in p.files)

    def problems_of(self, rel: str) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if rel in p.files)


def load_inventory(root: Path, overrides: Mapping[str, str | None] | None = None) -> Inventory:
    """Load and validate; raise InventoryError listing every problem found."""
    loaded = load_partial(root, overrides)
    if loaded.problems:
        raise InventoryError(list(loaded.problems), str(root))
    assert loaded.inventory is not None
    return loaded.inventory


def load_partial(root: Path, overrides: Mapping[str, str | None] | None = None) -> Loaded:
    """Load and validate everything; never raise for a problem in a file (see :class:`Loaded`)."""
    overrides = overrides or {}
    if not root.is_dir():
        raise NotFoundError(
            f"inventory directory {root} not found",
            hint="pass --inventory DIR, set GRIDCTL_INVENTORY, or create one with `gridctl init`",
        )
    with _gc_paused():
        problems: list[Problem] = []
        texts: dict[str, str] = {}
        grid, graw, gtext = _load_grid(root, overrides, problems)
        if graw is not None or gtext:
            texts[GRID_FILE] = gtext
        if grid is not None and grid.tls:
            grid_file = _SiteFile(GRID_FILE, gtext, graw, None)
            grid = replace(
                grid, tls=_check_tls(root, grid.tls, TlsFiles(), grid_file, ("defaults",), problems)
            )
        ssh = grid.ssh if grid else _raw_ssh_defaults(graw)
        files = set(list_site_files(root))
        files |= {f for f, t in overrides.items() if t is not None and f.startswith(f"{SITES_DIR}/")}
        files -= {f for f, t in overrides.items() if t is None}
        loaded = [sf for rel in sorted(files) if (sf := _load_site(root, rel, overrides, ssh, problems))]
        texts.update((sf.rel, sf.text) for sf in loaded)
        if grid is not None:  # with grid.yaml broken, "unknown region" would be noise
            problems.extend(_check_references(graw, gtext, loaded))
        problems.extend(_check_duplicates(loaded, ssh))
        broken = {f for p in problems for f in p.files}
        sites = sorted(
            (sf.site for sf in loaded if sf.site is not None and sf.rel not in broken), key=lambda s: s.name
        )
        if grid is not None and (grid.tls or any(s.tls for s in sites)):
            checked = [_site_tls(root, s, grid.tls, loaded, problems) for s in sites]
            broken = {f for p in problems for f in p.files}
            sites = [s for s in checked if s.file not in broken]
        inventory = Inventory(root=root, grid=grid, sites=tuple(sites)) if grid is not None else None
        return Loaded(inventory, tuple(sorted(problems)), texts)


def load_keeping_last_good(
    root: Path, last_good: Mapping[str, str]
) -> tuple[Loaded, dict[str, tuple[Problem, ...]]]:
    """The inventory on disk, except that each broken file is read as its last good version
    (``last_good``: the texts of the last load that was valid; a broken file without one is
    left out). Returns the result (valid) and, per file that was replaced or left out, its
    problems on disk. Raises InventoryError (the problems on disk and the clashes) when even
    that does not validate (a last good version that no longer fits the other files' new ones)."""
    fresh = load_partial(root)
    if not fresh.problems:
        return fresh, {}
    stale = {rel: fresh.problems_of(rel) for rel in sorted(fresh.broken)}
    if GRID_FILE in stale and GRID_FILE not in last_good:
        raise InventoryError(list(fresh.problems), str(root))
    kept = load_partial(root, overrides={rel: last_good.get(rel) for rel in stale})
    if kept.problems:  # the problems on disk, and how the last good versions clash
        raise InventoryError(list({*fresh.problems, *kept.problems}), str(root))
    return kept, stale


def _load_site(
    root: Path, rel: str, overrides: Mapping[str, str | None], ssh: SshDefaults, problems: list[Problem]
) -> _SiteFile | None:
    text = overrides.get(rel)
    try:
        if text is None:
            text = read_text(root, rel)
        doc = parse_document(text)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(rel, 0, "", f"cannot read: {exc}"))
        return None
    except DocumentError as exc:
        problems.append(Problem(rel, exc.line, "", exc.message))
        return None
    site, issues = build_site(doc.value, ssh)
    problems.extend(_locate(rel, doc, issues))
    stem = rel.rsplit("/", 1)[1].rsplit(".", 1)[0]
    name = doc.value.get("name") if isinstance(doc.value, dict) else None
    if isinstance(name, str) and DNS_LABEL.match(name) and name != stem:
        problems.append(
            _at(rel, doc, ("name",), f"must match the file name '{stem}' (rename the file or the site)")
        )
    return _SiteFile(rel, text, doc.value, replace(site, file=rel) if site else None)


def _site_tls(
    root: Path, site: Site, grid: TlsFiles, loaded: list[_SiteFile], problems: list[Problem]
) -> Site:
    if not site.tls and not grid:
        return site
    sf = next(sf for sf in loaded if sf.rel == site.file)
    return replace(site, tls=_check_tls(root, site.tls, grid, sf, (), problems))


def _check_tls(
    root: Path,
    own: TlsFiles,
    default: TlsFiles,
    where: _SiteFile,
    path: tuple[str | int, ...],
    problems: list[Problem],
) -> TlsFiles:
    """``own``'s paths resolved against the inventory directory, each file read (a problem at
    its key's line otherwise), laid over ``default`` (already checked); then the files together
    must make a TLS context (a key that fits its certificate, PEM that parses)."""
    from gridctl.net.tls import TlsFileError, load_client_context

    resolved: dict[str, str | None] = {}
    before = len(problems)
    for name, value in zip(TLS_KEYS, (own.ca, own.cert, own.key), strict=True):
        if value is None:
            resolved[name] = None
            continue
        full = Path(value).expanduser()
        full = full if full.is_absolute() else root / full
        resolved[name] = str(full.absolute())
        try:
            with open(full, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            shown = value if value == resolved[name] else f"{value} ({resolved[name]})"
            problems.append(where.at((*path, name), f"cannot read {shown}: {exc.strerror or exc}"))
    files = TlsFiles(resolved["tls_ca"], resolved["tls_cert"], resolved["tls_key"]).over(default)
    if len(problems) == before:
        try:
            load_client_context(files.ca, files.cert, files.key)
        except TlsFileError as exc:
            first = next((n for n, v in resolved.items() if v is not None), None)
            if first is None:  # only the grid's files, and they were checked there
                return files
            problems.append(where.at((*path, first), str(exc)))
    return files


def _raw_ssh_defaults(graw: Any) -> SshDefaults:
    """The SSH port default from a grid.yaml too broken to build, for address checks."""
    try:
        port = graw["defaults"]["ssh"]["port"]
        return SshDefaults(port=port if isinstance(port, int) and not isinstance(port, bool) else 22)
    except (KeyError, TypeError):
        return SshDefaults()


def _load_grid(
    root: Path, overrides: Mapping[str, str | None], problems: list[Problem]
) -> tuple[Grid | None, Any, str]:
    text = overrides.get(GRID_FILE)
    try:
        if text is None:
            text = read_text(root, GRID_FILE)
        doc = parse_document(text)
    except FileNotFoundError:
        problems.append(
            Problem(GRID_FILE, 0, "", "missing: every inventory needs a grid.yaml (see `gridctl init`)")
        )
        return None, None, ""
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(GRID_FILE, 0, "", f"cannot read: {exc}"))
        return None, None, ""
    except DocumentError as exc:
        problems.append(Problem(GRID_FILE, exc.line, "", exc.message))
        return None, None, ""
    grid, issues = build_grid(doc.value)
    problems.extend(_locate(GRID_FILE, doc, issues))
    return grid, doc.value, text


def _locate(rel: str, doc: Document, issues: list[Issue]) -> list[Problem]:
    return [Problem(rel, doc.line_of(i.path, i.at_key), path_str(i.path), i.message) for i in issues]


def _at(rel: str, doc: Document, path: tuple[str | int, ...], message: str, at_key: bool = False) -> Problem:
    return Problem(rel, doc.line_of(path, at_key), path_str(path), message)


def _names(items: Any) -> list[tuple[int, str]]:
    """(index, name) of the mappings in a raw list that have a string name."""
    if not isinstance(items, list):
        return []
    return [
        (i, it["name"])
        for i, it in enumerate(items)
        if isinstance(it, dict) and isinstance(it.get("name"), str)
    ]


def _check_references(graw: Any, gtext: str, sites: list[_SiteFile]) -> list[Problem]:
    """Sites name existing regions; regions' latency_ms name existing sites.

    Works on the plain parsed values, so a problem elsewhere in a file does not
    hide these."""
    problems: list[Problem] = []
    raw_regions = graw.get("regions", []) if isinstance(graw, dict) else None
    regions = [name for _, name in _names(raw_regions)]
    # Only when every region has a name can a site's region be called unknown.
    regions_known = isinstance(raw_regions, list) and len(regions) == len(raw_regions)
    for sf in sites if regions_known else []:
        region = sf.value.get("region") if isinstance(sf.value, dict) else None
        if isinstance(region, str) and DNS_LABEL.match(region) and region not in regions:
            near = difflib.get_close_matches(region, regions, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            known = ", ".join(regions) or "none defined"
            problems.append(
                sf.at(("region",), f"unknown region '{region}'{hint} (regions in grid.yaml: {known})")
            )
    names = {
        sf.value["name"]
        for sf in sites
        if isinstance(sf.value, dict) and isinstance(sf.value.get("name"), str)
    }
    grid_file = _SiteFile(GRID_FILE, gtext, graw, None)
    for i, region in enumerate(raw_regions if isinstance(raw_regions, list) else []):
        latency = region.get("latency_ms") if isinstance(region, dict) else None
        for site_name in latency if isinstance(latency, dict) else {}:
            if isinstance(site_name, str) and DNS_LABEL.match(site_name) and site_name not in names:
                near = difflib.get_close_matches(site_name, sorted(names), n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                path = ("regions", i, "latency_ms", site_name)
                problems.append(grid_file.at(path, f"unknown site '{site_name}'{hint}", at_key=True))
    return problems


def _check_duplicates(sites: list[_SiteFile], ssh: SshDefaults) -> list[Problem]:
    """Site names, node names and host:port are unique across all files."""
    problems: list[Problem] = []
    site_seen: dict[str, str] = {}
    Seen = tuple[_SiteFile, tuple[str | int, ...]]
    node_seen: dict[str, Seen] = {}
    addr_seen: dict[tuple[str, int], Seen] = {}
    for sf in sites:
        if not isinstance(sf.value, dict):
            continue
        name = sf.value.get("name")
        if isinstance(name, str):
            if name in site_seen:
                message = f"duplicate site name '{name}' (also in {site_seen[name]})"
                problems.append(replace(sf.at(("name",), message), also=(site_seen[name],)))
            else:
                site_seen[name] = sf.rel
        nodes: list[Any] = sf.value.get("nodes") or []
        for i, node_name in _names(nodes):
            if node_name in node_seen:
                message = (
                    f"duplicate node name '{node_name}' (also at {_where(node_seen[node_name])}); "
                    "node names are unique across the grid"
                )
                first = node_seen[node_name][0].rel
                problems.append(replace(sf.at(("nodes", i, "name"), message), also=(first,)))
            else:
                node_seen[node_name] = (sf, ("nodes", i, "name"))
            node = nodes[i]
            host, port = node.get("host"), node.get("port", ssh.port)
            if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
                continue
            addr = (host.lower(), port)
            if addr in addr_seen:
                message = f"duplicate address {host}:{port} (also at {_where(addr_seen[addr])})"
                first = addr_seen[addr][0].rel
                problems.append(replace(sf.at(("nodes", i, "host"), message), also=(first,)))
            else:
                addr_seen[addr] = (sf, ("nodes", i, "host"))
    return problems


def _where(seen: tuple[_SiteFile, tuple[str | int, ...]]) -> str:
    """``file:line`` of an earlier occurrence (located only when reported)."""
    p = seen[0].at(seen[1], "")
    return f"{p.file}:{p.line}"
