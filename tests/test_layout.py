"""The import contract (docs/ARCHITECTURE.md): the folder says what a module may do.

- ``gridctl.core`` is pure: it imports only the standard library's computing modules (listed
  below), PyYAML's parser and ``gridctl.core``; it calls no builtin or method that touches a
  file, a process or the terminal.
- Imports run one way: nothing imports the CLI but the CLI (and ``__main__``), the daemon is
  imported only by the CLI and the demo, and ``gridctl.net`` knows nothing above it.
- No import cycles anywhere in the package, counting every import (in functions too): a
  cycle hidden in a function is still a cycle.
- No module over 500 lines.

Read from the source with ``ast``: nothing is imported to check it, so the test cannot be
fooled by import order or by a module that is never loaded.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gridctl"

# What the pure core may import from outside itself. Anything else (os, socket, asyncio,
# subprocess, threading, time, random, ssl, http, jinja2, httpx, paramiko...) is the shell's.
CORE_MAY_IMPORT = {
    "__future__",
    "abc",
    "bisect",
    "collections",
    "collections.abc",
    "copy",
    "dataclasses",
    "difflib",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "ipaddress",
    "itertools",
    "json",
    "math",
    "operator",
    "re",
    "shlex",
    "statistics",
    "string",
    "textwrap",
    "types",
    "typing",
    "urllib.parse",
    "yaml",
    "yaml.nodes",
}
# pathlib only for the Path *type* of a value the shell hands in (the inventory's root):
# no call in the core may touch the file system (FILE_METHODS below).
CORE_PATH_TYPE = {"gridctl/core/inventory/model.py"}
CORE_FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "breakpoint", "__import__"}
FILE_METHODS = {
    "read_text",
    "read_bytes",
    "write_text",
    "write_bytes",
    "exists",
    "is_file",
    "is_dir",
    "iterdir",
    "glob",
    "rglob",
    "stat",
    "lstat",
    "mkdir",
    "unlink",
    "rename",
    "replace",
    "resolve",
    "touch",
    "chmod",
}
MAX_MODULE_LINES = 500


@dataclass(frozen=True)
class Import:
    module: str  # the module imported (absolute)
    line: int


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def rel(self) -> str:
        return self.path.relative_to(PACKAGE.parent).as_posix()


def _modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


MODULES = _modules()


def _imports(mod: Module) -> Iterator[Import]:
    """Every import in the module, as absolute names; ``from a import b`` yields ``a.b``
    when ``a.b`` is itself a gridctl module, else ``a``."""
    package = mod.name if mod.path.name == "__init__.py" else mod.name.rpartition(".")[0]
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Import(sub if sub in MODULES else base, node.lineno)


def _gridctl_deps(mod: Module) -> set[str]:
    return {imp.module for imp in _imports(mod) if imp.module in MODULES} - {mod.name}


def _is_core(name: str) -> bool:
    return name == "gridctl.core" or name.startswith("gridctl.core.")


CORE = [m for m in MODULES.values() if _is_core(m.name)]


def test_the_core_is_a_package_with_the_pure_modules() -> None:
    names = {m.name for m in CORE}
    for expected in (
        "gridctl.core.errors",
        "gridctl.core.breaker",
        "gridctl.core.placement.engine",
        "gridctl.core.placement.predict",
        "gridctl.core.placement.perf",
        "gridctl.core.placement.prefix",
        "gridctl.core.health.classify",
        "gridctl.core.inventory.model",
        "gridctl.core.inventory.schema",
    ):
        assert expected in names


def _type_only_lines(mod: Module) -> set[int]:
    """Lines of the imports under ``if TYPE_CHECKING:``: names for annotations, never loaded."""
    lines: set[int] = set()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for inner in node.body:
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


@pytest.mark.parametrize("mod", CORE, ids=lambda m: m.rel)
def test_core_imports_only_computing_modules_and_the_core(mod: Module) -> None:
    """A standard-library type for an annotation only (``ssl.SSLContext``, a value the shell
    builds and hands in) may be imported under ``TYPE_CHECKING``; the shell's modules may not."""
    allowed = CORE_MAY_IMPORT | ({"pathlib"} if mod.rel in CORE_PATH_TYPE else set())
    type_only = _type_only_lines(mod)
    bad = [
        f"{mod.rel}:{imp.line} imports {imp.module}"
        for imp in _imports(mod)
        if not _is_core(imp.module)
        and imp.module not in allowed
        and not (imp.line in type_only and not imp.module.startswith("gridctl"))
    ]
    assert bad == [], "the pure core imports the shell or an I/O library:\n" + "\n".join(bad)


