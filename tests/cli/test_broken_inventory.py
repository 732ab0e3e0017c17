"""Working through a broken file: reads show the valid part and exit 5; writes beside it go through."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

PHL = "sites/phl-co-12.yaml"
PROBLEM = f"{PHL}:17: models[0].capacity: must be a positive integer (got 'lots')"


@pytest.fixture
def broken(inv: Path) -> Path:
    path = inv / PHL
    path.write_text(re.sub(r"capacity: \d+", "capacity: lots", path.read_text(), count=1))
    return inv


def test_site_ls_lists_the_valid_sites_and_exits_5(broken: Path) -> None:
    r = run_cli("site", "ls", inventory=broken)
    assert r.rc == 5, r
    assert "ber-edge-01" in r.out and "phl-pop-01" in r.out and "phl-co-12" not in r.out
    assert r.out.splitlines()[0].split()[:3] == ["NAME", "KIND", "REGION"]
    assert PROBLEM in r.err and "error: inventory" in r.err and f"leaves out {PHL}" in r.err
    j = run_cli("site", "ls", "-o", "json", inventory=broken)
    assert j.rc == 5 and PROBLEM in j.err
    names = [s["name"] for s in json.loads(j.out)]
    assert len(names) == 14 and "phl-co-12" not in names


def test_site_show_node_ls_inventory_show_region_ls(broken: Path) -> None:
    show = run_cli("site", "show", "ber-edge-01", inventory=broken)
    assert show.rc == 5 and show.out.startswith("Name:          ber-edge-01\n") and PROBLEM in show.err
    missing = run_cli("site", "show", "phl-co-12", inventory=broken)
    assert missing.rc == 5 and missing.out == ""
    assert (
        PROBLEM in missing.err
        and f"no site 'phl-co-12' among the valid files; it may be in {PHL}" in missing.err
    )
    nodes = run_cli("node", "ls", "-o", "name", inventory=broken)
    assert nodes.rc == 5 and "ber-edge-01/ber-edge-01-gpu-01" in nodes.out.splitlines()
    assert "phl-co-12" not in nodes.out and PROBLEM in nodes.err
    grid = run_cli("inventory", "show", "-o", "json", inventory=broken)
    assert grid.rc == 5 and PROBLEM in grid.err
    assert "phl-co-12" not in [s["name"] for s in json.loads(grid.out)["sites"]]
    regions = run_cli("region", "ls", "-o", "name", inventory=broken)
    assert regions.rc == 5 and "us-phl" in regions.out.splitlines() and PROBLEM in regions.err


def test_drain_beside_a_broken_file_goes_through_with_a_warning(broken: Path) -> None:
    r = run_cli("site", "drain", "ber-edge-01", inventory=broken)
    assert r.rc == 0, r
    assert r.out == "site/ber-edge-01 drained\n"
    assert "warning: inventory" in r.err and "1 problem in files this change does not touch" in r.err
    assert PROBLEM in r.err
    assert "drain: true" in (broken / "sites/ber-edge-01.yaml").read_text()
    j = run_cli("site", "undrain", "ber-edge-01", "-o", "json", inventory=broken)
    assert j.rc == 0 and json.loads(j.out)["existing_problems"] == [PROBLEM]
    assert "drain: false" in (broken / "sites/ber-edge-01.yaml").read_text()


def test_writes_that_touch_the_broken_file_or_add_a_problem_are_refused(broken: Path) -> None:
    before = {p: p.read_text() for p in (broken / "sites").iterdir()}
    own = run_cli("site", "set", "phl-co-12", "drain=true", inventory=broken)
    assert own.rc == 5 and PROBLEM in own.err and f"it may be in {PHL}" in own.err
    worse = run_cli("site", "set", "ber-edge-01", "region=nowhere", inventory=broken)
    assert worse.rc == 5 and "change refused" in worse.err
    assert "sites/ber-edge-01.yaml:4: region: unknown region 'nowhere'" in worse.err
    assert PROBLEM not in worse.err  # only what the change would add
    assert {p: p.read_text() for p in (broken / "sites").iterdir()} == before


def test_routing_and_render_still_refuse_a_broken_inventory(broken: Path, tmp_path: Path) -> None:
    render = run_cli("route", "render", "--out", str(tmp_path / "t.json"), inventory=broken)
    assert render.rc == 5 and PROBLEM in render.err and not (tmp_path / "t.json").exists()
    test = run_cli("route", "test", "--from", "us-east", "--model", "llama-3.1-8b-instruct", inventory=broken)
    assert test.rc == 5 and PROBLEM in test.err
    validate = run_cli("inventory", "validate", inventory=broken)
    assert validate.rc == 5 and PROBLEM in validate.err


def test_unparseable_grid_yaml_shows_nothing(inv: Path) -> None:
    (inv / "grid.yaml").write_text("name: [unclosed\n")
    r = run_cli("site", "ls", inventory=inv)
    assert r.rc == 5 and r.out == "" and "grid.yaml:" in r.err


def test_provisioning_still_refuses_a_broken_inventory(broken: Path) -> None:
    r = run_cli("node", "provision", "ber-edge-01", "--check", inventory=broken)
    assert r.rc == 5 and PROBLEM in r.err
