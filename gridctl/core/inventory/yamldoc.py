"""Parse YAML documents fast (libyaml when available) and locate paths in them.

Loading composes the document into nodes with libyaml's C composer and turns
the nodes into plain Python values with a small converter: faster than
PyYAML's constructor, and it keeps the nodes so a validation problem at
``nodes[1].gpus.count`` can be traced back to its line without a second parse.
The converter also rejects what PyYAML would accept silently: duplicate keys
(the later value would win), recursive aliases and alias bombs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it


class _Loader(_Base):  # type: ignore[misc]
    """The safe loader, minus resolver-path bookkeeping: no path resolvers are
    registered, so descending and ascending the path is wasted work per node."""

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None


Path = tuple[str | int, ...]

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_MAX_DEPTH = 50
_MAX_NODES = 200_000
_constructor = yaml.constructor.SafeConstructor()


class DocumentError(Exception):
    """The text is not a usable YAML document; ``line`` is 1-based (0: unknown)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class Document:
    value: Any
    node: Node | None

    def line_of(self, path: Path, at_key: bool = False) -> int:
        """The 1-based line of ``path`` (or of its deepest existing parent)."""
        node = self.node
        if node is None:
            return 1
        line = node.start_mark.line + 1
        for i, seg in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, MappingNode):
                pair = _find_key(node, seg)
                if pair is None:
                    return line
                knode, node = pair
                line = (knode if (last and at_key) else node).start_mark.line + 1
            elif isinstance(node, SequenceNode) and isinstance(seg, int):
                if not 0 <= seg < len(node.value):
                    return line
                node = node.value[seg]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _find_key(node: MappingNode, seg: str | int) -> tuple[Node, Node] | None:
    """The (key, value) nodes named by ``seg``: the equal key, else one whose text it is
    (a problem path names the keys 1 or true as "1" or "True")."""
    keys = [(k, v) for k, v in node.value if isinstance(k, ScalarNode)]
    exact = next((kv for kv in keys if _scalar(kv[0]) == seg), None)
    return exact or next((kv for kv in keys if str(_scalar(kv[0])) == seg), None)


def parse_document(text: str) -> Document:
    """YAML text -> Document; raises DocumentError with the offending line."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "cannot parse"
        return _raise(mark.line + 1 if mark else 0, f"invalid YAML: {what}")
    except yaml.reader.ReaderError as exc:
        # its str() spans two lines and names no line; any occurrence of the
        # character is refused, so its first occurrence is where the reader stopped
        pos = text.find(chr(exc.character))
        line = text.count("\n", 0, pos) + 1 if pos >= 0 else 0
        what = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        return _raise(line, f"invalid YAML: {what}")
    except yaml.YAMLError as exc:
        return _raise(0, f"invalid YAML: {exc}")
    except (ValueError, UnicodeError) as exc:
        return _raise(0, f"invalid YAML: {exc}")
    if node is None:
        return Document(None, None)
    return Document(_Converter().convert(node, 0, ()), node)


def path_str(path: Path) -> str:
    """("nodes", 1, "gpus", "count") -> "nodes[1].gpus.count"."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


def _raise(line: int, message: str) -> Document:
    raise DocumentError(line, message)


def _scalar(node: ScalarNode) -> Any:
    tag = node.tag
    if tag == _STR:
        return node.value
    try:
        if tag == _INT:
            try:
                return int(node.value)
            except ValueError:
                return _constructor.construct_yaml_int(node)
        if tag == _FLOAT:
            try:
                return float(node.value)
            except ValueError:
                return _constructor.construct_yaml_float(node)
    except (ValueError, ArithmeticError) as exc:
        raise DocumentError(node.start_mark.line + 1, f"invalid number {node.value!r}") from exc
    if tag == _BOOL:
        low = node.value.lower()
        if low in ("yes", "true", "on", "y", "no", "false", "off", "n"):
            return low in ("yes", "true", "on", "y")
        raise DocumentError(node.start_mark.line + 1, f"invalid boolean {node.value!r}")
    if tag == _NULL:
        return None
    return node.value  # timestamps, binary and custom tags stay text


class _Converter:
    def __init__(self) -> None:
        self.count = 0
        self.stack: set[int] = set()

    def convert(self, node: Node, depth: int, _path: Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise DocumentError(node.start_mark.line + 1, "document too large (too many nodes or aliases)")
        if depth > _MAX_DEPTH:
            raise DocumentError(node.start_mark.line + 1, f"nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, ScalarNode):
            return _scalar(node)
        if id(node) in self.stack:
            raise DocumentError(node.start_mark.line + 1, "recursive alias")
        self.stack.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.convert(item, depth + 1, ()) for item in node.value]
            assert isinstance(node, MappingNode)
            return self._mapping(node, depth)
        finally:
            self.stack.discard(id(node))

    def _mapping(self, node: MappingNode, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE:
                sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
                for src in sources:
                    value = self.convert(src, depth + 1, ())
                    if not isinstance(value, dict):
                        raise DocumentError(src.start_mark.line + 1, "merge key '<<' needs a mapping")
                    for k, v in value.items():
                        merged.setdefault(k, v)
                continue
            key = self.convert(knode, depth + 1, ())
            if isinstance(key, (dict, list)):
                raise DocumentError(knode.start_mark.line + 1, "a key must be a plain value")
            if key in out:
                raise DocumentError(
                    knode.start_mark.line + 1,
                    f"duplicate key {key!r} (the later value would silently win); keep one",
                )
            out[key] = self.convert(vnode, depth + 1, ())
        for k, v in merged.items():
            out.setdefault(k, v)
        return out
