"""Changes to the inventory: the services behind ``site``/``node`` add, set, rm.

New files are written fresh in schema order. Existing files are edited with
ruamel.yaml's round-trip mode so the operator's comments, key order and
quoting survive. Every change goes through ``store.apply_change``: locked,
validated as a whole before writing, atomic.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gridctl.core.errors import ConflictError, NotFoundError, UsageError
from gridctl.core.inventory.checks import DNS_LABEL
from gridctl.core.inventory.model import Inventory, Node, Site, SshDefaults
from gridctl.inventory.load import GRID_FILE, KNOWN_HOSTS, read_text, site_file
from gridctl.inventory.store import ChangeResult, Changes, FileChange, apply_change


@dataclass(frozen=True)
class Outcome:
    """What a change did, for the CLI to report: ``site/phl-co-12 created``."""

    kind: str  # "site" | "node" | "region"
    name: str
    action: str  # created | unchanged | configured | deleted | drained | undrained
    details: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()  # what referred to it and went with it: "grid.yaml: regions.x.latency_ms.y"
    notes: tuple[str, ...] = ()  # what the operator must do next (a dropped host key)
    files: tuple[FileChange, ...] = ()
    dry_run: bool = False
    existing: tuple[str, ...] = ()  # problems the inventory already had elsewhere (written anyway)

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"

    def to_dict(self) -> dict[str, Any]:
        """The ``-o json`` shape of every write (README: inventory edits)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "details": list(self.details),
            "removed": list(self.removed),
            "notes": list(self.notes),
            "dry_run": self.dry_run,
            "files": [f.to_dict() for f in self.files],
            "existing_problems": list(self.existing),
        }


def finish_outcome(outcome: list[Outcome], result: ChangeResult) -> Outcome:
    """The outcome the plan recorded, with the files the change wrote (or would write)."""
    return replace(
        outcome[0],
        files=result.files,
        dry_run=result.dry_run,
        existing=tuple(str(p) for p in result.existing),
    )


@dataclass(frozen=True)
class SiteSpec:
    name: str
    kind: str
    region: str
    jurisdiction: str
    lat: float
    lon: float
    endpoint: str
    models: dict[str, int] | None = None  # None: not given
    labels: dict[str, str] | None = None
    cost_per_gpu_hour: float | None = None
    api_key_env: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    name: str
    host: str
    port: int | None = None
    user: str | None = None
    key: str | None = None
    gpu_model: str | None = None
    gpu_count: int | None = None


def check_name(what: str, name: str) -> None:
    """Names reach shells and file paths: refuse anything but a DNS label up front."""
    if not DNS_LABEL.match(name):
        raise UsageError(
            f"invalid {what} name {name!r}",
            hint="use a DNS label: lowercase letters, digits and '-', at most 63 characters",
        )


# ---- sites -------------------------------------------------------------------


def site_document(spec: SiteSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "region": spec.region,
        "jurisdiction": spec.jurisdiction,
        "location": {"lat": spec.lat, "lon": spec.lon},
        "endpoint": spec.endpoint,
    }
    if spec.api_key_env:
        doc["api_key_env"] = spec.api_key_env
    doc["cost_per_gpu_hour"] = spec.cost_per_gpu_hour or 0.0
    doc["drain"] = False
    doc["labels"] = dict(spec.labels or {})
    doc["models"] = [{"name": m, "capacity": c} for m, c in (spec.models or {}).items()]
    doc["nodes"] = []
    return doc


def _site_differences(site: Site, spec: SiteSpec) -> list[str]:
    """What an existing site has that ``spec`` would change (given fields only)."""
    want: dict[str, tuple[Any, Any]] = {
        "kind": (site.kind, spec.kind),
        "region": (site.region, spec.region),
        "jurisdiction": (site.jurisdiction, spec.jurisdiction),
        "location.lat": (site.location.lat, spec.lat),
        "location.lon": (site.location.lon, spec.lon),
        "endpoint": (site.endpoint, spec.endpoint.rstrip("/")),
    }
    if spec.models is not None:
        want["models"] = ({m.name: m.capacity for m in site.models}, spec.models)
    if spec.labels is not None:
        want["labels"] = (dict(site.labels), spec.labels)
    if spec.cost_per_gpu_hour is not None:
        want["cost_per_gpu_hour"] = (site.cost_per_gpu_hour, spec.cost_per_gpu_hour)
    if spec.api_key_env is not None:
        want["api_key_env"] = (site.api_key_env, spec.api_key_env)
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in want.items() if old != new]


