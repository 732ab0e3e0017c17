"""Atomic, locked writes: concurrent writers, killed writers, comment-preserving edits."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gridctl.inventory.load import load_inventory
from tests.conftest import REPO, cli_env, run_cli


def _popen_cli(inv: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gridctl", "-i", str(inv), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )


def test_twenty_concurrent_site_adds_all_succeed(inv: Path) -> None:
    procs = [
        _popen_cli(
            inv,
            "site",
            "add",
            f"new-edge-{i:02d}",
            "--kind",
            "edge",
            "--region",
            "us-east",
            "--jurisdiction",
            "US",
            "--lat",
            f"{40 + i / 100:.2f}",
            "--lon",
            "-74.0",
            "--endpoint",
            f"https://new-edge-{i:02d}.example.net",
            "--model",
            "llama-3.1-8b-instruct=8",
        )
        for i in range(20)
    ]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0, (i, out, err)
        assert out.strip() == f"site/new-edge-{i:02d} created"
    loaded = load_inventory(inv)
    names = {s.name for s in loaded.sites}
    assert {f"new-edge-{i:02d}" for i in range(20)} <= names
    assert len(loaded.sites) == 15 + 20
    for i in range(20):
        site = loaded.site(f"new-edge-{i:02d}")
        assert site is not None and site.location.lat == round(40 + i / 100, 2)
    assert not list((inv / "sites").glob(".*.tmp")), "temp files left behind"


def test_concurrent_sets_on_one_site_lose_no_update(inv: Path) -> None:
    procs = [_popen_cli(inv, "site", "set", "phl-co-12", f"labels.k{i}=v{i}") for i in range(10)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()  # type: ignore[union-attr]
    labels = load_inventory(inv).site("phl-co-12").labels  # type: ignore[union-attr]
    assert {f"k{i}": f"v{i}" for i in range(10)}.items() <= dict(labels).items()


_WRITER = """
import sys
from pathlib import Path
from gridctl.inventory.atomic import write_atomic
path = Path(sys.argv[1])
texts = [Path(sys.argv[2]).read_text(), Path(sys.argv[3]).read_text()]
print("ready", flush=True)
i = 0
while True:
    write_atomic(path, texts[i % 2])
    i += 1
"""


def test_writer_killed_at_any_point_leaves_old_or_new(tmp_path: Path) -> None:
    # Big texts so a kill often lands in the middle of writing one.
    old = "# old\n" + "".join(f"key{i}: {'a' * 60}\n" for i in range(30_000))
    new = "# new\n" + "".join(f"key{i}: {'b' * 60}\n" for i in range(30_000))
    (tmp_path / "old.txt").write_text(old)
    (tmp_path / "new.txt").write_text(new)
    target = tmp_path / "site.yaml"
    target.write_text(old)
    rng = random.Random(7)
    seen = set()
    for _ in range(25):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                str(target),
                str(tmp_path / "old.txt"),
                str(tmp_path / "new.txt"),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=REPO,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.08))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = target.read_text()
        assert text in (old, new), f"partial file after kill: {len(text)} bytes"
        seen.add(text[:5])
    assert seen == {"# old", "# new"}, "kills should land on both sides of a rename"


def test_cli_writer_killed_leaves_valid_inventory_and_free_lock(inv: Path) -> None:
    site = inv / "sites" / "phl-co-12.yaml"
    before = site.read_text()
    rng = random.Random(11)
    for i in range(8):
        proc = _popen_cli(inv, "site", "set", "phl-co-12", f"labels.round={i}")
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = site.read_text()
        assert yaml.safe_load(text)["name"] == "phl-co-12"
        assert text == before or f"round: '{i}'" in text or f'round: "{i}"' in text or f"round: {i}" in text
        before = text
        load_inventory(inv)  # still valid
    # The lock died with its holder: the next writer goes straight through.
    r = run_cli("site", "set", "phl-co-12", "labels.round=done", inventory=inv, timeout=30)
    assert r.rc == 0, r
    assert load_inventory(inv).site("phl-co-12").labels["round"] == "done"  # type: ignore[union-attr]


COMMENTED = """\
# Philadelphia central office 12 -- owned by the metro team.
name: phl-co-12
kind: central-office   # moved from edge in 2025
region: us-phl
jurisdiction: US
location: {lat: 39.9612, lon: -75.1538}
endpoint: https://phl-co-12.infer.example.net
cost_per_gpu_hour: 1.35  # contract price
drain: false
labels:
  tier: metro   # keep in sync with the CMDB
