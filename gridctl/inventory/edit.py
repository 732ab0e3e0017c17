"""Changes to the inventory: the services behind ``site``/``node`` add, set, rm.

New files are written fresh in schema order. Existing files are edited with
ruamel.yaml's round-trip mode so the operator's comments, key order and
quoting survive. Every change goes through ``store.run_change``: locked,
validated as a whole before writing, atomic.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridctl.errors import ConflictError, NotFoundError, UsageError
from gridctl.inventory.load import read_text, site_file
from gridctl.inventory.model import Inventory, Node, Site
from gridctl.inventory.schema import DNS_LABEL
from gridctl.inventory.store import Changes, run_change


@dataclass(frozen=True)
class Outcome:
    """What a change did, for the CLI to report: ``site/phl-co-12 created``."""

    kind: str  # "site" | "node"
    name: str
    action: str  # created | unchanged | configured | deleted | drained | undrained
    details: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"


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


def add_site(root: Path, spec: SiteSpec) -> Outcome:
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

    run_change(root, plan)
    return result[0]


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


def remove_site(root: Path, name: str) -> Outcome:
    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, name)
        return {site.file: None}

    run_change(root, plan)
    return Outcome("site", name, "deleted")


def set_drain(root: Path, name: str, drain: bool) -> Outcome:
    action = "drained" if drain else "undrained"
    result: list[Outcome] = []

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, name)
        if site.drain == drain:
            result.append(Outcome("site", name, "unchanged", (f"already {action}",)))
            return {}
        result.append(Outcome("site", name, action))
        return {site.file: edit_text(read_text(root, site.file), lambda d: d.__setitem__("drain", drain))}

    run_change(root, plan)
    return result[0]


# key -> converter; labels.<k> and models.<name> are handled apart
SETTABLE: dict[str, Callable[[str], Any]] = {
    "kind": str,
    "region": str,
    "jurisdiction": str,
    "endpoint": str,
    "api_key_env": str,
    "cost_per_gpu_hour": float,
    "drain": lambda v: _parse_bool(v),
    "location.lat": float,
    "location.lon": float,
}
_REMOVABLE = {"api_key_env"}


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True)
class Assignment:
    key: str  # e.g. "drain", "labels.tier", "models.llama-3.1-8b-instruct"
    value: Any  # None: remove
    raw: str


def parse_assignments(items: list[str]) -> list[Assignment]:
    """``KEY=VALUE`` sets, ``KEY-`` removes (labels, models, api_key_env)."""
    out: list[Assignment] = []
    for item in items:
        value: Any
        if "=" not in item and item.endswith("-"):
            key, value = item[:-1], None
        elif "=" in item:
            key, _, text = item.partition("=")
            value = text
        else:
            raise UsageError(
                f"'{item}' is not KEY=VALUE",
                hint="e.g. drain=true cost_per_gpu_hour=2.4 labels.tier=metro labels.old-",
            )
        if key.startswith("labels.") and len(key) > 7:
            out.append(Assignment(key, value, item))
            continue
        if key.startswith("models.") and len(key) > 7:
            if value is not None:
                try:
                    value = int(value)
                except ValueError:
                    raise UsageError(f"{item}: the capacity must be an integer") from None
            out.append(Assignment(key, value, item))
            continue
        if key not in SETTABLE:
            import difflib

            near = difflib.get_close_matches(key, [*SETTABLE, "labels.KEY", "models.NAME"], n=1)
            raise UsageError(
                f"cannot set '{key}'",
                hint=(f"did you mean '{near[0]}'? " if near else "")
                + f"settable: {', '.join(SETTABLE)}, labels.KEY, models.NAME (capacity)",
            )
        if value is None:
            if key not in _REMOVABLE:
                raise UsageError(f"'{key}' cannot be removed, only set", hint=f"e.g. {key}=VALUE")
        else:
            try:
                value = SETTABLE[key](value)
            except ValueError:
                raise UsageError(f"{item}: invalid value for {key}") from None
        out.append(Assignment(key, value, item))
    return out


def set_site(root: Path, name: str, items: list[str]) -> Outcome:
    assignments = parse_assignments(items)
    result: list[Outcome] = []

    def apply(doc: Any) -> None:
        from ruamel.yaml.comments import CommentedMap

        for a in assignments:
            head, _, rest = a.key.partition(".")
            if head in ("labels", "location"):
                target = doc.get(head)
                if target is None:
                    if a.value is None:
                        continue
                    target = doc[head] = CommentedMap()
                if a.value is None:
                    target.pop(rest, None)
                else:
                    target[rest] = a.value
            elif head == "models":
                models = doc.get("models")
                if models is None:
                    models = doc["models"] = []
                entry = next((m for m in models if isinstance(m, dict) and m.get("name") == rest), None)
                if a.value is None:
                    if entry is not None:
                        models.remove(entry)
                elif entry is not None:
                    entry["capacity"] = a.value
                else:
                    new = CommentedMap()
                    new["name"], new["capacity"] = rest, a.value
                    models.append(new)
            elif a.value is None:
                doc.pop(a.key, None)
            else:
                doc[a.key] = a.value

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, name)
        old = read_text(root, site.file)
        new = edit_text(old, apply)
        if _same_data(old, new):
            result.append(Outcome("site", name, "unchanged"))
            return {}
        result.append(Outcome("site", name, "configured", tuple(a.raw for a in assignments)))
        return {site.file: new}

    run_change(root, plan)
    return result[0]


def _same_data(old: str, new: str) -> bool:
    from gridctl.inventory.yamldoc import parse_document

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


def add_node(root: Path, site_name: str, spec: NodeSpec) -> Outcome:
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

    run_change(root, plan)
    return result[0]


def remove_node(root: Path, site_name: str, node_name: str) -> Outcome:
    address = f"{site_name}/{node_name}"

    def apply(doc: Any) -> None:
        nodes = doc["nodes"]
        for i in range(len(nodes) - 1, -1, -1):
            if isinstance(nodes[i], dict) and nodes[i].get("name") == node_name:
                del nodes[i]

    def plan(inv: Inventory) -> Changes:
        site = require_site(inv, site_name)
        if all(n.name != node_name for n in site.nodes):
            import difflib

            near = difflib.get_close_matches(node_name, [n.name for n in site.nodes], n=1)
            raise NotFoundError(
                f"no node '{node_name}' in site {site_name}",
                hint=f"did you mean '{near[0]}'?"
                if near
                else f"list them with `gridctl node ls {site_name}`",
            )
        return {site.file: edit_text(read_text(root, site.file), apply)}

    run_change(root, plan)
    return Outcome("node", address, "deleted")


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