def add_site(root: Path, spec: SiteSpec, dry_run: bool = False) -> Outcome:
    check_name("site", spec.name)
    result: list[Outcome] = []

    def plan(inv: Inventory) -> Changes:
        existing = inv.site(spec.name)
        if existing is not None:
            diffs = _site_differences(existing, spec)
            if diffs:
                raise ConflictError(
                    f"site '{spec.name}' already exists with different values: " + "; ".join(diffs),
                    hint=f"change it with `gridctl site set {spec.name} KEY=VALUE`, "
                    f"or `gridctl site rm {spec.name}` first",
                )
            result.append(Outcome("site", spec.name, "unchanged"))
            return {}
        header = f"# Site {spec.name}. Created by `gridctl site add`; edit freely, comments are kept.\n"
        result.append(Outcome("site", spec.name, "created"))
        return {site_file(spec.name): header + _dump_new(site_document(spec))}

    return finish_outcome(result, apply_change(root, plan, dry_run))


def _dump_new(doc: dict[str, Any]) -> str:
    """Block style, lists indented under their key, like hand-written files."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, False)

    text: str = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text


def require_site(inv: Inventory, name: str) -> Site:
    site = inv.site(name)
    if site is None:
        import difflib

        near = difflib.get_close_matches(name, [s.name for s in inv.sites], n=1)
        raise NotFoundError(
            f"no site named '{name}' in {inv.root}",
            hint=f"did you mean '{near[0]}'?" if near else "list sites with `gridctl site ls`",
        )
    return site


def remove_site(root: Path, name: str, dry_run: bool = False) -> Outcome:
    """Delete the site's file, and with it what names the site elsewhere: its
    ``latency_ms`` entries in grid.yaml, its nodes' pinned host keys, its ``.state``."""
    from gridctl.inventory.references import drop_host_keys, drop_latency_entries, drop_state

    result: list[Outcome] = []

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, name)
        changes: dict[str, str | None] = {site.file: None}
        removed: list[str] = []
        dropped: list[str] = []
        grid_text = read_text(root, GRID_FILE)
        new_grid = edit_text(grid_text, lambda d: dropped.extend(drop_latency_entries(d, frozenset({name}))))
        if dropped:
            changes[GRID_FILE] = new_grid
            removed += dropped
        entries = {_host_entry(n) for n in site.nodes}
        keys_text, keys_removed = drop_host_keys(_known_hosts_text(root), entries)
        if keys_text is not None:
            changes[KNOWN_HOSTS] = keys_text
            removed += keys_removed
        state, state_removed = drop_state(
            root, sites=frozenset({name}), nodes=frozenset(n.address for n in site.nodes)
        )
        changes.update(state)
        removed += state_removed
        result.append(Outcome("site", name, "deleted", removed=tuple(removed)))
        return changes

    return finish_outcome(result, apply_change(root, plan, dry_run, with_state=True))


def _known_hosts_text(root: Path) -> str:
    try:
        return read_text(root, KNOWN_HOSTS)
    except FileNotFoundError:
        return ""


def _host_entry(node: Node) -> str:
    from gridctl.fleet.hostkeys import host_entry

    return host_entry(node.host, node.port)


def set_drain(root: Path, name: str, drain: bool, dry_run: bool = False) -> Outcome:
    action = "drained" if drain else "undrained"
    result: list[Outcome] = []

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, name)
        if site.drain == drain:
            result.append(Outcome("site", name, "unchanged", (f"already {action}",)))
            return {}
        result.append(Outcome("site", name, action))
        return {site.file: edit_text(read_text(root, site.file), lambda d: d.__setitem__("drain", drain))}

    return finish_outcome(result, apply_change(root, plan, dry_run))


