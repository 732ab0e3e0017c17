"""``gridctl route test`` and ``route probe`` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import EXAMPLE, cli_env, run_cli
from tests.fleet.endpoint import FakeEndpoint

M8 = "llama-3.1-8b-instruct"


SHORT = ("--max-tokens", "32")  # a short answer: some of the example's sites meet the 500 ms SLO


def test_route_test_table(cli) -> None:
    r = cli("route", "test", "--from", "us-east", "--model", M8, *SHORT)
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == f"us-east -> {M8} (SLO 500 ms): 8 eligible, 6 predicted within the SLO"
    assert lines[1] == (
        "request: 256 prompt tokens, 32 output tokens (given); budget 450 ms (the SLO less its 10% margin)"
    )
    header = next(line for line in lines if line.startswith("RANK"))
    assert header.split() == [
        "RANK", "SITE", "GPU", "REPLICAS", "RTT-MS", "QUEUE-MS", "PREFILL-MS", "DECODE-MS", "E2E-MS", "SLO",
        "COST/1K-TOK",
    ]  # fmt: skip
    rows = {line.split()[1]: line for line in lines if line[:1].isdigit()}
    assert len(rows) == 8
    assert (
        rows["nwk-co-03"].split()[:4] == ["1", "nwk-co-03", "RTX", "PRO"] and " meets " in rows["nwk-co-03"]
    )
    assert "misses (+" in rows["jc-edge-01"] and rows["jc-edge-01"].split()[2:4] == ["L4", "2"]
    assert any(
        line.startswith("fra-pop-01") and "jurisdiction DE not allowed for us-east data" in line
        for line in lines
    )
    assert r.err == ""
    wide = cli("route", "test", "--from", "us-east", "--model", M8, *SHORT, "-o", "wide")
    assert wide.rc == 0 and all(h in wide.out for h in ("TTFT-MS", "LOAD", "CAL", "COST/REQ", "inventory"))


def test_route_test_json_has_the_prediction_and_its_parts(cli) -> None:
    r = cli("route", "test", "--from", "eu-fr", "--model", M8, *SHORT, "-o", "json")
    assert r.rc == 0, r
    data = json.loads(r.out)
    assert data["request"] == {
        "region": "eu-fr",
        "model": M8,
        "jurisdiction": None,
        "slo_ms": 500.0,
        "prompt_tokens": 256,
        "max_tokens": 32,
        "output_tokens_from": "given",
    }
    assert data["budget_ms"] == 450.0 and data["expected_to_meet_slo"] is True
    assert {x["jurisdiction"] for x in data["ranked"]} <= {"DE", "FR"}
    assert [x["rank"] for x in data["ranked"]] == list(range(1, len(data["ranked"]) + 1))
    feasible = [x["feasible"] for x in data["ranked"]]
    assert feasible == sorted(feasible, reverse=True) and True in feasible and False in feasible
    for x in data["ranked"]:
        parts = x["rtt_ms"] + x["queue_ms"] + x["prefill_ms"] + x["decode_ms"]
        assert abs(x["predicted_ms"] - parts) < 0.01
        assert x["feasible"] == (x["predicted_ms"] <= 450.0)
        assert x["cost_per_1k_tokens"] > 0 and x["gpu"] and x["replicas"] >= 1
    costs = [x["cost_per_request"] for x in data["ranked"] if x["feasible"]]
    assert costs == sorted(costs)  # within the SLO: cheapest first
    assert all(e["reasons"] for e in data["excluded"])


def test_route_test_defaults_to_the_engines_shape(cli) -> None:
    from gridctl.core.placement.decision import DEFAULT_SHAPE

    r = cli("route", "test", "--from", "us-east", "--model", M8, "-o", "json")
    assert r.rc in (0, 3), r  # 3 when the default shape misses the SLO everywhere
    req = json.loads(r.out)["request"]
    assert (req["prompt_tokens"], req["max_tokens"], req["output_tokens_from"]) == (
        DEFAULT_SHAPE.prompt_tokens,
        DEFAULT_SHAPE.output_tokens,
        "default",
    )
    assert (r.rc == 3) == ("expected to miss" in r.err)
    help_text = " ".join(cli("route", "test", "--help").out.split())
    assert f"[default: {DEFAULT_SHAPE.prompt_tokens}" in help_text
    assert f"[default: {DEFAULT_SHAPE.output_tokens}" in help_text and "exit 3" in help_text.lower()


def test_when_no_site_meets_the_slo_it_says_which_would_be_used_and_exits_3(cli) -> None:
    r = cli("route", "test", "--from", "us-east", "--model", M8, "--max-tokens", "2000", "-o", "json")
    assert r.rc == 3, r
    data = json.loads(r.out)
    assert data["expected_to_meet_slo"] is False and data["ranked"]
    assert not any(x["feasible"] for x in data["ranked"])
    predicted = [x["predicted_ms"] for x in data["ranked"]]
    assert predicted == sorted(predicted)  # the fastest first: where it would go
    best = data["ranked"][0]["site"]
    assert "warning: no site is predicted to meet the 500 ms SLO (budget 450 ms)" in r.err
    assert f"it would go to the fastest, {best}" in r.err and "expected to miss" in r.err
    table = cli("route", "test", "--from", "us-east", "--model", M8, "--max-tokens", "2000")
    assert table.rc == 3 and "0 predicted within the SLO" in table.out and "meets" not in table.out


def test_route_test_takes_the_shape_and_model_from_a_request_body(cli, tmp_path: Path) -> None:
    from gridctl.core.placement.perf import count_tokens
    from gridctl.core.placement.predict import prompt_text

    body = {
        "model": M8,
        "messages": [
            {"role": "system", "content": "You are terse. " * 40},
            {"role": "user", "content": "hi"},
        ],
        "max_completion_tokens": 20,
        "stream": True,
    }
    f = tmp_path / "req.json"
    f.write_text(json.dumps(body))
    r = cli("route", "test", "--from", "us-east", "--body", str(f), "-o", "json")
    assert r.rc == 0, r
    req = json.loads(r.out)["request"]
    assert req["model"] == M8
    assert (req["prompt_tokens"], req["max_tokens"], req["output_tokens_from"]) == (
        count_tokens(prompt_text(body)),
        20,
        "max_tokens",
    )
    r = cli(
        "route",
        "test",
        "--from",
        "us-east",
        "--body",
        str(f),
        "--max-tokens",
        "7",
        "--prompt-tokens",
        "9",
        "-o",
        "json",
    )
    req = json.loads(r.out)["request"]
    assert (req["prompt_tokens"], req["max_tokens"], req["output_tokens_from"]) == (9, 7, "given")
    del body["max_completion_tokens"]
    f.write_text(json.dumps(body))
    req = json.loads(cli("route", "test", "--from", "us-east", "--body", str(f), "-o", "json").out)["request"]
    assert (req["max_tokens"], req["output_tokens_from"]) == (256, "default")  # the predictor's default
    r = cli("route", "test", "--from", "us-east", "--body", "-", *SHORT, "-o", "json", input=json.dumps(body))
    assert r.rc == 0 and json.loads(r.out)["request"]["model"] == M8


def test_route_test_refuses_bad_shapes_and_bodies_with_exit_2(cli, tmp_path: Path) -> None:
    base = ("route", "test", "--from", "us-east", "--model", M8)
    for flag, value in (("--prompt-tokens", "0"), ("--max-tokens", "-3"), ("--max-tokens", "many")):
        r = cli(*base, flag, value)
        assert r.rc == 2 and flag in r.err, r
    r = cli(*base, "--body", str(tmp_path / "missing.json"))
    assert r.rc == 2 and "missing.json: cannot read it: No such file or directory" in r.err
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "m",\n "messages": [}')
    r = cli(*base, "--body", str(bad))
    assert r.rc == 2 and f"--body {bad}:2:" in r.err and "not valid JSON" in r.err and "hint:" in r.err
    bad.write_text("[1, 2]")
    r = cli(*base, "--body", str(bad))
    assert r.rc == 2 and "a JSON list, not an object" in r.err
    bad.write_text('{"messages": []}')
    r = cli("route", "test", "--from", "us-east", "--body", str(bad))
    assert r.rc == 2 and "--model is required" in r.err
    assert "Traceback" not in r.err


def test_route_render_weights_for_a_request_shape(cli) -> None:
    from gridctl.core.placement.engine import Planner
    from gridctl.core.placement.predict import Shape
    from gridctl.core.placement.table import build_routing_table
    from gridctl.inventory.load import load_inventory
    from tests.conftest import EXAMPLE

    r = cli("route", "render", "--max-tokens", "32")
    assert r.rc == 0, r
    assert "warning: 1 route has no site predicted to meet the 500 ms SLO" in r.err  # speech on L40S/L4 in DE
    assert r.err.rstrip().endswith(
        "their primaries are the fastest sites: eu-de-sovereign/parakeet-tdt-0.6b-v2"
    )
    expected = build_routing_table(Planner(load_inventory(EXAMPLE)), shape=Shape(256, 32, "given"))
    assert json.loads(r.out) == expected
    r = cli("route", "render", "--max-tokens", "2000", "--prompt-tokens", "100")
    assert r.rc == 0, r
    assert json.loads(r.out)["shape"] == {"prompt_tokens": 100, "max_tokens": 2000}
    assert "have no site predicted to meet the 500 ms SLO for 100 prompt + 2000 output tokens" in r.err
    assert cli("route", "render", "--max-tokens", "0").rc == 2
    assert cli("route", "render", "--prompt-tokens", "x").rc == 2


def test_no_eligible_site_exits_4_with_every_reason(cli) -> None:
    r = cli("route", "test", "--from", "eu-de", "--model", M8, "--slo-ms", "0.5")
    assert r.rc == 4
    assert "0 eligible" in r.out and "error: no eligible site" in r.err
    assert r.out.count("over the 0.5 ms SLO") == 15


def test_unknown_region_and_jurisdiction(cli) -> None:
    r = cli("route", "test", "--from", "us-eats", "--model", M8)
    assert r.rc == 2 and "did you mean 'us-east'" in r.err
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


def test_body_and_slo_inputs_that_are_not_requests_are_usage_errors(cli, tmp_path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    zero = tmp_path / "zero.json"
    zero.write_text('{"model": "llama-3.1-8b-instruct", "max_tokens": 0, "messages": []}')
    words = tmp_path / "words.json"
    words.write_text('{"model": "llama-3.1-8b-instruct", "max_tokens": "lots", "messages": "hi"}')
    for args, said in (
        (["--body", str(zero)], "max_tokens: must be a whole number from 1 to 10,000,000 (got 0)"),
        (["--body", str(words)], "max_tokens: must be a whole number"),
        (["--body", str(fifo)], "not a regular file"),
        (["--body", "/dev/zero"], "not a regular file"),
        (["--body", str(deep)], "nested too deeply"),
        (["--model", "llama-3.1-8b-instruct", "--slo-ms", "nan"], "is not a finite number"),
        (["--model", "llama-3.1-8b-instruct", "--slo-ms", "inf"], "is not a finite number"),
    ):
        r = cli("route", "test", "--from", "us-phl", *args)
        assert r.rc == 2 and said in r.err and "Traceback" not in r.err, (args, r)


def test_render_dry_run_says_which_files_would_change_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "routing"
    r = run_cli("-i", str(EXAMPLE), "route", "render", "-f", "json", "--out", str(out), "--dry-run")
    assert r.rc == 0 and f"{out}/routing.json (new)" in r.out and "nothing written" in r.err, r
    assert not out.exists()
    assert run_cli("-i", str(EXAMPLE), "route", "render", "-f", "json", "--out", str(out)).rc == 0
    written = (out / "routing.json").read_text()
    r = run_cli("-i", str(EXAMPLE), "route", "render", "-f", "json", "--out", str(out), "--dry-run")
    assert r.rc == 0 and f"{out}/routing.json (unchanged)" in r.out, r
    assert (out / "routing.json").read_text() == written
