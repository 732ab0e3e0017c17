"""The one -o switch (output.render) and the one way to an exit code (QuietExit)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from gridctl.cli import main
from gridctl.core.errors import ExitCode, QuietExit
from gridctl.output import Column, Format, Streams, emit, render, render_list, render_object

ROWS = [{"name": "a", "n": 1}, {"name": "b", "n": 2.5}]
COLUMNS = [Column("NAME", lambda r: r["name"])]
WIDE = [Column("N", lambda r: r["n"])]


def _table(wide: bool) -> str:
    return "WIDE\n" if wide else "TABLE\n"


@pytest.mark.parametrize(
    ("fmt", "names", "expected"),
    [
        (Format.json, ["a"], json.dumps(ROWS, indent=2) + "\n"),
        (Format.yaml, ["a"], "- name: a\n  n: 1\n- name: b\n  n: 2.5\n"),
        (Format.name, ["a", "b"], "a\nb\n"),
        (Format.name, [], ""),
        (Format.name, None, "TABLE\n"),  # a command without names shows its table
        (Format.table, ["a"], "TABLE\n"),
        (Format.wide, ["a"], "WIDE\n"),
    ],
)
def test_render_switches_once_on_the_format(fmt: Format, names: list[str] | None, expected: str) -> None:
    assert render(fmt, ROWS, _table, names) == expected


def test_names_and_the_table_are_made_only_for_their_format() -> None:
    def no_table(_wide: bool) -> str:
        raise AssertionError("the table was rendered for -o name")

    def no_names() -> Iterator[str]:
        raise AssertionError("names were computed for -o table")
        yield ""

    assert render(Format.name, ROWS, no_table, (r["name"] for r in ROWS)) == "a\nb\n"
    assert render(Format.table, ROWS, _table, no_names()) == "TABLE\n"


def test_emit_writes_the_render_on_stdout() -> None:
    streams = Streams(stdout=io.StringIO(), stderr=io.StringIO())
    emit(streams, Format.name, ROWS, _table, ["a"])
    assert streams.stdout.getvalue() == "a\n"  # type: ignore[attr-defined]
    assert streams.stderr.getvalue() == ""  # type: ignore[attr-defined]


def test_lists_and_objects_go_through_the_same_switch() -> None:
    streams = Streams(stdout=io.StringIO(), environ={"NO_COLOR": "1"})
    assert render_list(Format.table, ROWS, COLUMNS, WIDE, streams) == "NAME\na\nb\n"
    assert render_list(Format.wide, ROWS, COLUMNS, WIDE, streams) == "NAME   N\na      1\nb      2.5\n"
    assert render_list(Format.table, [], COLUMNS, WIDE, streams) == ""
    assert render_list(Format.name, ROWS, COLUMNS, WIDE, streams) == "a\nb\n"
    assert render_object(Format.name, ROWS[0], lambda r, w: "") == "a\n"
    assert render_object(Format.wide, ROWS[0], lambda r, w: f"{r['name']} {w}\n") == "a True\n"


def quiet() -> None:
    """A command that has said everything and ends with exit 4."""
    print("result")
    raise QuietExit(ExitCode.UNREACHABLE)


def test_quiet_exit_gives_its_code_and_no_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(main.COMMANDS, "quiet", (__name__, "quiet"))
    err = io.StringIO()
    assert main.run(["quiet"], Streams(stdout=io.StringIO(), stderr=err)) == ExitCode.UNREACHABLE
    assert capsys.readouterr().out == "result\n"
    assert err.getvalue() == ""
