"""Scenario files: the example's is valid; every problem is reported with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridctl.core.inventory.model import Inventory
from gridctl.sim.profiles import PROFILES, Bursts, ScenarioError, build_profile, load_scenario, scenario_path
from tests.sim.conftest import EXAMPLE


def load(inv: Inventory, path: Path):  # type: ignore[no-untyped-def]
    return load_scenario(
        path, inv.root, {r.name: r for r in inv.grid.regions}, {s.name: s for s in inv.sites}
    )


def test_the_example_voice_burst_scenario(example: Inventory) -> None:
    path = scenario_path(EXAMPLE, "voice-burst")
    assert path == EXAMPLE / "scenarios" / "voice-burst.yaml"
    p = load(example, path)
    assert p.name == "voice-burst" and p.slo_ms == 500.0 and p.central == "cloud-use1"
    assert p.rates == {"us-east": 150.0, "us-phl": 60.0, "us-central": 90.0}
    assert p.bursts == Bursts(every_s=60.0, length_s=15.0, factor=4.0, first_s=20.0)
    assert p.sites == "kind:regional-pop,kind:cloud"
    assert p.output_tokens.hi == 48 and p.source.endswith("scenarios/voice-burst.yaml")


def test_unknown_names_default_to_the_built_in_profile(tmp_path: Path) -> None:
    assert scenario_path(tmp_path, "chat") is None
    assert scenario_path(tmp_path, "x/y.yaml") == Path("x/y.yaml")


def test_a_file_named_after_a_built_in_profile_starts_from_it() -> None:
    p, issues = build_profile({"slo_ms": 800}, "chat")
    assert not issues and p is not None
    assert p.slo_ms == 800.0 and p.output_tokens == PROFILES["chat"].output_tokens and p.name == "chat"
    p, issues = build_profile({}, "mine")
    assert p is None and issues[0][0] == ("base",)


def test_every_problem_is_located(example: Inventory, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "base: voice-burst\n"
        "slo_ms: fast\n"
        "regoins: {us-east: 10}\n"
        "regions:\n"
        "  us-esat: 10\n"
        "  us-phl: -1\n"
        "central: nowhere-01\n"
        "output_tokens: {median: 20, min: 50, max: 10}\n"
    )
    with pytest.raises(ScenarioError) as err:
        load(example, path)
    lines = [str(p) for p in err.value.problems]
    assert f"{path}:2: slo_ms: must be milliseconds (got 'fast')" in lines
    assert any(s.startswith(f"{path}:3: regoins: unknown key; did you mean 'regions'?") for s in lines)
    assert any(
        s.startswith(f"{path}:6: regions.us-phl: must be requests per second between 0") for s in lines
    )
    assert any(s.startswith(f"{path}:8: output_tokens.min: must not exceed max") for s in lines)
    assert err.value.exit_code == 5 and "scenario" in err.value.message


def test_references_to_the_inventory_are_checked(example: Inventory, tmp_path: Path) -> None:
    path = tmp_path / "refs.yaml"
    path.write_text("base: chat\nregions:\n  us-esat: 10\ncentral: nyc-pop-1\n")
    with pytest.raises(ScenarioError) as err:
        load(example, path)
    lines = [str(p) for p in err.value.problems]
    assert f"{path}:3: regions.us-esat: no client region named 'us-esat'; did you mean 'us-east'?" in lines
    assert f"{path}:4: central: no site named 'nyc-pop-1'; did you mean 'nyc-pop-01'?" in lines


def test_invalid_yaml_is_located(example: Inventory, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("base: chat\nregions: {us-east: 1\n")
    with pytest.raises(ScenarioError) as err:
        load(example, path)
    assert str(err.value.problems[0]).startswith(f"{path}:3: invalid YAML")


def test_the_same_hardware_scenario_adds_its_own_sites(example: Inventory) -> None:
    from gridctl.sim.compare import SimOptions, plan_run, run_plan

    path = scenario_path(EXAMPLE, "same-hardware")
    assert path == EXAMPLE / "scenarios" / "same-hardware.yaml"
    p = load(example, path)
    assert [s.name for s in p.add_sites] == ["sh-central", "sh-mnh-01", "sh-bkn-01", "sh-qns-01", "sh-nwk-01"]
    assert p.central == "sh-central" and p.rates == {"us-east": 40.0}
    grid, _ = run_plan(
        plan_run(example, {}, SimOptions(profile="same-hardware", sites="sh-*,!sh-central", duration_s=20))
    )
    central, _ = run_plan(plan_run(example, {}, SimOptions(profile="same-hardware", duration_s=20)))
    assert grid["scenario"]["deployed"] == ["sh-bkn-01", "sh-mnh-01", "sh-nwk-01", "sh-qns-01"]
    g = next(x for x in grid["policies"] if x["policy"] == "grid")
    c = next(x for x in central["policies"] if x["policy"] == "central")
    assert {s["gpus"] for s in g["sites"] if s["requests"]} == {"1x H100"}
    assert [(s["site"], s["gpus"]) for s in c["sites"] if s["requests"]] == [("sh-central", "4x H100")]
    assert g["completed"] > 0 and c["completed"] > 0
    assert example.site("sh-central") is None  # only the scenario's runs have them


def test_added_sites_are_checked_like_the_inventorys(example: Inventory, tmp_path: Path) -> None:
    path = tmp_path / "adds.yaml"
    path.write_text(
        "base: voice-burst\n"
        "add_sites:\n"
        "  - name: nyc-pop-01\n"
        "    kind: edge\n"
        "    region: us-east\n"
        "    jurisdiction: US\n"
        "    location: {lat: 40.7, lon: -74.0}\n"
        "    endpoint: https://x.example.net\n"
        "  - name: new-01\n"
        "    kind: edgy\n"
        "    region: us-east\n"
        "    jurisdiction: US\n"
        "    location: {lat: 40.7, lon: -74.0}\n"
        "    endpoint: https://y.example.net\n"
    )
    with pytest.raises(ScenarioError) as err:
        load(example, path)
    lines = [str(p) for p in err.value.problems]
    assert any(s.startswith(f"{path}:10: add_sites[1].kind: must be one of") for s in lines), lines
    path.write_text("\n".join(path.read_text().splitlines()[:8]) + "\n")  # the first site alone
    with pytest.raises(ScenarioError) as err:
        load(example, path)
    lines = [str(p) for p in err.value.problems]
    assert f"{path}:3: add_sites[0].name: site 'nyc-pop-01' is already in the inventory" in lines


def test_whether_clients_bound_their_answers_is_the_profiles() -> None:
    from gridctl.sim.profiles import PROFILES

    assert PROFILES["voice-burst"].clients_set_max_tokens is True
    assert not PROFILES["chat"].clients_set_max_tokens and not PROFILES["rag"].clients_set_max_tokens
    p, issues = build_profile({"base": "voice-burst", "clients_set_max_tokens": False}, "mine")
    assert issues == [] and p is not None and p.clients_set_max_tokens is False
    _, issues = build_profile({"base": "voice-burst", "clients_set_max_tokens": "sometimes"}, "mine")
    assert [path for path, _msg, _key in issues] == [("clients_set_max_tokens",)]