models:
  # the main chat model
  - name: llama-3.1-8b-instruct
    capacity: 96
nodes:
  - name: phl-co-12-gpu-01   # rack A3
    host: gpu-01.phl-co-12.grid.example.net
    gpus: {model: L40S, count: 4}
"""


def test_edits_keep_comments_and_key_order(inv: Path) -> None:
    site = inv / "sites" / "phl-co-12.yaml"
    site.write_text(COMMENTED)
    assert (
        run_cli("site", "set", "phl-co-12", "cost_per_gpu_hour=1.5", "labels.zone=b", inventory=inv).rc == 0
    )
    assert run_cli("site", "drain", "phl-co-12", inventory=inv).rc == 0
    r = run_cli(
        "node",
        "add",
        "phl-co-12",
        "phl-co-12-gpu-09",
        "--host",
        "10.9.9.9",
        "--gpus",
        "L40S:4",
        inventory=inv,
    )
    assert r.rc == 0, r
    text = site.read_text()
    for comment in (
        "# Philadelphia central office 12 -- owned by the metro team.",
        "# moved from edge in 2025",
        "# contract price",
        "# keep in sync with the CMDB",
        "# the main chat model",
        "# rack A3",
    ):
        assert comment in text, comment
    assert re.search(r"^cost_per_gpu_hour: 1.5 +# contract price$", text, re.MULTILINE)
    assert "drain: true" in text
    assert "location: {lat: 39.9612, lon: -75.1538}" in text
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert keys == [
        "name",
        "kind",
        "region",
        "jurisdiction",
        "location",
        "endpoint",
        "cost_per_gpu_hour",
        "drain",
        "labels",
        "models",
        "nodes",
    ]
    assert text.index("phl-co-12-gpu-01") < text.index("phl-co-12-gpu-09")
    assert "  - name: phl-co-12-gpu-09\n    host: 10.9.9.9\n    gpus: {model: L40S, count: 4}\n" in text
    # Only what changed changed: undoing the edits gives back the original lines.
    assert (
        run_cli("site", "set", "phl-co-12", "cost_per_gpu_hour=1.35", "labels.zone-", inventory=inv).rc == 0
    )
    assert run_cli("site", "undrain", "phl-co-12", inventory=inv).rc == 0
    assert run_cli("node", "rm", "phl-co-12", "phl-co-12-gpu-09", "--yes", inventory=inv).rc == 0
    assert site.read_text() == COMMENTED


def test_refused_change_writes_nothing(inv: Path) -> None:
    site = inv / "sites" / "phl-co-12.yaml"
    before = site.read_text()
    r = run_cli("site", "set", "phl-co-12", "jurisdiction=XX", inventory=inv)  # the field's own check
    assert r.rc == 2 and r.out == ""
    assert "error: jurisdiction: must be an ISO 3166-1 alpha-2 country code" in r.err
    assert site.read_text() == before
    r = run_cli("site", "set", "phl-co-12", "drain=true", "region=us-nowhere", inventory=inv)  # across files
    assert r.rc == 5
    assert "sites/phl-co-12.yaml:" in r.err and "unknown region 'us-nowhere'" in r.err
    assert "change refused" in r.err and "nothing was written" in r.err
    assert site.read_text() == before
