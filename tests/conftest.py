"""Shared fixtures: a scratch copy of the example inventory, and the CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventory"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/placement/golden/ from the current renderer (review the diff before committing)",
    )


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def __repr__(self) -> str:
        return f"Result(rc={self.rc}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


def sigint_default() -> None:
    """A child's ``preexec_fn`` for Ctrl-C tests: SIGINT back to its default, so the child gets a
    KeyboardInterrupt even when the suite itself runs with SIGINT ignored (as a background job
    of a non-interactive shell, which a CI runner may be)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCTL_")}
    env.update({"NO_COLOR": "1", "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def run_cli(
    *args: str,
    inventory: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
) -> Result:
    """Run the real entry point (``python -m gridctl``) in a subprocess."""
    argv = [sys.executable, "-m", "gridctl"]
    if inventory is not None:
        argv += ["-i", str(inventory)]
    proc = subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        input=input,
        timeout=timeout,
        cwd=REPO,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    """A private copy of the example inventory."""
    dest = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(".gridctl.lock", ".state"))
    return dest


@pytest.fixture
def cli(inv: Path):
    """``cli("site", "ls")`` runs gridctl on the scratch inventory."""

    def _run(*args: str, **kw) -> Result:
        return run_cli(*args, inventory=kw.pop("inventory", inv), **kw)

    return _run
