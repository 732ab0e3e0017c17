"""The entry point: version, help, start-up imports, colour, errors and the init command."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from gridctl import __version__
from tests.conftest import EXAMPLE, REPO, cli_env, run_cli

HEAVY = ("paramiko", "httpx", "pynvml", "jinja2")


def test_version() -> None:
    r = run_cli("--version")
    assert r.rc == 0 and r.out == f"gridctl {__version__}\n"


def test_help_lists_command_groups() -> None:
    r = run_cli("--help")
    assert r.rc == 0
    for group in ("site", "node", "inventory", "init"):
        assert group in r.out
    assert run_cli().rc in (0, 2)  # no arguments: help, not a crash


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["site", "ls"],
        ["site", "ls", "-o", "json"],
        ["site", "show", "phl-co-12"],
        ["node", "ls", "-o", "wide"],
        ["inventory", "validate"],
        ["inventory", "show"],
    ],
)
def test_inventory_commands_do_not_import_heavy_libraries(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from gridctl.cli.main import run\n"
        f"rc = run({['-i', str(EXAMPLE), *argv]!r})\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stderr, proc.stderr


def test_a_command_loads_only_its_own_module() -> None:
    code = (
        "import sys\n"
        "from gridctl.cli.main import COMMANDS, run\n"
        f"rc = run({['-i', str(EXAMPLE), 'site', 'ls', '-o', 'json']!r})\n"
        "mods = sorted({m for m, _ in COMMANDS.values() if m in sys.modules})\n"
        "sys.stderr.write('LOADED=' + ','.join(mods) + '\\n')\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED=gridctl.cli.site\n" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ("exe", "error: No such command 'exe'. Did you mean 'exec'?\nhint: see `gridctl --help`\n"),
        (
            "sit",
            "error: No such command 'sit'. (Did you mean one of: 'sim', 'site'?)\n"
            "hint: see `gridctl --help`\n",
        ),
        ("xyzzy", "error: No such command 'xyzzy'.\nhint: see `gridctl --help`\n"),
    ],
)
def test_a_mistyped_command_gets_close_names_exit_2(typed: str, says: str) -> None:
    r = run_cli(typed)
    assert r.rc == 2, r
    assert r.err == says, r.err


def test_the_suggestion_loads_no_command_module() -> None:
    code = (
        "import sys\n"
        "from gridctl.cli.main import COMMANDS, run\n"
        "rc = run(['exe'])\n"
        "mods = sorted({m for m, _ in COMMANDS.values() if m in sys.modules})\n"
        "sys.stderr.write('LOADED=' + ','.join(mods) + '\\n')\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO
    )
    assert proc.returncode == 2, proc.stderr
    assert "Did you mean 'exec'?" in proc.stderr and "LOADED=\n" in proc.stderr, proc.stderr


def test_help_lists_every_command_in_order() -> None:
    from gridctl.cli.main import COMMANDS

    out = run_cli("--help").out
    where = [out.find(f"│ {name} ") for name in COMMANDS]
    assert all(i > 0 for i in where) and where == sorted(where), out


def _run_on_tty(*args: str, no_color: bool) -> str:
    master, slave = pty.openpty()
    env = cli_env()
    env.pop("NO_COLOR", None)
    env["TERM"] = "xterm"
    if no_color:
        env["NO_COLOR"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridctl", *args], stdout=slave, stderr=slave, env=env, cwd=REPO
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_without_no_color() -> None:
    coloured = _run_on_tty("-i", str(EXAMPLE), "site", "ls", "phl-*", no_color=False)
    assert "\x1b[33mdrained" in coloured
    plain = _run_on_tty("-i", str(EXAMPLE), "site", "ls", "phl-*", no_color=True)
    assert "drained" in plain and "\x1b[" not in plain


def test_errors_have_no_traceback_unless_debug(inv: Path) -> None:
    (inv / "grid.yaml").write_text("name: [unclosed\n")
    r = run_cli("site", "ls", inventory=inv)
    assert r.rc == 5 and "Traceback" not in r.err and r.err.startswith("grid.yaml:")
    r = run_cli("--debug", "site", "ls", inventory=inv)
    assert r.rc == 5 and "Traceback" in r.err and "error: inventory" in r.err


def test_global_options_are_taken_after_the_command_too(inv: Path) -> None:
    """-i, --inventory=, --templates and --debug anywhere before `--`, as kubectl's -n."""
    first = run_cli("-i", str(EXAMPLE), "site", "ls", "-o", "json")
    for argv in (
        ("site", "ls", "-i", str(EXAMPLE), "-o", "json"),
        ("site", "-i", str(EXAMPLE), "ls", "-o", "json"),
        ("site", "ls", "-o", "json", f"--inventory={EXAMPLE}"),
    ):
        r = run_cli(*argv)
        assert r.rc == 0 and json.loads(r.out) == json.loads(first.out), (argv, r)
    (inv / "grid.yaml").write_text("name: [unclosed\n")
    r = run_cli("site", "ls", "-i", str(inv), "--debug")
    assert r.rc == 5 and "Traceback" in r.err
    r = run_cli("site", "ls", "-i")  # no value: click's own usage error
    assert r.rc == 2 and "requires an argument" in r.err


