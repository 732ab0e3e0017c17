"""``KEY=VALUE`` edits of any schema field: dotted paths, values typed by the schema.

A key is a dotted path through a document's mappings and, for lists of named
entries (``models``, ``nodes``, ``regions``), through an entry by its name:
``nodes.phl-co-12-gpu-01.gpus.count``, ``models.llama-3.1-8b-instruct.capacity``.
Which keys exist comes from the schema's key tables (``site_schema.SITE_KEYS`` and
friends), so a field added there is settable with no change here.

The user never types YAML: the value's type is the first of text, integer,
number, true/false, comma-separated list that the schema accepts at that path
(the field's current type first, for the free-form ``provision.vars``). So
``jurisdiction=NO`` and ``labels.managed=yes`` stay text, and are written
quoted where a YAML 1.1 reader (PyYAML, Ansible) would read a boolean or a
number; ``gpus.count=lots`` is refused with the schema's own words for the type.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridctl.core.errors import NotFoundError, UsageError
from gridctl.core.inventory import checks, schema, site_schema
from gridctl.core.inventory.checks import Issue


@dataclass(frozen=True)
class Shape:
    """What a mapping of the schema holds: its keys (None: any key, as labels), the keys
    that are mappings themselves, and the keys that are lists of named entries."""

    keys: Mapping[str, bool] | None  # key -> required
    children: Mapping[str, Shape] = field(default_factory=dict)
    named: Mapping[str, Shape] = field(default_factory=dict)
    flow: bool = False  # a new one is written {a: 1, b: 2}, as the example inventory does


FREE = Shape(None)
LOCATION = Shape(checks.LOCATION_KEYS, flow=True)
PROVISION = Shape(site_schema.PROVISION_KEYS, children={"vars": FREE})
NODE = Shape(
    site_schema.NODE_KEYS, children={"gpus": Shape(site_schema.GPUS_KEYS, flow=True), "provision": PROVISION}
)
MODEL = Shape(site_schema.MODEL_KEYS)
SITE = Shape(
    site_schema.SITE_KEYS,
    children={"location": LOCATION, "labels": FREE, "provision": PROVISION},
    named={"models": MODEL, "nodes": NODE},
)
REGION = Shape(schema.REGION_KEYS, children={"location": LOCATION, "latency_ms": FREE})
GRID = Shape(schema.GRID_KEYS, named={"regions": REGION})

# Step of a path: a key of a mapping, or ("list key", "entry name").
Step = str | tuple[str, str]


@dataclass(frozen=True)
class Assignment:
    raw: str  # as typed: "nodes.gpu-01.gpus.count=8"
    key: str  # "nodes.gpu-01.gpus.count"
    steps: tuple[Step, ...]
    text: str | None  # None: remove
    create: bool = False  # a named entry that may be created (models.NAME.capacity)


def parse_assignment(item: str, shape: Shape, doc: Any, prefix: str = "") -> Assignment:
    """``KEY=VALUE`` (set) or ``KEY-`` (remove), resolved against ``shape`` and the
    document's current entries (names may hold dots: llama-3.1-8b-instruct)."""
    if "=" in item:
        key, _, text = item.partition("=")
        value: str | None = text
    elif item.endswith("-") and len(item) > 1:
        key, value = item[:-1], None
    else:
        raise UsageError(
            f"'{item}' is not KEY=VALUE",
            hint="e.g. drain=true cost_per_gpu_hour=2.4 labels.tier=metro nodes.N.gpus.count=8 labels.old-",
        )
    full = prefix + key
    steps, create = _resolve(full, shape, doc, item)
    if value is None and not create:
        _check_removable(steps, shape, item)
    return Assignment(item, full, steps, value, create)


