"""Every way gridctl prints a result: table, wide, json, yaml, name. One place.

Results go to stdout; messages, warnings and progress to stderr. Colour only
when the stream is a terminal and ``NO_COLOR`` is unset.

Stable shapes: ``json`` and ``yaml`` print exactly the dictionaries the
commands build (documented in the README); ``name`` prints one name per line
for ``xargs``; ``table`` is kubectl-style columns, ``wide`` adds columns.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TextIO


class Format(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"
    name = "name"


@dataclass
class Streams:
    """The process's standard streams and environment, injectable for tests."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @property
    def interactive(self) -> bool:
        """Both stdin and stderr are terminals: we may ask the operator."""
        return _isatty(self.stdin) and _isatty(self.stderr)

    def color(self, stream: TextIO) -> bool:
        return _isatty(stream) and "NO_COLOR" not in self.environ and self.environ.get("TERM") != "dumb"

    def out(self, text: str) -> None:
        self.stdout.write(text if text.endswith("\n") or not text else text + "\n")

    def info(self, text: str) -> None:
        self.stderr.write(text + "\n")

    def warn(self, text: str) -> None:
        self.stderr.write(self.paint(f"warning: {text}", "yellow", self.stderr) + "\n")

    def paint(self, text: str, colour: str, stream: TextIO | None = None) -> str:
        if not self.color(stream or self.stdout):
            return text
        return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


_COLOURS = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass(frozen=True)
class Column:
    header: str
    get: Callable[[Mapping[str, Any]], Any]
    colour: Callable[[Any], str | None] = lambda _v: None


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def dump_yaml(data: Any) -> str:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text: str = yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(format_cell(v) for v in value) or "-"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], streams: Streams) -> str:
    """kubectl-style: upper-case headers, columns padded, three spaces apart."""
    cells = [[format_cell(c.get(r)) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["   ".join(c.header.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row, raw in zip(cells, rows, strict=True):
        parts = []
        for i, (text, col) in enumerate(zip(row, columns, strict=True)):
            padded = text.ljust(widths[i]) if i < len(columns) - 1 else text
            colour = col.colour(col.get(raw))
            parts.append(streams.paint(padded, colour) if colour else padded)
        lines.append("   ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def render(
    fmt: Format,
    data: Any,
    table: Callable[[bool], str],
    names: Iterable[str] | None = None,
) -> str:
    """The one ``-o`` switch, for every command. json/yaml: ``data`` itself; name: each of
    ``names`` on a line (``None``: the command has no names, and ``-o name`` shows the table);
    table/wide: ``table(wide)``, the command's human view. A view that must interleave stdout
    with stderr (``exec``: each node's output as it was) writes itself and returns ""."""
    if fmt is Format.json:
        return dump_json(data)
    if fmt is Format.yaml:
        return dump_yaml(data)
    if fmt is Format.name and names is not None:
        return "".join(n + "\n" for n in names)
    return table(fmt is Format.wide)


def emit(
    streams: Streams,
    fmt: Format,
    data: Any,
    table: Callable[[bool], str],
    names: Iterable[str] | None = None,
) -> None:
    """:func:`render` onto stdout."""
    streams.stdout.write(render(fmt, data, table, names))


def table_or_empty(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    wide_columns: Sequence[Column],
    wide: bool,
    streams: Streams,
) -> str:
    """A table of ``rows`` (with ``wide_columns`` when ``wide``); nothing at all without rows."""
    if not rows:
        return ""
    return render_table(rows, [*columns, *wide_columns] if wide else columns, streams)


def render_list(
    fmt: Format,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    wide: Sequence[Column],
    streams: Streams,
    name: Callable[[Mapping[str, Any]], str] = lambda r: str(r["name"]),
) -> str:
    """A listing: json/yaml are the list of objects itself."""
    return render(
        fmt,
        list(rows),
        lambda w: table_or_empty(rows, columns, wide, w, streams),
        map(name, rows),
    )


def render_object(
    fmt: Format,
    obj: Mapping[str, Any],
    describe: Callable[[Mapping[str, Any], bool], str],
    name: Callable[[Mapping[str, Any]], str] = lambda r: str(r["name"]),
) -> str:
    """A single object: json/yaml are the object; table/wide use ``describe``."""
    return render(fmt, obj, lambda w: describe(obj, w), map(name, [obj]))
