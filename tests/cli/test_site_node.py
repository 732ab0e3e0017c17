"""The site and node commands through the real entry point: output, streams, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

ADD = [
    "site",
    "add",
    "bos-edge-01",
    "--kind",
    "edge",
    "--region",
    "us-east",
    "--jurisdiction",
    "US",
    "--lat",
    "42.36",
    "--lon",
    "-71.06",
    "--endpoint",
    "https://bos-edge-01.example.net",
]


def test_site_ls_table_is_kubectl_style(cli) -> None:
    r = cli("site", "ls")
    assert r.rc == 0 and r.err == ""
    lines = r.out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "KIND",
        "REGION",
        "JURIS",
        "NODES",
        "GPUS",
        "MODELS",
        "STATE",
        "HEALTH",
    ]
    assert len(lines) == 16
    row = next(line for line in lines if line.startswith("phl-edge-04"))
    assert row.split() == ["phl-edge-04", "edge", "us-phl", "US", "1", "2", "2", "drained", "-"]
    assert "\x1b[" not in r.out  # no colour when not a terminal


def test_site_ls_wide_adds_columns(cli) -> None:
    r = cli("site", "ls", "-o", "wide", "phl-co-12")
    header = r.out.splitlines()[0].split()
    assert header[-7:] == ["$/GPU-H", "LAT", "LON", "ENDPOINT", "MODEL-NAMES", "LABELS", "CHECKED"]
    assert "https://phl-co-12.infer.example.net" in r.out and "1.35" in r.out


def test_site_ls_json_is_the_documented_shape(cli) -> None:
    r = cli("site", "ls", "-o", "json", "region:eu-fr")
    assert r.rc == 0 and r.err == ""
    data = json.loads(r.out)
    assert [s["name"] for s in data] == ["lyo-co-05", "par-edge-02", "par-pop-01"]
    assert set(data[0]) == {
        "name",
        "kind",
        "region",
        "jurisdiction",
        "location",
        "endpoint",
        "api_key_env",
        "cost_per_gpu_hour",
        "drain",
        "labels",
        "models",
        "nodes",
        "gpus",
        "file",
        "health",
        "health_path",
    }
    assert set(data[0]["nodes"][0]) == {"name", "site", "host", "port", "user", "key", "jump", "gpus"}


def test_yaml_and_name_outputs(cli) -> None:
    r = cli("site", "ls", "-o", "yaml", "kind:cloud")
    assert yaml.safe_load(r.out)[0]["name"] == "cloud-use1"
    r = cli("site", "ls", "-o", "name", "phl-*")
    assert r.out == "phl-co-12\nphl-edge-04\nphl-pop-01\n"
    r = cli("node", "ls", "-o", "name", "phl-co-12")
    assert r.out == "phl-co-12/phl-co-12-gpu-01\nphl-co-12/phl-co-12-gpu-02\n"


def test_empty_selection_says_so_on_stderr(cli) -> None:
    r = cli("site", "ls", "zzz-*")
    assert r.rc == 0 and r.out == "" and "No sites match" in r.err
    r = cli("site", "ls", "-o", "json", "zzz-*")
    assert r.rc == 0 and json.loads(r.out) == [] and r.err == ""


def test_model_filter(cli) -> None:
    r = cli("site", "ls", "-o", "name", "--model", "llama-3.1-70b-instruct", "region:eu-*")
    assert r.out.split() == ["fra-pop-01", "par-pop-01"]


def test_typo_in_target_is_an_error_with_a_suggestion(cli) -> None:
    r = cli("site", "ls", "phl-co-21")
    assert r.rc == 1 and r.out == ""
    assert "error: no site named 'phl-co-21'" in r.err and "hint: did you mean 'phl-co-12'?" in r.err


def test_site_show_table_and_json(cli) -> None:
    r = cli("site", "show", "phl-co-12")
    assert r.rc == 0
    assert "Kind:          central-office" in r.out and "phl-co-12-gpu-02" in r.out and ":2222" in r.out
    data = json.loads(cli("site", "show", "phl-co-12", "-o", "json").out)
    assert data["name"] == "phl-co-12" and data["nodes"][1]["port"] == 2222
    assert data["nodes"][0]["user"] == "gridops"  # the grid default filled in
    r = cli("site", "show", "nope")
    assert r.rc == 1 and "no site named 'nope'" in r.err


def test_site_add_then_same_is_unchanged_and_different_is_refused(cli, inv: Path) -> None:
    r = cli(*ADD, "--model", "llama-3.1-8b-instruct=24", "--label", "tier=edge")
    assert r.rc == 0 and r.out == "site/bos-edge-01 created\n", r
    text = (inv / "sites" / "bos-edge-01.yaml").read_text()
    r = cli(*ADD, "--model", "llama-3.1-8b-instruct=24", "--label", "tier=edge")
    assert r.rc == 0 and r.out == "site/bos-edge-01 unchanged\n"
    r = cli(*ADD)  # options left out are not compared
    assert r.rc == 0 and "unchanged" in r.out
    r = cli(*[a if a != "edge" else "central-office" for a in ADD], "--lat", "42.5")
    assert r.rc == 1
    assert "already exists with different values" in r.err
    assert "kind: 'edge' -> 'central-office'" in r.err and "location.lat: 42.36 -> 42.5" in r.err
    assert (inv / "sites" / "bos-edge-01.yaml").read_text() == text


def test_site_add_rejects_unsafe_names_before_touching_disk(cli, inv: Path) -> None:
    for bad in ["bad name", "a;rm -rf", "../escape", "$HOME", "Upper"]:
        args = list(ADD)
        args[2] = bad
        r = cli(*args)
        assert r.rc == 2, (bad, r)
        assert "invalid site name" in r.err and "DNS label" in r.err
    assert sorted(p.name for p in (inv / "sites").iterdir()) == sorted(
        p.name for p in (Path(__file__).parents[2] / "inventory" / "sites").iterdir()
    )


def test_site_set_drain_undrain(cli, inv: Path) -> None:
    assert cli("site", "drain", "phl-co-12").out == "site/phl-co-12 drained\n"
    r = cli("site", "drain", "phl-co-12")
    assert r.rc == 0 and "unchanged" in r.out
    assert "drained" in cli("site", "ls", "phl-co-12").out
    assert cli("site", "undrain", "phl-co-12").out == "site/phl-co-12 undrained\n"
    r = cli("site", "set", "phl-co-12", "drain=true", "labels.tier=gold", "models.llama-3.1-70b-instruct=8")
    assert r.rc == 0, r
    data = json.loads(cli("site", "show", "phl-co-12", "-o", "json").out)
    assert data["drain"] is True and data["labels"]["tier"] == "gold"
    assert {"name": "llama-3.1-70b-instruct", "capacity": 8, "tensor_parallel": None, "gpu": None} in data[
        "models"
    ]
    assert cli("site", "set", "phl-co-12", "drain=true").out.endswith("unchanged\n")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["juristiction=DE"], "did you mean 'jurisdiction'"),
        (["drain=maybe"], "drain: must be true or false (got 'maybe')"),
        (["cost_per_gpu_hour=cheap"], "cost_per_gpu_hour: must be a cost (got 'cheap')"),
        (["kind-"], "cannot be removed"),
        (["novalue"], "is not KEY=VALUE"),
        (["models.x=lots"], "models.x: must be a positive integer (got 'lots')"),
        (["nodes.phl-co-12-gpu-01.gpus.count=lots"], "gpus.count: must be a positive integer (got 'lots')"),
        (["models.llama-3.1-8b-instruct.capacity=1.5"], "capacity: must be a positive integer (got 1.5)"),
        (["location.lat=nan"], "location.lat: must be a latitude"),
        (["location=1"], "'location' is a mapping"),
        (["name=x"], "names cannot be changed"),
        (["nodes.phl-co-12-gpu-01.gpu.count=3"], "did you mean 'nodes.phl-co-12-gpu-01.gpus'"),
    ],
)
def test_site_set_usage_errors(cli, args, fragment) -> None:
    r = cli("site", "set", "phl-co-12", *args)
    assert r.rc == 2, r
    assert fragment in r.err and r.err.startswith("error: ")


def test_site_rm_needs_yes_without_a_terminal(cli, inv: Path) -> None:
    r = cli("site", "rm", "chi-co-07")
    assert r.rc == 2 and "refusing without --yes" in r.err
    assert (inv / "sites" / "chi-co-07.yaml").exists()
    r = cli("site", "rm", "chi-co-07", "--yes")
    assert r.rc == 0 and r.out == "site/chi-co-07 deleted\n"
    assert not (inv / "sites" / "chi-co-07.yaml").exists()


def test_node_add_ls_rm(cli, inv: Path) -> None:
    r = cli(
        "node",
        "add",
        "chi-co-07",
        "chi-co-07-gpu-02",
        "--host",
        "10.7.0.2",
        "--port",
        "2200",
        "--user",
        "ops",
        "--gpus",
        "RTX PRO 6000:4",
    )
    assert r.rc == 0 and r.out == "node/chi-co-07/chi-co-07-gpu-02 created\n", r
    r = cli("node", "add", "chi-co-07", "chi-co-07-gpu-02", "--host", "10.7.0.2")
    assert r.rc == 0 and "unchanged" in r.out
    r = cli("node", "add", "chi-co-07", "chi-co-07-gpu-02", "--host", "10.7.0.3")
    assert r.rc == 1 and "host: '10.7.0.2' -> '10.7.0.3'" in r.err
    r = cli("node", "add", "chi-pop-01", "chi-co-07-gpu-02", "--host", "10.7.0.4")
    assert r.rc == 1 and "already used in site chi-co-07" in r.err
    r = cli("node", "add", "chi-pop-01", "chi-pop-01-gpu-09", "--host", "10.7.0.2", "--port", "2200")
    assert r.rc == 5 and "duplicate address 10.7.0.2:2200" in r.err
    rows = json.loads(cli("node", "ls", "chi-co-07", "-o", "json").out)
    assert rows[1] == {
        "name": "chi-co-07-gpu-02",
        "site": "chi-co-07",
        "host": "10.7.0.2",
        "port": 2200,
        "user": "ops",
        "key": "~/.ssh/gridops_ed25519",
        "jump": None,
        "gpus": {"model": "RTX PRO 6000", "count": 4},
    }
    r = cli("node", "ls", "-o", "wide", "chi-co-07")
    assert r.out.splitlines()[0].split() == ["SITE", "NAME", "HOST", "PORT", "GPUS", "USER", "KEY"]
    r = cli("node", "rm", "chi-co-07", "chi-co-07-gpu-02", "--yes")
    assert r.rc == 0 and r.out == "node/chi-co-07/chi-co-07-gpu-02 deleted\n"
    r = cli("node", "rm", "chi-co-07", "chi-co-07-gpu-2", "--yes")
    assert r.rc == 1 and "did you mean 'chi-co-07-gpu-01'" in r.err


@pytest.mark.parametrize("gpus", ["H100", "H100:many", ":4", "H100:0"])
def test_node_add_bad_gpus(cli, gpus: str) -> None:
    r = cli("node", "add", "chi-co-07", "chi-co-07-gpu-05", "--host", "10.7.0.5", "--gpus", gpus)
    assert r.rc == 2 and "MODEL:COUNT" in r.err


def test_usage_errors_exit_2(cli) -> None:
    r = cli("site", "ls", "-o", "xml")
    assert r.rc == 2 and "xml" in r.err and r.out == ""
    r = cli("site", "frobnicate")
    assert r.rc == 2
    r = cli("site", "add", "x")
    assert r.rc == 2 and "Missing option" in r.err


def test_missing_inventory_says_where_and_what_next(tmp_path: Path) -> None:
    r = run_cli("site", "ls", inventory=tmp_path / "nope")
    assert r.rc == 1
    assert f"inventory directory {tmp_path / 'nope'} not found" in r.err
    assert "gridctl init" in r.err and "Traceback" not in r.err


def test_inventory_from_environment(inv: Path) -> None:
    from tests.conftest import cli_env

    r = run_cli("site", "ls", "-o", "name", "kind:cloud", env=cli_env(GRIDCTL_INVENTORY=str(inv)))
    assert r.rc == 0 and r.out == "cloud-use1\n"


def _state(inv: Path) -> Path:
    state = inv / ".state"
    state.mkdir(exist_ok=True)
    health = {
        "sites": {"nyc-pop-01": {"status": "ok"}, "chi-pop-01": {"status": "ok"}},
        "nodes": {"nyc-pop-01/nyc-pop-01-gpu-01": {"status": "ok"}, "chi-pop-01/chi-pop-01-gpu-01": {}},
    }
    (state / "health.json").write_text(json.dumps(health))
    (state / "probes.json").write_text(json.dumps({"us-east": {"nyc-pop-01": {"rtt_ms": 2.0}}}))
    (state / "calibration.json").write_text(json.dumps({"sites": {"nyc-pop-01": {}, "chi-pop-01": {}}}))
    return state


def test_site_rm_takes_what_refers_to_it_in_one_change(cli, inv: Path) -> None:
    """issue 15: `site rm nyc-pop-01` was refused because grid.yaml measured latency to it."""
    state = _state(inv)
    node = yaml.safe_load((inv / "sites" / "nyc-pop-01.yaml").read_text())["nodes"][0]
    pin = f"{node['host']} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    (inv / "known_hosts").write_text((inv / "known_hosts").read_text() + pin)
    before = {p: p.read_text() for p in [inv / "grid.yaml", inv / "known_hosts", *state.iterdir()]}
    r = cli("site", "rm", "nyc-pop-01", "--dry-run")
    assert r.rc == 0, r
    assert "-      nyc-pop-01: 1.8" in r.out and "(file deleted: " in r.out
    assert "site/nyc-pop-01 deleted (dry run: nothing written)" in r.out
    assert "  would remove grid.yaml: regions.us-east.latency_ms.nyc-pop-01" in r.out
    assert {p: p.read_text() for p in before} == before and (inv / "sites" / "nyc-pop-01.yaml").exists()
    r = cli("site", "rm", "nyc-pop-01", "--yes", "-o", "json")
    assert r.rc == 0, r
    out = json.loads(r.out)
    assert out["action"] == "deleted" and out["dry_run"] is False
    assert out["removed"] == [
        "grid.yaml: regions.us-east.latency_ms.nyc-pop-01",
        f"known_hosts: {node['host']} ssh-ed25519",
        ".state/health.json: sites.nyc-pop-01",
        ".state/health.json: nodes.nyc-pop-01/nyc-pop-01-gpu-01",
        ".state/probes.json: us-east.nyc-pop-01",
        ".state/calibration.json: sites.nyc-pop-01",
    ]
    assert {f["file"]: f["action"] for f in out["files"]}["sites/nyc-pop-01.yaml"] == "deleted"
    assert not (inv / "sites" / "nyc-pop-01.yaml").exists()
    grid = (inv / "grid.yaml").read_text()
    assert "nyc-pop-01" not in grid and "# measured RTT from the NYC probe, 2024-Q4" in grid
    assert node["host"] not in (inv / "known_hosts").read_text()
    health = json.loads((state / "health.json").read_text())
    assert health["sites"] == {"chi-pop-01": {"status": "ok"}}
    assert health["nodes"] == {"chi-pop-01/chi-pop-01-gpu-01": {}}
    assert json.loads((state / "probes.json").read_text()) == {"us-east": {}}
    assert json.loads((state / "calibration.json").read_text()) == {"sites": {"chi-pop-01": {}}}
    assert cli("inventory", "validate").rc == 0


@pytest.mark.parametrize("text", ["NO", "yes", "on", "1e3", "off", "012", "null", "1.5"])
def test_site_set_text_fields_stay_text(cli, inv: Path, text: str) -> None:
    """issue 15: `labels.managed=yes` and `jurisdiction=NO` exited 5 ("got false; quote it")."""
    args = [f"labels.managed={text}"] + (["jurisdiction=NO"] if text == "NO" else [])
    r = cli("site", "set", "phl-co-12", *args)
    assert r.rc == 0, r
    raw = (inv / "sites" / "phl-co-12.yaml").read_text()
    doc = yaml.safe_load(raw)
    assert doc["labels"]["managed"] == text and isinstance(doc["labels"]["managed"], str)
    assert "# Philadelphia central office 12 (Spring Garden)" in raw and "# sshd on 2222" in raw
    if text == "NO":
        assert doc["jurisdiction"] == "NO" and 'jurisdiction: "NO"' in raw
    shown = json.loads(cli("site", "show", "phl-co-12", "-o", "json").out)
    assert shown["labels"]["managed"] == text


def test_site_set_dotted_paths_into_lists_by_name(cli, inv: Path) -> None:
    r = cli(
        "site",
        "set",
        "phl-co-12",
        "nodes.phl-co-12-gpu-01.gpus.count=8",
        "models.llama-3.1-8b-instruct.capacity=64",
        "models.llama-3.1-8b-instruct.tensor_parallel=2",
        "provision.profile=vllm",
        "health_path=/v1/health",
        "cost_per_gpu_hour=2",
        "drain=yes",
        "labels.metro-",
    )
    assert r.rc == 0, r
    doc = yaml.safe_load((inv / "sites" / "phl-co-12.yaml").read_text())
    assert doc["nodes"][0]["gpus"] == {"model": "L40S", "count": 8}
    assert doc["models"][0] == {"name": "llama-3.1-8b-instruct", "capacity": 64, "tensor_parallel": 2}
    assert doc["provision"] == {"profile": "vllm"} and doc["health_path"] == "/v1/health"
    assert doc["cost_per_gpu_hour"] == 2 and doc["drain"] is True and "metro" not in doc["labels"]
    r = cli("site", "set", "phl-co-12", "models.llama-3.1-8b-instruct.tensor_parallel=16")
    assert r.rc == 2 and "no node has more than 8" in r.err
    r = cli("site", "set", "phl-co-12", "nodes.phl-co-12-gpu-1.port=2200")
    assert r.rc == 1 and "did you mean 'phl-co-12-gpu-01'?" in r.err


def test_every_write_takes_dry_run_and_json(cli, inv: Path) -> None:
    files = {p: p.read_text() for p in (inv / "sites").iterdir()}
    runs = [
        ["site", "set", "phl-co-12", "drain=true"],
        ["site", "drain", "phl-co-12"],
        ["site", "undrain", "phl-edge-04"],
        [*ADD],
        ["node", "add", "chi-co-07", "chi-co-07-gpu-09", "--host", "10.7.0.9"],
        ["node", "set", "chi-co-07", "chi-co-07-gpu-01", "port=2201"],
        ["node", "rm", "chi-co-07", "chi-co-07-gpu-01"],
        ["site", "rm", "chi-co-07"],
    ]
    for args in runs:
        r = cli(*args, "--dry-run")
        assert r.rc == 0 and "(dry run: nothing written)" in r.out and "+++ " in r.out, (args, r)
        r = cli(*args, "--dry-run", "-o", "json")
        out = json.loads(r.out)
        assert out["dry_run"] is True and out["files"] and out["files"][0]["diff"], args
    assert {p: p.read_text() for p in (inv / "sites").iterdir()} == files
    r = cli("site", "set", "phl-co-12", "drain=true", "-o", "json")
    out = json.loads(r.out)
    assert out["action"] == "configured" and out["details"] == ["drain=true"] and out["dry_run"] is False


def test_node_set_new_address_drops_the_pinned_key(cli, inv: Path) -> None:
    site = yaml.safe_load((inv / "sites" / "phl-co-12.yaml").read_text())
    host = site["nodes"][1]["host"]
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    (inv / "known_hosts").write_text(f"# pins\n[{host}]:2222 {key}\nother.example.net {key}\n")
    r = cli("node", "set", "phl-co-12", "phl-co-12-gpu-02", "user=ops", "gpus.count=2")
    assert r.rc == 0 and r.err == "" and f"[{host}]:2222" in (inv / "known_hosts").read_text()
    r = cli("node", "set", "phl-co-12", "phl-co-12-gpu-02", "port=2200")
    assert r.rc == 0, r
    assert r.out.startswith("node/phl-co-12/phl-co-12-gpu-02 configured (port=2200)\n")
    assert f"removed known_hosts: [{host}]:2222 ssh-ed25519" in r.out
    assert "its pinned host key was dropped" in r.err
    assert "gridctl node trust phl-co-12/phl-co-12-gpu-02" in r.err
    assert (inv / "known_hosts").read_text() == f"# pins\nother.example.net {key}\n"
    text = (inv / "sites" / "phl-co-12.yaml").read_text()
    assert "port: 2200   # sshd on 2222: reached through the CO's NAT" in text
    node = json.loads(cli("node", "ls", "phl-co-12-gpu-02", "-o", "json").out)[0]
    assert (node["port"], node["user"], node["gpus"]["count"]) == (2200, "ops", 2)
    r = cli("node", "set", "phl-co-12", "phl-co-12-gpu-02", "host=10.1.2.3", "-o", "json")
    assert r.rc == 0 and "no host key was pinned for it" in json.loads(r.out)["notes"][0]
    for bad, fragment in [
        ("port=lots", "port: must be a port (got 'lots')"),
        ("port=70000", "between 1 and 65535"),
        ("gpus.count=lots", "gpus.count: must be a positive integer (got 'lots')"),
        ("hots=x", "did you mean 'nodes.phl-co-12-gpu-02.host'?"),
        ("host-", "cannot be removed"),
    ]:
        r = cli("node", "set", "phl-co-12", "phl-co-12-gpu-02", bad)
        assert r.rc == 2 and fragment in r.err and "hint: " in r.err, (bad, r)
    r = cli("node", "set", "phl-co-12", "phl-co-12-gpu-2", "port=1")
    assert r.rc == 1 and "did you mean 'phl-co-12-gpu-02'?" in r.err


def test_node_rm_drops_its_host_key_and_state(cli, inv: Path) -> None:
    state = _state(inv)
    host = yaml.safe_load((inv / "sites" / "nyc-pop-01.yaml").read_text())["nodes"][0]["host"]
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    (inv / "known_hosts").write_text(f"{host} {key}\n")
    r = cli("node", "rm", "nyc-pop-01", "nyc-pop-01-gpu-01", "--yes")
    assert r.rc == 0, r
    assert r.out.splitlines() == [
        "node/nyc-pop-01/nyc-pop-01-gpu-01 deleted",
        f"  removed known_hosts: {host} ssh-ed25519",
        "  removed .state/health.json: nodes.nyc-pop-01/nyc-pop-01-gpu-01",
    ]
    assert (inv / "known_hosts").read_text() == ""
    assert "nyc-pop-01" in json.loads((state / "health.json").read_text())["sites"]
