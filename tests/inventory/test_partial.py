"""A broken inventory: the problems per file, the valid part, per-file fallback, writes beside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gridctl.core.errors import InventoryError
from gridctl.inventory.edit import set_drain, set_site
from gridctl.inventory.load import load_keeping_last_good, load_partial
from gridctl.inventory.regions import set_region

PHL = "sites/phl-co-12.yaml"


def _break_capacity(inv: Path) -> str:
    """``capacity: lots`` in phl-co-12; returns the good text."""
    path = inv / PHL
    good = path.read_text()
    path.write_text(re.sub(r"capacity: \d+", "capacity: lots", good, count=1))
    return good


def test_valid_inventory_has_no_problems_and_every_file_text(inv: Path) -> None:
    loaded = load_partial(inv)
    assert loaded.problems == () and loaded.broken == frozenset()
    assert loaded.inventory is not None and loaded.inventory.site("phl-co-12") is not None
    assert loaded.texts[PHL] == (inv / PHL).read_text() and "grid.yaml" in loaded.texts


def test_a_broken_file_is_left_out_and_the_rest_is_valid(inv: Path) -> None:
    _break_capacity(inv)
    loaded = load_partial(inv)
    assert loaded.broken == frozenset({PHL})
    (problem,) = loaded.problems
    assert problem.file == PHL and "'lots'" in problem.message
    assert loaded.inventory is not None
    names = [s.name for s in loaded.inventory.sites]
    assert "phl-co-12" not in names and "ber-edge-01" in names and len(names) == 14
    assert [n.site for n in loaded.inventory.nodes()].count("phl-co-12") == 0


def test_a_duplicate_belongs_to_both_files_it_names(inv: Path) -> None:
    text = (inv / "sites/ber-edge-01.yaml").read_text()
    (inv / "sites/zz-copy.yaml").write_text(text.replace("name: ber-edge-01\n", "name: zz-copy\n", 1))
    loaded = load_partial(inv)
    assert {"sites/ber-edge-01.yaml", "sites/zz-copy.yaml"} <= loaded.broken
    assert all(p.file == "sites/zz-copy.yaml" for p in loaded.problems)  # reported where found
    assert any(p.also == ("sites/ber-edge-01.yaml",) for p in loaded.problems)
    assert loaded.inventory is not None
    assert {"ber-edge-01", "zz-copy"}.isdisjoint(s.name for s in loaded.inventory.sites)


def test_grid_yaml_unparseable_leaves_no_inventory(inv: Path) -> None:
    (inv / "grid.yaml").write_text("name: [unclosed\n")
    loaded = load_partial(inv)
    assert loaded.inventory is None and "grid.yaml" in loaded.broken


def test_keeping_last_good_reads_a_broken_file_as_its_last_good_version(inv: Path) -> None:
    last_good = load_partial(inv).texts
    good = _break_capacity(inv)
    ber = inv / "sites/ber-edge-01.yaml"
    ber.write_text(ber.read_text().replace("drain: false", "drain: true"))
    (inv / "sites/zz-new.yaml").write_text("name: zz-new\nkind: edgy\n")
    loaded, stale = load_keeping_last_good(inv, last_good)
    assert loaded.problems == ()
    assert sorted(stale) == [PHL, "sites/zz-new.yaml"]
    assert any("'lots'" in str(p) for p in stale[PHL])
    assert loaded.texts[PHL] == good and "sites/zz-new.yaml" not in loaded.texts
    assert loaded.inventory is not None
    site = loaded.inventory.site("ber-edge-01")
    assert site is not None and site.drain  # the healthy file's change is taken
    phl = loaded.inventory.site("phl-co-12")
    assert phl is not None and phl.models[0].capacity == 96


def test_keeping_last_good_refuses_when_the_old_version_no_longer_fits(inv: Path) -> None:
    last_good = load_partial(inv).texts
    _break_capacity(inv)
    phl = inv / PHL  # broken, and its node moved: the new ber-edge-01 takes the old address
    phl.write_text(phl.read_text().replace("gpu-01.phl-co-12", "gpu-09.phl-co-12"))
    assert load_partial(inv).broken == frozenset({PHL})
    ber = inv / "sites/ber-edge-01.yaml"
    ber.write_text(ber.read_text().replace("gpu-01.ber-edge-01", "gpu-01.phl-co-12"))
    with pytest.raises(InventoryError) as caught:
        load_keeping_last_good(inv, last_good)
    assert any("duplicate address" in p.message for p in caught.value.problems)


def test_write_beside_a_broken_file_goes_through_with_the_existing_problems(inv: Path) -> None:
    _break_capacity(inv)
    outcome = set_drain(inv, "ber-edge-01", True)
    assert outcome.action == "drained"
    assert len(outcome.existing) == 1 and outcome.existing[0].startswith(f"{PHL}:")
    assert "drain: true" in (inv / "sites/ber-edge-01.yaml").read_text()


def test_write_that_adds_a_problem_is_refused_naming_only_the_new_one(inv: Path) -> None:
    _break_capacity(inv)
    before = (inv / "sites/ber-edge-01.yaml").read_text()
    with pytest.raises(InventoryError) as caught:
        set_site(inv, "ber-edge-01", ["region=nowhere"])
    assert [p.file for p in caught.value.problems] == ["sites/ber-edge-01.yaml"]
    assert (inv / "sites/ber-edge-01.yaml").read_text() == before


def test_write_to_a_broken_file_is_refused(inv: Path) -> None:
    good = load_partial(inv).texts["grid.yaml"]
    # an unknown site in latency_ms: grid.yaml is broken, yet still builds
    broken = good.replace("latency_ms:", "latency_ms:\n      nosuch-site: 5", 1)
    assert broken != good
    (inv / "grid.yaml").write_text(broken)
    outcome = set_drain(inv, "ber-edge-01", True)  # a site file: goes through...
    assert outcome.action == "drained" and any(p.startswith("grid.yaml:") for p in outcome.existing)

    with pytest.raises(InventoryError) as caught:  # ...but grid.yaml itself is not touched
        set_region(inv, "us-east", ["location.lat=40.8"])
    assert caught.value.hint is not None and "touches grid.yaml" in caught.value.hint
    assert (inv / "grid.yaml").read_text() == broken
