"""Shared by the simulator's tests: the example inventory, and the CLI in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gridctl.core.inventory.model import Inventory
from gridctl.inventory.load import load_inventory
from tests.conftest import EXAMPLE, REPO, Result, cli_env

M8 = "llama-3.1-8b-instruct"

# `gridctl sim` through the real entry point; registers the command when main.py does not (yet)
_BOOT = (
    "from gridctl.cli import main as m\n"
    "if not any(c.name == 'sim' for c in m.app.registered_commands):\n"
    "    from gridctl.cli.sim import sim\n"
    "    m.app.command('sim')(sim)\n"
    "m.main()\n"
)


def run_sim(*args: str, inventory: Path | None = EXAMPLE, env: dict[str, str] | None = None) -> Result:
    argv = [sys.executable, "-c", _BOOT]
    if inventory is not None:
        argv += ["-i", str(inventory)]
    proc = subprocess.run(
        [*argv, "sim", *args], capture_output=True, text=True, env=env or cli_env(), cwd=REPO, timeout=120
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def example() -> Inventory:
    return load_inventory(EXAMPLE)