def _resolve(key: str, shape: Shape, doc: Any, item: str) -> tuple[tuple[Step, ...], bool]:
    """Walk ``key`` down the document's shape: the steps to the value, and whether setting it
    creates an entry (``models.NAME=64`` on a model not yet served)."""
    walk = _Walk(shape, doc, key, "", [])
    while True:
        if walk.shape.keys is None:  # labels, vars, latency_ms: the rest is the key, dots and all
            if not walk.rest:
                where = walk.where
                raise UsageError(f"{item}: '{where}' needs a key after it", hint=f"e.g. {where}.KEY=VALUE")
            walk.steps.append(walk.rest)
            return tuple(walk.steps), False
        head, dot, tail = walk.rest.partition(".")
        if head in walk.shape.named:
            done = _enter_entry(walk, head, dot, tail, item)
        else:
            _check_key(walk, key, head, item)
            walk.steps.append(head)
            if head not in walk.shape.children:
                if dot:
                    raise UsageError(f"{item}: '{walk.where}{head}' is a single value, it has no '{tail}'")
                return tuple(walk.steps), False
            done = _enter_mapping(walk, head, dot, tail, item)
        if done is not None:
            return tuple(walk.steps), done


@dataclass
class _Walk:
    """Where ``_resolve`` is: the shape and document under it, the key left, the path so far."""

    shape: Shape
    cur: Any
    rest: str
    where: str  # the dotted path walked, ending in '.' (for messages)
    steps: list[Step]


def _enter_entry(walk: _Walk, head: str, dot: str, tail: str, item: str) -> bool | None:
    """``models.NAME...``, ``nodes.NAME...``: step into the named entry of a list; a result
    when the walk ends here (``models.NAME=64``: its capacity), else None."""
    entries = walk.cur.get(head) if isinstance(walk.cur, dict) else None
    names = [e["name"] for e in _entries(entries)]
    where = walk.where
    if not dot or not tail:
        raise UsageError(
            f"{item}: '{where + head}' is a list: name an entry",
            hint=f"e.g. {where}{head}.NAME.KEY=VALUE (names: {', '.join(names) or 'none yet'})",
        )
    child = walk.shape.named[head]
    name, sub = _split_name(tail, names, child)
    entry = next((e for e in entries or [] if isinstance(e, dict) and e.get("name") == name), None)
    walk.steps.append((head, name))
    if head == "models" and sub in ("", "capacity"):  # models.NAME=64, models.NAME.capacity=64
        walk.steps.append("capacity")
        return entry is None or sub == ""
    if entry is None:
        near = difflib.get_close_matches(name, names, n=1)
        raise NotFoundError(
            f"{item}: no {head[:-1]} named '{name}'",
            hint=f"did you mean '{near[0]}'?" if near else f"{head}: {', '.join(names) or 'none'}",
        )
    if not sub:
        raise UsageError(
            f"{item}: '{where}{head}.{name}' is an entry: name one of its keys",
            hint=f"keys: {', '.join(k for k in child.keys or {} if k != 'name')}",
        )
    walk.shape, walk.cur, walk.rest, walk.where = child, entry, sub, f"{where}{head}.{name}."
    return None


def _check_key(walk: _Walk, key: str, head: str, item: str) -> None:
    """Refuse a key the shape does not have (with the near one) and ``name`` (not settable)."""
    shape, where = walk.shape, walk.where
    if shape.keys is not None and head not in shape.keys:
        options = [*(k for k in shape.keys if k not in shape.named), *(f"{k}.NAME" for k in shape.named)]
        near = difflib.get_close_matches(head, list(shape.keys), n=1, cutoff=0.6)
        raise UsageError(
            f"cannot set '{key}': no key '{head}' in {where.rstrip('.') or 'this document'}",
            hint=(f"did you mean '{where}{near[0]}'? " if near else "")
            + f"keys here: {', '.join(k for k in options if k != 'name')}",
        )
    if head == "name":
        raise UsageError(
            f"{item}: names cannot be changed with set",
            hint="add the new one, move what you need, then remove the old one",
        )


