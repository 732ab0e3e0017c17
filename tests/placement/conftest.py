"""Placement tests: ``--update-golden`` (declared in tests/conftest.py) rewrites the golden files."""

from __future__ import annotations

import pytest


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))
