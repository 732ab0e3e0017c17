"""The region commands through the real entry point: grid.yaml edited in place, comments kept."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def test_region_ls_and_show(cli) -> None:
    r = cli("region", "ls")
    assert r.rc == 0 and r.err == ""
    lines = r.out.splitlines()
    assert lines[0].split() == ["NAME", "JURIS", "ALLOWED", "SITES", "MEASURED"]
    assert lines[1].split() == ["us-east", "US", "US", "4", "5"]
    data = json.loads(cli("region", "ls", "-o", "json").out)
    assert [x["name"] for x in data][:2] == ["us-east", "us-phl"]
    assert data[0]["sites"] == ["cloud-use1", "jc-edge-01", "nwk-co-03", "nyc-pop-01"]
    r = cli("region", "show", "eu-de")
    assert r.rc == 0 and "Allowed:       EU (27 countries)" in r.out
    assert "fra-pop-01               1.1 ms" in r.out
    r = cli("region", "show", "us-eats")
    assert r.rc == 1 and "no region named 'us-eats'" in r.err and "did you mean 'us-east'?" in r.err


def test_region_add_norway_is_text_and_idempotent(cli, inv: Path) -> None:
    args = ["region", "add", "no-osl", "--lat", "59.91", "--lon", "10.75", "--jurisdiction", "NO"]
    r = cli(*args, "--allow", "EEA", "--latency", "fra-pop-01=20")
    assert r.rc == 0 and r.out == "region/no-osl created\n", r
    text = (inv / "grid.yaml").read_text()
    assert 'jurisdiction: "NO"' in text and "# Client regions: where requests come from." in text
    region = next(x for x in yaml.safe_load(text)["regions"] if x["name"] == "no-osl")
    assert region == {
        "name": "no-osl",
        "location": {"lat": 59.91, "lon": 10.75},
        "jurisdiction": "NO",
        "allowed_jurisdictions": ["EEA"],
        "latency_ms": {"fra-pop-01": 20.0},
    }
    assert cli(*args).out == "region/no-osl unchanged\n"
    r = cli(*args[:-1], "SE")
    assert r.rc == 1 and "jurisdiction: 'NO' -> 'SE'" in r.err
    r = cli(*args[:2], "bad name", *args[3:])
    assert r.rc == 2 and "invalid region name" in r.err
    r = cli(*args, "--latency", "fra-pop-01=nan")
    assert r.rc == 2 and "SITE=MILLISECONDS" in r.err


def test_region_set_every_key_typed_by_the_schema(cli, inv: Path) -> None:
    r = cli(
        "region",
        "set",
        "eu-fr",
        "location.lat=48.9",
        "jurisdiction=FR",
        "allowed_jurisdictions=FR,DE",
        "latency_ms.par-pop-01=0.8",
    )
    assert r.rc == 0, r
    text = (inv / "grid.yaml").read_text()
    assert "- name: eu-fr                       # France, Paris hub" in text  # comment kept
    region = json.loads(cli("region", "show", "eu-fr", "-o", "json").out)
    assert region["location"]["lat"] == 48.9 and region["allowed_jurisdictions"] == ["FR", "DE"]
    assert region["latency_ms"] == {"par-pop-01": 0.8}
    r = cli("region", "set", "eu-fr", "latency_ms.par-pop-01-")
    assert r.rc == 0 and json.loads(cli("region", "show", "eu-fr", "-o", "json").out)["latency_ms"] == {}
    r = cli("region", "set", "eu-fr", "latency_ms.par-pop-01=soon")
    assert r.rc == 2 and "latency_ms.par-pop-01: must be milliseconds (got 'soon')" in r.err
    r = cli("region", "set", "eu-fr", "latency_ms.nowhere-01=3")
    assert r.rc == 5 and "unknown site 'nowhere-01'" in r.err and "nothing was written" in r.err
    r = cli("region", "set", "eu-fr", "jurisdction=FR")
    assert r.rc == 2 and "did you mean 'regions.eu-fr.jurisdiction'?" in r.err
    r = cli("region", "set", "eu-fr", "jurisdiction-")
    assert r.rc == 2 and "cannot be removed" in r.err


def test_region_rm_refused_while_sites_use_it_then_removed_with_its_probes(cli, inv: Path) -> None:
    before = (inv / "grid.yaml").read_text()
    r = cli("region", "rm", "eu-fr", "--yes")
    assert r.rc == 1 and "still has 3 sites: lyo-co-05, par-edge-02, par-pop-01" in r.err
    assert (inv / "grid.yaml").read_text() == before
    state = inv / ".state"
    state.mkdir()
    probes = {"eu-de-sovereign": {"fra-pop-01": {"rtt_ms": 9.0}}, "eu-de": {"fra-pop-01": {"rtt_ms": 1.0}}}
    (state / "probes.json").write_text(json.dumps(probes))
    r = cli("region", "rm", "eu-de-sovereign")
    assert r.rc == 2 and "refusing without --yes" in r.err
    r = cli("region", "rm", "eu-de-sovereign", "--dry-run")
    assert r.rc == 0 and "-  - name: eu-de-sovereign" in r.out and "would remove .state/probes.json" in r.out
    assert (inv / "grid.yaml").read_text() == before
    r = cli("region", "rm", "eu-de-sovereign", "--yes", "-o", "json")
    assert r.rc == 0, r
    out = json.loads(r.out)
    assert out["action"] == "deleted" and out["removed"] == [".state/probes.json: eu-de-sovereign"]
    assert json.loads((state / "probes.json").read_text()) == {"eu-de": {"fra-pop-01": {"rtt_ms": 1.0}}}
    assert "name: eu-de-sovereign" not in (inv / "grid.yaml").read_text()