def edit_fields(
    old: str, items: list[str], shape: Any, validate: Callable[[Any], list[Any]], prefix: str = ""
) -> tuple[str, Any]:
    """``old`` with ``items`` (KEY=VALUE / KEY-) applied, comments kept, and the document as
    plain data after; values typed by the schema (see :mod:`gridctl.inventory.fields`)."""
    from ruamel.yaml.comments import CommentedMap

    from gridctl.core.inventory.yamldoc import parse_document
    from gridctl.inventory import fields

    if not items:
        raise UsageError("nothing to set", hint="give KEY=VALUE (or KEY- to remove), e.g. drain=true")
    plain = parse_document(old).value
    chosen: list[tuple[fields.Assignment, Any]] = []
    for item in items:
        a = fields.parse_assignment(item, shape, plain, prefix)
        if a.text is None:
            plain = copy.deepcopy(plain)
            fields.apply(plain, a, None)
            value = None
        else:
            value, plain = fields.choose_value(plain, a, validate)
        chosen.append((a, value))

    def change(doc: Any) -> None:
        for a, value in chosen:
            fields.apply(doc, a, value, CommentedMap, fields.yaml_scalar)

    return edit_text(old, change), plain


def _set_fields(
    root: Path, site: Site, items: list[str], ssh: SshDefaults, prefix: str = ""
) -> tuple[str, str, Any]:
    from gridctl.core.inventory.site_schema import build_site
    from gridctl.inventory import fields

    old = read_text(root, site.file)
    new, plain = edit_fields(old, items, fields.SITE, lambda d: build_site(d, ssh)[1], prefix)
    return old, new, plain


def set_site(root: Path, name: str, items: list[str], dry_run: bool = False) -> Outcome:
    """``site set NAME KEY=VALUE...``: any field of the schema, by dotted path."""
    result: list[Outcome] = []

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, name)
        old, new, _ = _set_fields(root, site, items, inv.grid.ssh)
        if same_data(old, new):
            result.append(Outcome("site", name, "unchanged"))
            return {}
        result.append(Outcome("site", name, "configured", tuple(items)))
        return {site.file: new}

    return finish_outcome(result, apply_change(root, plan, dry_run))


def require_node(site: Site, name: str) -> Node:
    node = next((n for n in site.nodes if n.name == name), None)
    if node is None:
        import difflib

        near = difflib.get_close_matches(name, [n.name for n in site.nodes], n=1)
        raise NotFoundError(
            f"no node '{name}' in site {site.name}",
            hint=f"did you mean '{near[0]}'?" if near else f"list them with `gridctl node ls {site.name}`",
        )
    return node


def set_node(root: Path, site_name: str, node_name: str, items: list[str], dry_run: bool = False) -> Outcome:
    """``node set SITE NODE KEY=VALUE...``: the node's keys (host, port, gpus.count, ...).

    A new address (host or effective port) drops the old one's pinned host key in the
    same change: the next contact checks nothing until ``node trust`` pins the new key."""
    from gridctl.core.inventory.site_schema import build_site
    from gridctl.inventory.references import drop_host_keys

    address = f"{site_name}/{node_name}"
    result: list[Outcome] = []

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, site_name)
        node = require_node(site, node_name)
        old, new, plain = _set_fields(root, site, items, inv.grid.ssh, prefix=f"nodes.{node_name}.")
        if same_data(old, new):
            result.append(Outcome("node", address, "unchanged"))
            return {}
        changes: dict[str, str | None] = {site.file: new}
        removed: list[str] = []
        notes: list[str] = []
        after, _ = build_site(plain, inv.grid.ssh)
        moved = next((n for n in after.nodes if n.name == node_name), None) if after else None
        if moved is not None and (moved.host.lower(), moved.port) != (node.host.lower(), node.port):
            keys_text, removed = drop_host_keys(_known_hosts_text(root), {_host_entry(node)})
            if keys_text is not None:
                changes[KNOWN_HOSTS] = keys_text
            pinned = "its pinned host key was dropped" if removed else "no host key was pinned for it"
            notes.append(
                f"{address} moved from {node.host}:{node.port} to {moved.host}:{moved.port}: {pinned}; "
                f"pin the new one with `gridctl node trust {address}` before the next contact"
            )
        result.append(Outcome("node", address, "configured", tuple(items), tuple(removed), tuple(notes)))
        return changes

    return finish_outcome(result, apply_change(root, plan, dry_run))


def same_data(old: str, new: str) -> bool:
    from gridctl.core.inventory.yamldoc import parse_document

    return bool(parse_document(old).value == parse_document(new).value)


# ---- nodes -------------------------------------------------------------------


