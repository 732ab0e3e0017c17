"""The daemon's layout holds: the /metrics parser is pure, the daemon's and net's modules import
no cycle, and one parser reads what a request asks of placement (headers and /grid/route)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from gridctl.core.placement.decision import Request
from gridctl.daemon.admission import parse_count, parse_placement

PACKAGE = Path(__file__).resolve().parents[2] / "gridctl"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, TYPE_CHECKING blocks and function bodies included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_metrics_parser_imports_only_the_standard_library() -> None:
    outside = {m for m in _imports(PACKAGE / "core" / "metrics.py") if m != "__future__"}
    assert outside, "no import found: the test reads the wrong file"
    assert {m for m in outside if m.split(".")[0] not in sys.stdlib_module_names} == set()


def test_the_daemon_and_net_modules_import_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for package in ("daemon", "net", "core"):
        for path in (PACKAGE / package).glob("*.py"):
            name = f"gridctl.{package}.{path.stem}".removesuffix(".__init__")
            graph[name] = {m for m in _imports(path) if m.startswith("gridctl.")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            assert dep not in path, " -> ".join([*path[path.index(dep) :], dep])
            if dep in graph and dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])
    assert "gridctl.daemon.proxy" in graph and "gridctl.net.connection" in graph


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (("us-east", "m", None, None), Request("us-east", "m", None, None)),
        (("us-east", "m", "eu", "250"), Request("us-east", "m", "EU", 250.0)),
        (("us-east", "m", "", "1e3"), Request("us-east", "m", None, 1000.0)),
    ],
)
def test_one_parser_for_what_a_request_asks(
    args: tuple[str, str, str | None, str | None], want: Request
) -> None:
    assert parse_placement(*args) == want


@pytest.mark.parametrize("slo", ["fast", "0", "-5", "nan", "inf", ""])
def test_an_slo_must_be_a_positive_number(slo: str) -> None:
    with pytest.raises(ValueError):
        parse_placement("us-east", "m", None, slo)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0", True),
        ("4096", True),
        ("-1", False),
        ("1_000", False),
        (" 5", False),
        ("١٢", False),
        ("9" * 10, False),
    ],
)
def test_a_token_count_is_plain_digits_and_bounded(text: str, ok: bool) -> None:
    if ok:
        assert parse_count(text) == int(text)
    else:
        with pytest.raises(ValueError):
            parse_count(text)
