"""Every test asserts something: a test that cannot fail is a defect (STYLE.md).

A test counts as asserting when its body has an ``assert``, a ``raise``, a ``pytest.raises``
/ ``pytest.warns`` / ``pytest.fail``, or calls (by name) a helper of the test suite that does,
directly or through other helpers: ``invalid(cli, ...)`` or ``run.check()`` count, a test
that only calls the code under test does not. Read from the source with ``ast``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
Function = ast.FunctionDef | ast.AsyncFunctionDef
CHECKING_CALLS = {"raises", "warns", "fail"}


def _functions(tree: ast.Module) -> Iterator[Function]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _called(fn: Function) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                names.add(f.id)
            elif isinstance(f, ast.Attribute):
                names.add(f.attr)
    return names


def _checks_itself(fn: Function) -> bool:
    return any(isinstance(node, ast.Assert | ast.Raise) for node in ast.walk(fn)) or bool(
        _called(fn) & CHECKING_CALLS
    )


def _suite() -> tuple[dict[str, list[Function]], list[tuple[str, Function]]]:
    helpers: dict[str, list[Function]] = {}
    tests = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for fn in _functions(tree):
            helpers.setdefault(fn.name, []).append(fn)
            if fn.name.startswith("test_") and path.name.startswith("test_"):
                tests.append((f"{path.relative_to(TESTS.parent)}:{fn.lineno}", fn))
    return helpers, tests


def _asserting(helpers: dict[str, list[Function]]) -> set[str]:
    """Names of the suite's functions that assert, directly or through other such functions."""
    asserting = {name for name, fns in helpers.items() if any(_checks_itself(f) for f in fns)}
    grew = True
    while grew:
        grew = False
        for name, fns in helpers.items():
            if name not in asserting and any(_called(f) & asserting for f in fns):
                asserting.add(name)
                grew = True
    return asserting


def _silent(source: str) -> list[str]:
    tree = ast.parse(source)
    helpers = {fn.name: [fn] for fn in _functions(tree)}
    asserting = _asserting(helpers)
    return [
        fn.name
        for fn in _functions(tree)
        if fn.name.startswith("test_") and not (_checks_itself(fn) or _called(fn) & asserting)
    ]


def test_every_test_in_the_suite_asserts_something() -> None:
    helpers, tests = _suite()
    asserting = _asserting(helpers)
    silent = [where for where, fn in tests if not (_checks_itself(fn) or _called(fn) & asserting)]
    assert len(tests) > 500  # the walk found the suite
    assert silent == [], "tests that cannot fail:\n" + "\n".join(silent)


def test_the_check_tells_a_silent_test_from_an_asserting_one() -> None:
    source = """
def helper(x):
    assert x
def indirect(x):
    helper(x)
def test_direct(): assert 1
def test_through_helpers(): indirect(1)
def test_raises():
    with pytest.raises(ValueError): int("x")
def test_silent(): compute(1)
"""
    assert _silent(source) == ["test_silent"]
