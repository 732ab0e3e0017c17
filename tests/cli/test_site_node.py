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
