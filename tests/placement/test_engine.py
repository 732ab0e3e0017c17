"""The placement engine: table-driven on the example inventory, and properties on random grids."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridctl.inventory.jurisdictions import EU_MEMBERS, expand_jurisdictions
from gridctl.inventory.load import load_inventory
from gridctl.inventory.model import Grid, Inventory, Location, ModelServing, Region, Site, Weights
from gridctl.placement.engine import Live, Planner, Request
from tests.conftest import EXAMPLE

M8 = "llama-3.1-8b-instruct"


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(load_inventory(EXAMPLE))


def test_eu_region_never_gets_a_us_site(planner: Planner) -> None:
    for region in ("eu-de", "eu-fr"):
        for model in (M8, "llama-3.1-70b-instruct", "parakeet-tdt-0.6b-v2"):
            d = planner.explain(Request(region, model))
            assert d.ranked, (region, model)
            assert all(planner.sites[c.site].jurisdiction in EU_MEMBERS for c in d.ranked)
            us = [e for e in d.excluded if planner.sites[e.site].jurisdiction == "US"]
            assert us and all(any("not allowed for" in r for r in e.reasons) for e in us)


def test_strict_region_keeps_data_in_its_country(planner: Planner) -> None:
    d = planner.explain(Request("eu-de-sovereign", M8))
    assert {c.site for c in d.ranked} == {"ber-edge-01", "muc-co-02", "fra-pop-01"}


def test_request_jurisdiction_only_narrows(planner: Planner) -> None:
    fr = planner.rank(Request("eu-de", M8, jurisdiction="FR"))
    assert fr and all(planner.sites[s].jurisdiction == "FR" for s in fr)
    # asking for the US from an EU region cannot widen the region's rules
    assert planner.rank(Request("eu-de", M8, jurisdiction="US")) == []


def test_tight_slo_leaves_only_nearby_sites(planner: Planner) -> None:
    d = planner.explain(Request("us-east", M8, slo_ms=2.0))
    assert [c.site for c in d.ranked] == ["jc-edge-01", "nwk-co-03", "nyc-pop-01"]
    far = next(e for e in d.excluded if e.site == "chi-pop-01")
    assert any("over the 2 ms SLO" in r for r in far.reasons)


def test_no_eligible_site_gives_every_reason(planner: Planner) -> None:
    d = planner.explain(Request("us-east", M8, slo_ms=0.5))
    assert d.ranked == ()
    assert len(d.excluded) == len(planner.sites)
    assert all(e.reasons for e in d.excluded)


def test_drained_failed_and_full_sites_are_excluded_with_reasons(planner: Planner) -> None:
    live = Live(
        health={"jc-edge-01": "failed", "nwk-co-03": "unreachable", "phl-co-12": "degraded"},
        in_flight={"nyc-pop-01": 256},
    )
    d = planner.explain(Request("us-east", M8), live)
    reasons = {e.site: e.reasons for e in d.excluded}
    assert reasons["jc-edge-01"] == ("last health failed",)
    assert reasons["nwk-co-03"] == ("last health unreachable",)
    assert "full (256/256 in flight)" in reasons["nyc-pop-01"]
    assert reasons["phl-edge-04"] == ("drained",)
    assert "phl-co-12" in [c.site for c in d.ranked]  # degraded still serves
    assert planner.rank(Request("us-east", M8), live) == [c.site for c in d.ranked]


def test_load_moves_traffic_away(planner: Planner) -> None:
    idle = planner.rank(Request("us-east", M8))
    capacity = next(m.capacity for m in planner.sites[idle[0]].models if m.name == M8)
    busy = planner.rank(Request("us-east", M8), Live(in_flight={idle[0]: capacity - 1}))
    assert busy[0] != idle[0] and idle[0] in busy


def test_breakdown_adds_up(planner: Planner) -> None:
    for c in planner.explain(Request("us-phl", M8), Live(in_flight={"phl-co-12": 10})).ranked:
        b = c.breakdown
        assert c.score == pytest.approx(1 - (b["latency"] + b["cost"] + b["load"]), abs=1e-5)


def test_unknown_region(planner: Planner) -> None:
    from gridctl.placement.engine import UnknownRegion

    with pytest.raises(UnknownRegion):
        planner.rank(Request("mars", M8))


# ---- properties on random grids ---------------------------------------------------------

CODES = ["US", "DE", "FR", "NL", "GB", "CA"]
KINDS = ["regional-pop", "central-office", "edge", "cloud"]
MODELS = ["m1", "m2"]


@st.composite
def grids(draw):
    n = draw(st.integers(1, 12))
    sites = []
    for i in range(n):
        models = draw(st.lists(st.sampled_from(MODELS), min_size=0, max_size=2, unique=True))
        sites.append(
            Site(
                name=f"s{i:02d}",
                kind=draw(st.sampled_from(KINDS)),
                region="r0",
                jurisdiction=draw(st.sampled_from(CODES)),
                location=Location(draw(st.floats(35, 60)), draw(st.floats(-100, 20))),
                endpoint=f"http://127.0.0.1:{9000 + i}",
                cost_per_gpu_hour=draw(st.floats(0, 5)),
                drain=draw(st.booleans()),
                models=tuple(ModelServing(m, draw(st.integers(1, 50))) for m in models),
            )
        )
    allowed = draw(st.lists(st.sampled_from([*CODES, "EU"]), min_size=1, max_size=3, unique=True))
    region = Region("r0", Location(48, 0), "FR", tuple(allowed), expand_jurisdictions(allowed))
    weights = Weights(draw(st.floats(0, 1)), draw(st.floats(0, 1)), draw(st.floats(0.01, 1)))
    grid = Grid("g", slo_ms=draw(st.floats(1, 200)), weights=weights, regions=(region,))
    health = {
        s.name: draw(st.sampled_from(["ok", "degraded", "failed", "unreachable", "unknown"])) for s in sites
    }
    busy = {s.name: draw(st.integers(0, 60)) for s in sites}
    return Inventory(Path("."), grid, tuple(sites)), Live(health=health, in_flight=busy)


prop = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@prop
@given(grids(), st.sampled_from(MODELS), st.one_of(st.none(), st.floats(0.5, 300)))
def test_never_drained_failed_or_non_sovereign(g, model, slo) -> None:
    inv, live = g
    p = Planner(inv)
    region = inv.grid.regions[0]
    chosen = p.rank(Request("r0", model, slo_ms=slo), live)
    d = p.explain(Request("r0", model, slo_ms=slo), live)
    assert chosen == [c.site for c in d.ranked]
    assert sorted(chosen + [e.site for e in d.excluded]) == sorted(s.name for s in inv.sites)
    for name in chosen:
        site = p.sites[name]
        assert not site.drain
        assert live.health[name] not in ("failed", "unreachable")
        assert site.jurisdiction in region.allowed
        assert site.serves(model)
        assert live.in_flight[name] < next(m.capacity for m in site.models if m.name == model)


@prop
@given(grids(), st.sampled_from(MODELS), st.randoms(use_true_random=False))
def test_inventory_order_never_changes_the_result(g, model, rnd) -> None:
    inv, live = g
    shuffled = list(inv.sites)
    rnd.shuffle(shuffled)
    other = dataclasses.replace(inv, sites=tuple(shuffled))
    request = Request("r0", model)
    assert Planner(inv).rank(request, live) == Planner(other).rank(request, live)
    assert Planner(inv).explain(request, live) == Planner(other).explain(request, live)


@prop
@given(grids(), st.sampled_from(MODELS), st.floats(0.5, 300), st.floats(0.01, 1.0))
def test_tightening_the_slo_never_adds_a_candidate(g, model, slo, factor) -> None:
    inv, live = g
    p = Planner(inv)
    loose = set(p.rank(Request("r0", model, slo_ms=slo), live))
    tight = set(p.rank(Request("r0", model, slo_ms=slo * factor), live))
    assert tight <= loose


@prop
@given(grids(), st.sampled_from(MODELS), st.sampled_from([*CODES, "EU"]))
def test_a_request_jurisdiction_never_widens(g, model, code) -> None:
    inv, live = g
    p = Planner(inv)
    base = set(p.rank(Request("r0", model), live))
    narrowed = set(p.rank(Request("r0", model, jurisdiction=code), live))
    assert narrowed <= base
