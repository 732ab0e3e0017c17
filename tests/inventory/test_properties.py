"""Property tests: add/show round-trips; no YAML text makes validation crash."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridctl.cli.main import run
from gridctl.core.errors import GridctlError
from gridctl.core.inventory.jurisdictions import ISO_3166_ALPHA2
from gridctl.inventory.load import load_inventory
from gridctl.output import Streams
from tests.conftest import EXAMPLE

REGIONS = ["us-east", "us-phl", "us-central", "eu-de", "eu-fr", "eu-de-sovereign"]
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
site_names = label.map(lambda n: f"t-{n}"[:63].rstrip("-"))
label_values = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?", fullmatch=True)
model_names = st.from_regex(r"[a-z0-9][a-z0-9.:/-]{0,30}", fullmatch=True)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = run(argv, Streams(stdout=out, stderr=err, stdin=io.StringIO(), environ={"NO_COLOR": "1"}))
    return rc, out.getvalue(), err.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=site_names,
    kind=st.sampled_from(["regional-pop", "central-office", "edge", "cloud"]),
    region=st.sampled_from(REGIONS),
    code=st.sampled_from(sorted(ISO_3166_ALPHA2)),
    lat=st.floats(-90, 90, allow_nan=False),
    lon=st.floats(-180, 180, allow_nan=False),
    port=st.integers(1, 65535),
    models=st.dictionaries(model_names, st.integers(1, 10_000), max_size=3),
    labels=st.dictionaries(label, label_values, max_size=3),
    cost=st.one_of(st.none(), st.floats(0, 1000, allow_nan=False)),
)
def test_site_add_then_show_round_trips(
    name, kind, region, code, lat, lon, port, models, labels, cost
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp) / "inv"
        shutil.copytree(EXAMPLE, inv)
        endpoint = f"https://{name}.example.net:{port}"
        argv = [
            "-i",
            str(inv),
            "site",
            "add",
            name,
            "--kind",
            kind,
            "--region",
            region,
            "--jurisdiction",
            code,
            "--lat",
            repr(lat),
            "--lon",
            repr(lon),
            "--endpoint",
            endpoint,
        ]
        for m, c in models.items():
            argv += ["--model", f"{m}={c}"]
        for k, v in labels.items():
            argv += ["--label", f"{k}={v}"]
        if cost is not None:
            argv += ["--cost-per-gpu-hour", repr(cost)]
        rc, out, err = _run(argv)
        assert rc == 0, err
        assert out == f"site/{name} created\n"
        rc, out, err = _run(["-i", str(inv), "site", "show", name, "-o", "json"])
        assert rc == 0, err
        shown = json.loads(out)
        assert shown["name"] == name and shown["kind"] == kind and shown["region"] == region
        assert shown["jurisdiction"] == code and shown["endpoint"] == endpoint
        assert shown["location"] == {"lat": lat, "lon": lon}
        assert {m["name"]: m["capacity"] for m in shown["models"]} == models
        assert shown["labels"] == labels
        assert shown["cost_per_gpu_hour"] == (cost or 0.0)
        assert shown["drain"] is False and shown["nodes"] == []
        # and the same add again is a no-op
        rc, out, _ = _run(argv)
        assert rc == 0 and out.endswith("unchanged\n")


def _check_text(tmp: Path, rel: str, text: str) -> None:
    inv = tmp / "inv"
    if inv.exists():
        shutil.rmtree(inv)
    shutil.copytree(EXAMPLE, inv)
    (inv / rel).write_text(text, encoding="utf-8")
    try:
        load_inventory(inv)
    except GridctlError as exc:
        assert exc.exit_code in (1, 5)
        for p in getattr(exc, "problems", []):
            assert p.file and str(p)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    text=st.text(max_size=300),
    target=st.sampled_from(["grid.yaml", "sites/phl-co-12.yaml", "sites/new.yaml"]),
)
def test_arbitrary_text_never_crashes_validation(tmp_path: Path, text: str, target: str) -> None:
    _check_text(tmp_path, target, text)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["NO", "yes", "US", "edge", "https://x.example.net", "ftp://x", "four", "1e400", "0x1f"]),
)
_keys = st.one_of(
    st.sampled_from(
        [
            "name",
            "kind",
            "region",
            "jurisdiction",
            "location",
            "lat",
            "lon",
            "endpoint",
            "nodes",
            "models",
            "gpus",
            "count",
            "model",
            "host",
            "port",
            "labels",
            "drain",
            "regions",
            "defaults",
            "ssh",
            "weights",
            "allowed_jurisdictions",
            "latency_ms",
            "capacity",
        ]
    ),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=6),
    max_leaves=25,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    doc=st.dictionaries(_keys, _values, max_size=10),
    target=st.sampled_from(["grid.yaml", "sites/phl-co-12.yaml"]),
)
def test_arbitrary_structures_never_crash_validation(tmp_path: Path, doc, target: str) -> None:
    _check_text(tmp_path, target, yaml.safe_dump(doc, allow_unicode=True))