def _enter_mapping(walk: _Walk, head: str, dot: str, tail: str, item: str) -> bool | None:
    """``location.lat``, ``provision.vars.X``: step into a nested mapping; a result when the
    walk ends here (``location-`` removes it whole), else None."""
    where = walk.where
    if not dot:
        child_keys = ", ".join(walk.shape.children[head].keys or ["KEY"])
        if item.endswith("-"):
            return False
        raise UsageError(
            f"{item}: '{where}{head}' is a mapping: set its keys one by one",
            hint=f"e.g. {where}{head}.{child_keys.split(', ')[0]}=VALUE (keys: {child_keys})",
        )
    walk.cur = walk.cur.get(head) if isinstance(walk.cur, dict) else None
    walk.shape, walk.rest, walk.where = walk.shape.children[head], tail, f"{where}{head}."
    return None


def _split_name(tail: str, names: list[str], child: Shape) -> tuple[str, str]:
    """``llama-3.1-8b-instruct.capacity`` -> (the entry's name, the key under it)."""
    for name in sorted(names, key=len, reverse=True):
        if tail == name or tail.startswith(name + "."):
            return name, tail[len(name) + 1 :]
    for i in range(len(tail) - 1, -1, -1):  # a new entry: split before a key of its shape
        if tail[i] == "." and tail[i + 1 :].partition(".")[0] in (child.keys or {}):
            return tail[:i], tail[i + 1 :]
    return tail, ""


def _check_removable(steps: tuple[Step, ...], shape: Shape, item: str) -> None:
    cur = shape
    for step in steps[:-1]:
        cur = cur.named[step[0]] if isinstance(step, tuple) else cur.children.get(step, FREE)
    last = steps[-1]
    if isinstance(last, tuple):
        if last[0] != "models":
            raise UsageError(f"{item}: entries of {last[0]} are not removed with set", hint="use `rm`")
        return
    if cur.keys is not None and cur.keys.get(last, False):
        raise UsageError(f"'{last}' cannot be removed, only set (it is required)", hint=f"e.g. {last}=VALUE")


def _entries(items: Any) -> list[dict[str, Any]]:
    """The named entries of a list (models, nodes, regions)."""
    if not isinstance(items, list):
        return []
    return [e for e in items if isinstance(e, dict) and isinstance(e.get("name"), str)]


def _named(entry: Any, name: str) -> bool:
    return isinstance(entry, dict) and entry.get("name") == name


# ---- applying ------------------------------------------------------------------------


def _walk(doc: Any, steps: tuple[Step, ...], create: bool, new_map: Callable[[], Any]) -> tuple[Any, Any]:
    """The container holding the last step, and the last step's key (index for entries)."""
    cur = doc
    for step in steps[:-1]:
        if isinstance(step, tuple):
            lst = cur.get(step[0])
            if lst is None:
                lst = cur[step[0]] = []
            entry = next((e for e in lst if isinstance(e, dict) and e.get("name") == step[1]), None)
            if entry is None:
                entry = new_map()
                entry["name"] = step[1]
                lst.append(entry)
            cur = entry
        else:
            nxt = cur.get(step)
            if not isinstance(nxt, dict):
                nxt = cur[step] = new_map()
            cur = nxt
    last = steps[-1]
    if isinstance(last, tuple):
        lst = cur.get(last[0]) or []
        idx = next((i for i, e in enumerate(lst) if isinstance(e, dict) and e.get("name") == last[1]), None)
        return lst, idx
    return cur, last


def _get(doc: Any, steps: tuple[Step, ...]) -> Any:
    cur = doc
    for step in steps:
        if isinstance(step, tuple):
            lst = cur.get(step[0]) if isinstance(cur, dict) else None
            cur = next((e for e in lst or [] if isinstance(e, dict) and e.get("name") == step[1]), None)
        else:
            cur = cur.get(step) if isinstance(cur, dict) else None
        if cur is None:
            return None
    return cur


def _same(value: Any) -> Any:
    return value