@pytest.mark.parametrize("mod", CORE, ids=lambda m: m.rel)
def test_core_calls_nothing_that_touches_files_or_the_terminal(mod: Module) -> None:
    bad = []
    for node in ast.walk(mod.tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id in CORE_FORBIDDEN_CALLS:
            bad.append(f"{mod.rel}:{node.lineno} calls {fn.id}()")
        elif isinstance(fn, ast.Attribute) and fn.attr in FILE_METHODS:
            bad.append(f"{mod.rel}:{node.lineno} calls .{fn.attr}()")
    assert bad == [], "the pure core does I/O:\n" + "\n".join(bad)


def _importers_of(prefix: str) -> set[str]:
    return {
        m.name
        for m in MODULES.values()
        if not (m.name == prefix or m.name.startswith(prefix + "."))
        and any(d == prefix or d.startswith(prefix + ".") for d in _gridctl_deps(m))
    }


def test_only_the_cli_imports_the_cli() -> None:
    assert _importers_of("gridctl.cli") <= {"gridctl.__main__"}


def test_the_daemon_is_imported_only_by_the_cli_and_the_demo() -> None:
    assert _importers_of("gridctl.daemon") <= {"gridctl.demo"} | {
        m for m in MODULES if m.startswith("gridctl.cli")
    }


def test_net_knows_nothing_above_it() -> None:
    for mod in MODULES.values():
        if mod.name.startswith("gridctl.net"):
            above = {d for d in _gridctl_deps(mod) if not d.startswith("gridctl.net") and not _is_core(d)}
            assert above == set(), f"{mod.rel} imports {sorted(above)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    graph = {name: _gridctl_deps(mod) for name, mod in MODULES.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_contract_sees_a_forbidden_import() -> None:
    tree = ast.parse("import socket\nfrom gridctl.daemon import server\nfrom . import model\n")
    fake = Module("gridctl.core.inventory.fake", PACKAGE / "core" / "inventory" / "fake.py", tree)
    assert [i.module for i in _imports(fake)] == [
        "socket",
        "gridctl.daemon.server",
        "gridctl.core.inventory.model",
    ]


@pytest.mark.parametrize("mod", list(MODULES.values()), ids=lambda m: m.rel)
def test_no_module_over_500_lines(mod: Module) -> None:
    lines = len(mod.path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{mod.rel} has {lines} lines"


MAX_BODY_LINES = 60
# the per-site loop of the decision is written out inline: it is the daemon's hot path, and
# bench/daemon_instructions.py counts what each extra call in it costs per request
LONG_BY_MEASURE = {"gridctl/core/placement/engine.py:order"}


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end: the signature (a Typer
    command's options) and the docstring do not count."""
    body = fn.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return (fn.end_lineno or fn.lineno) - body[0].lineno + 1


def test_functions_read_top_to_bottom() -> None:
    """No function body over 60 lines: a longer one is split where the split names a step."""
    long = []
    for mod in MODULES.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{mod.rel}:{node.name}"
                if _body_lines(node) > MAX_BODY_LINES and where not in LONG_BY_MEASURE:
                    long.append(f"{where} ({_body_lines(node)} lines)")
    assert long == []
