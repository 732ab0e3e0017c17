"""``gridctl route test`` and ``route probe`` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli_env
from tests.fleet.endpoint import FakeEndpoint

M8 = "llama-3.1-8b-instruct"


def test_route_test_table(cli) -> None:
    r = cli("route", "test", "--from", "us-east", "--model", M8)
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == f"us-east -> {M8} (SLO 500 ms): 8 eligible"
    header = next(line for line in lines if line.startswith("RANK"))
    assert header.split()[:3] == ["RANK", "SITE", "KIND"]
    assert any(
        line.startswith("fra-pop-01") and "jurisdiction DE not allowed for us-east data" in line
        for line in lines
    )


def test_route_test_json_eu_region_gets_eu_sites_only(cli) -> None:
    r = cli("route", "test", "--from", "eu-fr", "--model", M8, "-o", "json")
    assert r.rc == 0, r
    data = json.loads(r.out)
    assert data["request"] == {"region": "eu-fr", "model": M8, "jurisdiction": None, "slo_ms": 500.0}
    assert {x["jurisdiction"] for x in data["ranked"]} <= {"DE", "FR"}
    assert [x["rank"] for x in data["ranked"]] == list(range(1, len(data["ranked"]) + 1))
    first = data["ranked"][0]
    assert set(first["breakdown"]) == {
        "latency",
        "cost",
        "load",
        "rtt_ms",
        "cost_per_gpu_hour",
        "utilization",
    }
    assert all(e["reasons"] for e in data["excluded"])


def test_no_eligible_site_exits_4_with_every_reason(cli) -> None:
    r = cli("route", "test", "--from", "eu-de", "--model", M8, "--slo-ms", "0.5")
    assert r.rc == 4
    assert "0 eligible" in r.out and "error: no eligible site" in r.err
    assert r.out.count("over the 0.5 ms SLO") == 15


def test_unknown_region_and_jurisdiction(cli) -> None:
    r = cli("route", "test", "--from", "us-eats", "--model", M8)
    assert r.rc == 1 and "did you mean 'us-east'" in r.err
    r = cli("route", "test", "--from", "us-east", "--model", M8, "--jurisdiction", "XX")
    assert r.rc == 2 and "not an ISO 3166-1" in r.err


def test_failed_health_excludes_a_site(cli, inv: Path) -> None:
    state = inv / ".state"
    state.mkdir()
    (state / "health.json").write_text(
        json.dumps(
            {
                "sites": {
                    "jc-edge-01": {"status": "failed", "reasons": ["x"], "checked_at": "2026-11-27T00:00:00Z"}
                }
            }
        )
    )
    data = json.loads(cli("route", "test", "--from", "us-east", "--model", M8, "-o", "json").out)
    assert "jc-edge-01" not in [x["site"] for x in data["ranked"]]
    assert {"site": "jc-edge-01", "reasons": ["last health failed"]} in data["excluded"]


def test_route_probe_saves_medians_for_the_latency_model(cli, inv: Path) -> None:
    ep = FakeEndpoint()
    try:
        site = inv / "sites" / "phl-co-12.yaml"
        site.write_text(site.read_text().replace("https://phl-co-12.infer.example.net", ep.url))
        r = cli("route", "probe", "--from", "us-phl", "phl-co-12", "--samples", "3", "-o", "json")
        assert r.rc == 0, r
        row = json.loads(r.out)[0]
        assert row["site"] == "phl-co-12" and len(row["samples"]) == 3 and row["rtt_ms"] > 0
        assert ("/health", None) in ep.requests
        saved = json.loads((inv / ".state" / "probes.json").read_text())
        assert saved["us-phl"]["phl-co-12"]["rtt_ms"] == row["rtt_ms"]
        data = json.loads(cli("route", "test", "--from", "us-phl", "--model", M8, "-o", "json").out)
        entry = next(x for x in data["ranked"] if x["site"] == "phl-co-12")
        assert entry["latency_source"] == "probe" and entry["rtt_ms"] == row["rtt_ms"]
        r = cli("route", "probe", "--from", "us-phl", "phl-pop-01", "--timeout", "1")
        assert r.rc == 4 and "no answer from phl-pop-01" in r.err
    finally:
        ep.close()


def test_route_probe_and_live_strip_the_api_key_and_refuse_a_control_character(cli, inv: Path) -> None:
    ep = FakeEndpoint(api_key="s3cret")
    try:
        site = inv / "sites" / "phl-co-12.yaml"
        site.write_text(site.read_text().replace("https://phl-co-12.infer.example.net", ep.url))
        probe = ("route", "probe", "--from", "us-phl", "phl-co-12", "--samples", "2", "-o", "json")
        r = cli(*probe, env=cli_env(GRID_KEY_PHL_CO_12="s3cret\n"))
        assert r.rc == 0, r
        assert ep.requests and all(auth == "Bearer s3cret" for _, auth in ep.requests)
        ep.requests.clear()
        r = cli(*probe, env=cli_env(GRID_KEY_PHL_CO_12="s3\rcret"))
        assert r.rc == 4, r
        row = json.loads(r.out)[0]
        why = "API key in $GRID_KEY_PHL_CO_12 contains a control character; set it to the key alone"
        assert row["error"] == why
        assert ep.requests == [] and "cret" not in r.out + r.err
    finally:
        ep.close()
    # --live: whichever site ranks first, its key is refused before anything is sent
    bad = {f"GRID_KEY_{s.stem.upper().replace('-', '_')}": "s3\ncret" for s in (inv / "sites").glob("*.yaml")}
    r = cli("route", "test", "--from", "us-phl", "--model", M8, "--live", "-o", "json", env=cli_env(**bad))
    assert r.rc == 1, r
    live = json.loads(r.out)["live"]
    assert live["ok"] is False and live["error"].startswith("API key in $GRID_KEY_")
    assert live["error"].endswith("contains a control character; set it to the key alone")
    assert "cret" not in r.out + r.err
