"""`gridctl sim` as a user runs it: a real process, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from tests.conftest import EXAMPLE, cli_env
from tests.sim.conftest import run_sim

SHORT = ("--duration", "8")


def test_table_compares_every_policy_and_the_sites() -> None:
    r = run_sim(*SHORT)
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0].startswith("profile voice-burst (") and "SLO 500 ms; central site cloud-use1" in lines[0]
    assert lines[1].split()[:4] == ["POLICY", "REQUESTS", "REJECTED", "IN-SLO"]
    assert [ln.split()[0] for ln in lines[2:6]] == ["grid", "nearest", "central", "round-robin"]
    assert "utilisation of each site (requests served)" in r.out
    assert any(ln.startswith("cloud-use1") for ln in lines)
    assert "profile voice-burst from " in r.err and "scenarios/voice-burst.yaml" in r.err


def test_json_is_byte_identical_for_a_seed_and_differs_for_another() -> None:
    a = run_sim(*SHORT, "--seed", "5", "-o", "json", env=cli_env(PYTHONHASHSEED="1"))
    b = run_sim(*SHORT, "--seed", "5", "-o", "json", env=cli_env(PYTHONHASHSEED="2"))
    c = run_sim(*SHORT, "--seed", "6", "-o", "json")
    assert a.rc == b.rc == c.rc == 0, (a, c)
    assert a.out == b.out and a.out != c.out
    data = json.loads(a.out)
    assert data["scenario"]["seed"] == 5 and data["scenario"]["model"] == "llama-3.1-8b-instruct"
    assert [p["policy"] for p in data["policies"]] == ["grid", "nearest", "central", "round-robin"]
    for p in data["policies"]:
        assert p["completed"] + p["rejected"] == p["requests"] == data["scenario"]["requests"]
        assert set(p["e2e_ms"]) == {"p50", "p90", "p99"} and p["cost"]["per_million_tokens"] > 0


def test_policies_profiles_and_names() -> None:
    r = run_sim(*SHORT, "--profile", "chat", "--policy", "central,grid", "-o", "name", inventory=EXAMPLE)
    assert r.rc == 0, r
    assert r.out == "central\ngrid\n"
    r = run_sim(*SHORT, "--policy", "grid,fastest")
    assert r.rc == 2 and "error: --policy 'grid,fastest': unknown policy fastest" in r.err
    r = run_sim(*SHORT, "--profile", "voice-brust")
    assert r.rc == 2 and "did you mean 'voice-burst'?" in r.err
    r = run_sim(*SHORT, "--central", "nyc-pop-1")
    assert r.rc == 2 and "did you mean 'nyc-pop-01'?" in r.err


def test_a_model_no_site_serves_exits_4() -> None:
    r = run_sim(*SHORT, "--model", "gpt-9", "--policy", "grid,central")
    assert r.rc == 4, r
    assert "error: no policy could place any request for gpt-9" in r.err
    assert (
        json.loads(run_sim(*SHORT, "--model", "gpt-9", "-o", "json").out)["policies"][0]["rejected_no_site"]
        > 0
    )


def test_trace_replay_and_a_bad_trace_located(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(
            json.dumps(
                {
                    "t": i * 0.01,
                    "region": "us-east" if i % 2 else "eu-de",
                    "prompt_tokens": 300,
                    "output_tokens": 20,
                    "prefix": "a",
                    "prefix_tokens": 200,
                }
            )
            + "\n"
            for i in range(200)
        )
    )
    r = run_sim("--trace", str(good), "-o", "json")
    assert r.rc == 0, r
    data = json.loads(r.out)
    assert data["scenario"]["trace"] == str(good) and data["scenario"]["requests"] == 200
    assert data["scenario"]["requests_by_region"] == {"us-east": 100, "eu-de": 100}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        good.read_text().splitlines()[0] + "\n\n" + '{"t": 1, "region": "mars", "prompt_tokens": 3}\n'
    )
    r = run_sim("--trace", str(bad))
    assert r.rc == 2, r
    assert f"error: {bad}:3: region: no client region named 'mars' in grid.yaml" in r.err
    assert f"{bad}:3: output_tokens: missing (required)" in r.err  # in the hint: the other problems
    assert r.out == ""
    r = run_sim("--trace", str(tmp_path / "missing.jsonl"))
    assert r.rc == 2 and "no such file" in r.err
    r = run_sim("--trace", str(good), "--profile", "chat")
    assert r.rc == 2 and "exclude each other" in r.err


def test_an_invalid_scenario_file_exits_5_with_its_lines(tmp_path: Path) -> None:
    inv = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inv, ignore=shutil.ignore_patterns(".state", ".gridctl.lock"))
    path = inv / "scenarios" / "voice-burst.yaml"
    path.write_text(
        path.read_text().replace("slo_ms: 500", "slo_ms: soon").replace("us-phl: 60", "us-phl: -3")
    )
    r = run_sim(*SHORT, inventory=inv)
    assert r.rc == 5, r
    assert "scenarios/voice-burst.yaml:" in r.err and ": slo_ms: must be milliseconds (got 'soon')" in r.err
    assert ": regions.us-phl: must be requests per second between 0" in r.err
    assert "error: scenario scenarios/voice-burst.yaml is invalid (2 problems)" in r.err


def test_plot_writes_a_png(tmp_path: Path) -> None:
    png = tmp_path / "sim.png"
    r = run_sim(*SHORT, "--policy", "grid,central", "--plot", str(png))
    assert r.rc == 0, r
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1100, 640)
    assert f"wrote {png}" in r.err
    r = run_sim(*SHORT, "--plot", str(tmp_path / "no" / "such" / "dir.png"))
    assert r.rc == 2 and "no directory" in r.err


def test_plot_writes_an_svg(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    svg = tmp_path / "sim.svg"
    r = run_sim(*SHORT, "--policy", "grid,central", "--plot", str(svg))
    assert r.rc == 0, r
    assert f"wrote {svg}" in r.err
    root = ET.fromstring(svg.read_bytes())  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg" and (root.get("width"), root.get("height")) == ("1100", "640")
    assert root.get("font-family") == "sans-serif"  # the viewer's own font, nothing embedded
    texts = [t.text or "" for t in root.iter(f"{ns}text")]
    assert texts[0].startswith("gridctl sim: voice-burst, llama-3.1-8b-instruct")
    assert any(t.startswith("grid: p99 ") for t in texts) and any(
        t.startswith("central: p99 ") for t in texts
    )
    assert "SLO 500 ms" in texts and "time (s)" in texts
    strokes = {p.get("stroke") for p in root.iter(f"{ns}polyline")}
    assert {"#0072b2", "#d55e00"} <= strokes  # grid's blue, central's orange
    assert not list(root.iter(f"{ns}image"))  # vector: no bitmap inside


def test_plot_format_from_the_extension(tmp_path: Path) -> None:
    upper = tmp_path / "SIM.PNG"
    r = run_sim(*SHORT, "--policy", "grid", "--plot", str(upper))
    assert r.rc == 0 and upper.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r
    for name, said in (
        ("sim.jpg", "extension '.jpg'"),
        ("sim", "no extension"),
        ("sim.svg.gz", "extension '.gz'"),
    ):
        r = run_sim(*SHORT, "--plot", str(tmp_path / name))
        assert r.rc == 2, r
        assert f"error: --plot {tmp_path / name}: {said}; the chart is written as .png or .svg" in r.err, r
        assert f"hint: e.g. --plot {tmp_path / 'sim.svg'}\n" in r.err, r
        assert r.out == "" and not (tmp_path / name).exists()  # refused before simulating