def _node_differences(node: Node, spec: NodeSpec) -> list[str]:
    want: dict[str, tuple[Any, Any]] = {"host": (node.host, spec.host)}
    if spec.port is not None:
        want["port"] = (node.port, spec.port)
    if spec.user is not None:
        want["user"] = (node.user, spec.user)
    if spec.key is not None:
        want["key"] = (node.key, spec.key)
    if spec.gpu_model is not None:
        have = (node.gpus.model, node.gpus.count) if node.gpus else None
        want["gpus"] = (have, (spec.gpu_model, spec.gpu_count))
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in want.items() if old != new]


def add_node(root: Path, site_name: str, spec: NodeSpec, dry_run: bool = False) -> Outcome:
    check_name("node", spec.name)
    address = f"{site_name}/{spec.name}"
    result: list[Outcome] = []

    def apply(doc: Any) -> None:
        from ruamel.yaml.comments import CommentedMap

        entry = CommentedMap()
        entry["name"] = spec.name
        entry["host"] = spec.host
        if spec.port is not None:
            entry["port"] = spec.port
        if spec.user is not None:
            entry["user"] = spec.user
        if spec.key is not None:
            entry["key"] = spec.key
        if spec.gpu_model is not None:
            gpus = CommentedMap()
            gpus["model"], gpus["count"] = spec.gpu_model, spec.gpu_count
            gpus.fa.set_flow_style()
            entry["gpus"] = gpus
        if doc.get("nodes") is None:
            doc["nodes"] = []
        doc["nodes"].append(entry)

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, site_name)
        for other in inv.nodes():
            if other.name == spec.name and other.site != site_name:
                raise ConflictError(
                    f"node name '{spec.name}' is already used in site {other.site}",
                    hint="node names are unique across the grid; pick another name",
                )
        existing = next((n for n in site.nodes if n.name == spec.name), None)
        if existing is not None:
            diffs = _node_differences(existing, spec)
            if diffs:
                raise ConflictError(
                    f"node '{address}' already exists with different values: " + "; ".join(diffs),
                    hint=f"remove it first with `gridctl node rm {site_name} {spec.name}`, "
                    f"or edit {site.file}",
                )
            result.append(Outcome("node", address, "unchanged"))
            return {}
        result.append(Outcome("node", address, "created"))
        return {site.file: edit_text(read_text(root, site.file), apply)}

    return finish_outcome(result, apply_change(root, plan, dry_run))


def remove_node(root: Path, site_name: str, node_name: str, dry_run: bool = False) -> Outcome:
    """Remove the node from its site's file, with its pinned host key and its ``.state``."""
    from gridctl.inventory.references import drop_host_keys, drop_state

    address = f"{site_name}/{node_name}"
    result: list[Outcome] = []

    def apply(doc: Any) -> None:
        nodes = doc["nodes"]
        for i in range(len(nodes) - 1, -1, -1):
            if isinstance(nodes[i], dict) and nodes[i].get("name") == node_name:
                del nodes[i]

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, site_name)
        node = require_node(site, node_name)
        changes: dict[str, str | None] = {site.file: edit_text(read_text(root, site.file), apply)}
        keys_text, removed = drop_host_keys(_known_hosts_text(root), {_host_entry(node)})
        if keys_text is not None:
            changes[KNOWN_HOSTS] = keys_text
        state, state_removed = drop_state(root, nodes=frozenset({address}))
        changes.update(state)
        result.append(Outcome("node", address, "deleted", removed=tuple(removed + state_removed)))
        return changes

    return finish_outcome(result, apply_change(root, plan, dry_run, with_state=True))


# ---- round-trip editing --------------------------------------------------------

_SEQ_INDENTED = re.compile(r"^( +)- ", re.MULTILINE)


def edit_text(text: str, change: Callable[[Any], None]) -> str:
    """Apply ``change`` to the YAML mapping in ``text``, keeping comments and order."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    m = _SEQ_INDENTED.search(text)
    if m:  # keep the file's list style: "  - name:" under its key
        offset = len(m.group(1)) % 4 or 2
        yaml.indent(mapping=2, sequence=offset + 2, offset=offset)
    else:
        yaml.indent(mapping=2, sequence=2, offset=0)
    data = yaml.load(text)
    change(data)
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()
