"""The wheel ships the templates and the example inventory; templates are found in order."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gridctl.core.errors import NotFoundError
from gridctl.templating import builtin_templates_dir, resolve_templates_dir
from tests.conftest import REPO


def test_wheel_contains_templates_and_example_inventory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("gridctl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "gridctl/cli/main.py" in names
    for f in (REPO / "templates").rglob("*"):
        if f.is_file():
            assert f"gridctl/_templates/{f.relative_to(REPO / 'templates')}" in names
    assert "gridctl/_example_inventory/grid.yaml" in names
    assert "gridctl/_example_inventory/sites/phl-co-12.yaml" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gridctl = gridctl.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_templates_resolution_order(tmp_path: Path) -> None:
    inv = tmp_path / "inv"
    inv.mkdir()
    assert resolve_templates_dir(None, inv) == builtin_templates_dir()
    assert (builtin_templates_dir() / "routing").is_dir()
    (inv / "templates").mkdir()
    assert resolve_templates_dir(None, inv) == inv / "templates"
    own = tmp_path / "own"
    own.mkdir()
    assert resolve_templates_dir(str(own), inv) == own
    with pytest.raises(NotFoundError, match="templates directory .* not found"):
        resolve_templates_dir(str(tmp_path / "missing"), inv)