def apply(
    doc: Any,
    a: Assignment,
    value: Any,
    new_map: Callable[[], Any] = dict,
    quote: Callable[[Any], Any] = _same,
) -> None:
    """Set (or, with ``a.text`` None, remove) the assignment's value in ``doc`` in place;
    ``quote`` dresses the key and the value for the writer (:func:`yaml_scalar`)."""
    if a.text is None:
        if a.create:  # models.NAME-: the entry
            holder, idx = _walk(doc, a.steps[:-1], False, new_map)
            if idx is not None:
                del holder[idx]
            return
        if _get(doc, a.steps[:-1]) is None:
            return
        holder, key = _walk(doc, a.steps, False, new_map)
        if isinstance(holder, dict):
            holder.pop(key, None)
        return
    holder, key = _walk(doc, a.steps, True, new_map)
    holder[quote(key) if key not in holder else key] = quote(value)


def index_path(doc: Any, steps: tuple[Step, ...]) -> tuple[str | int, ...]:
    """The steps as a problem path: ("nodes", 1, "gpus", "count")."""
    out: list[str | int] = []
    cur = doc
    for step in steps:
        if isinstance(step, tuple):
            lst = cur.get(step[0]) if isinstance(cur, dict) else []
            idx = next((i for i, e in enumerate(lst or []) if _named(e, step[1])), 0)
            out += [step[0], idx]
            cur = lst[idx] if lst else None
        else:
            out.append(step)
            cur = cur.get(step) if isinstance(cur, dict) else None
    return tuple(out)


# ---- typing by the schema --------------------------------------------------------------


def _candidates(text: str, current: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("text", text)]
    try:
        out.append(("integer", int(text.strip())))
    except ValueError:
        try:
            number = float(text.strip())
            if math.isfinite(number):
                out.append(("number", number))
        except ValueError:
            pass
    low = text.strip().lower()
    if low in ("true", "yes", "on", "false", "no", "off"):
        out.append(("bool", low in ("true", "yes", "on")))
    out.append(("list", [part.strip() for part in text.split(",")] if text.strip() else []))
    if isinstance(current, bool):
        out.sort(key=lambda c: c[0] != "bool")
    elif isinstance(current, int | float) and not isinstance(current, bool):
        out.sort(key=lambda c: c[0] not in ("integer", "number"))
    elif isinstance(current, list):
        out.sort(key=lambda c: c[0] != "list")
    return out


def choose_value(plain: Any, a: Assignment, validate: Callable[[Any], list[Issue]]) -> tuple[Any, Any]:
    """The first typing of ``a.text`` the schema accepts at its path, and ``plain`` with it set.

    ``plain`` is the document as plain data (not modified); ``validate`` returns the
    schema's issues for a whole document."""
    current = _get(plain, a.steps)
    refused: list[tuple[str, Any, str]] = []
    assert a.text is not None
    for kind, value in _candidates(a.text, current):
        trial = copy.deepcopy(plain)
        apply(trial, a, value)
        path = index_path(trial, a.steps)
        here = [i for i in validate(trial) if i.path[: len(path)] == path and not i.at_key]
        if not here:
            return value, trial
        refused.append((kind, value, here[0].message))
    # the schema's words for the type: from a number it could parse, else from the text
    best = next((r for r in refused if r[0] in ("integer", "number")), refused[0])
    raise UsageError(
        f"{a.key}: {best[2]}",
        hint="type the value plainly, no YAML quotes (8, 2.5, true, NO, US,CA); "
        "the README's inventory reference gives each field's type",
    )


def yaml_scalar(value: Any) -> Any:
    """A text value as ruamel should write it: quoted where YAML 1.1 (PyYAML, which
    gridctl and Ansible read with) would take it for something else (yes, NO, on, 012)."""
    if isinstance(value, list):
        from ruamel.yaml.comments import CommentedSeq

        seq = CommentedSeq(yaml_scalar(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    if not isinstance(value, str):
        return value
    import yaml

    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    if tag != "tag:yaml.org,2002:str":
        from ruamel.yaml.scalarstring import DoubleQuotedScalarString

        return DoubleQuotedScalarString(value)
    return value