def test_hoisting_stops_at_the_remote_command() -> None:
    from gridctl.cli.main import hoist_globals

    argv = ["exec", "all", "-i", "inv", "--", "grep", "-i", "x", "--debug"]
    assert hoist_globals(argv) == ["-i", "inv", "exec", "all", "--", "grep", "-i", "x", "--debug"]
    assert hoist_globals(["route", "test", "--slo-ms", "-inf"]) == ["route", "test", "--slo-ms", "-inf"]


def test_init_dry_run_lists_the_files_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "grid"
    r = run_cli("init", str(target), "--dry-run")
    assert r.rc == 0 and f"would write {target}/grid.yaml" in r.out and "nothing written" in r.err
    assert not target.exists()


def test_init_writes_a_valid_commented_starter(tmp_path: Path) -> None:
    target = tmp_path / "grid"
    r = run_cli("init", str(target))
    assert r.rc == 0 and r.out == f"created inventory {target}\n"
    assert "inventory validate" in r.err
    grid = (target / "grid.yaml").read_text()
    assert grid.count("#") >= 5 and "allowed_jurisdictions: [EU]" in grid
    assert (target / "known_hosts").exists()
    r = run_cli("inventory", "validate", inventory=target)
    assert r.rc == 0, r
    assert json.loads(run_cli("site", "ls", "-o", "json", inventory=target).out)[0]["name"] == "nyc-edge-01"
    r = run_cli("init", str(target))
    assert r.rc == 1 and "not empty" in r.err


def test_inventory_show_and_json(cli) -> None:
    r = cli("inventory", "show")
    assert r.rc == 0
    assert "Grid:      acme-grid" in r.out and "eu-de-sovereign" in r.out
    data = json.loads(cli("inventory", "show", "-o", "json").out)
    assert data["grid"]["name"] == "acme-grid" and len(data["sites"]) == 15
    eu = next(r for r in data["grid"]["regions"] if r["name"] == "eu-de")
    assert eu["allowed_jurisdictions"] == ["EU"] and "FR" in eu["allowed"] and "US" not in eu["allowed"]
    exported = json.loads(cli("inventory", "export", "--format", "json").out)
    assert exported == data
    assert data["grid"]["gpus"][0]["name"] == "B200"  # the example's own GPU row
    phl = next(s for s in data["sites"] if s["name"] == "phl-pop-01")
    assert {"name": "llama-3.1-70b-instruct", "capacity": 64, "tensor_parallel": 4, "gpu": None} in phl[
        "models"
    ]


def test_validate_json_reports_valid(cli) -> None:
    r = cli("inventory", "validate", "-o", "json")
    assert r.rc == 0 and json.loads(r.out) == {
        "valid": True,
        "problems": [],
        "warnings": [],
        "sites": 15,
        "nodes": 24,
        "regions": 6,
    }
