"""Trace files: JSON Lines in, a workload out; every bad line located as file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridctl.core.errors import ExitCode, UsageError
from gridctl.sim.trace import TraceError, load_trace, parse_trace

REGIONS = {"us-east": None, "eu-de": None}  # grid.yaml order


def lines(*objs: dict[str, object]) -> list[str]:
    return [json.dumps(o) + "\n" for o in objs]


def test_a_trace_becomes_a_sorted_workload_with_sessions_and_prefixes() -> None:
    w = parse_trace(
        lines(
            {
                "t": 2.0,
                "region": "eu-de",
                "prompt_tokens": 700,
                "output_tokens": 30,
                "session": "c1",
                "prefix": "agent",
                "prefix_tokens": 400,
            },
            {
                "t": 0.5,
                "region": "us-east",
                "model": "other",
                "prompt_tokens": 100,
                "output_tokens": 5,
                "id": 7,
            },
            {
                "t": 1.0,
                "region": "eu-de",
                "prompt_tokens": 500,
                "output_tokens": 20,
                "session": "c1",
                "prefix": "agent",
                "prefix_tokens": 400,
                "x_note": "first turn",
            },
        ),
        "t.jsonl",
        REGIONS,
        "m",
        500.0,
    )
    assert w.t == [0.5, 1.0, 2.0]
    assert w.regions == ("us-east", "eu-de") and w.models == ("m", "other")
    assert w.model == [1, 0, 0] and w.region == [0, 1, 1]
    assert w.prefix == [-1, 0, 0] and w.prefix_tokens == [0, 400, 400]
    assert w.session == [-1, 0, 0] and w.history == [0, 0, 520]  # the first turn's prompt + output
    assert w.duration_s == pytest.approx(2.001) and w.slo_ms == 500.0


def test_duration_cuts_the_trace() -> None:
    w = parse_trace(
        lines(*({"t": t, "region": "us-east", "prompt_tokens": 9, "output_tokens": 9} for t in (0, 1, 2, 3))),
        "t.jsonl",
        REGIONS,
        "m",
        500.0,
        duration_s=2.0,
    )
    assert w.t == [0.0, 1.0] and w.duration_s == 2.0


def test_every_bad_line_is_reported_with_its_line_number() -> None:
    text = [
        '{"t": 0, "region": "us-east", "prompt_tokens": 10, "output_tokens": 5}\n',
        "\n",
        '{"t": 1, "region": "us-esat", "prompt_tokens": 10, "output_tokens": 5}\n',
        '{"t": -1, "region": "us-east", "prompt_tokens": 0, "output_tokens": 5, "prompt": 3}\n',
        "not json\n",
        '{"t": 2, "region": "us-east", "prompt_tokens": 10, "output_tokens": 5, "prefix": "p"}\n',
        '{"t": 2, "region": "us-east", "prompt_tokens": 10, "output_tokens": 5, "prefix": "p", '
        '"prefix_tokens": 11}\n',
        "[1, 2]\n",
    ]
    with pytest.raises(TraceError) as err:
        parse_trace(text, "bad.jsonl", REGIONS, "m", 500.0)
    problems = err.value.problems
    assert (
        problems[0]
        == "bad.jsonl:3: region: no client region named 'us-esat' in grid.yaml; did you mean 'us-east'?"
    )
    assert "bad.jsonl:4: t: must be seconds from 0 to 3.16224e+07 (got -1)" in problems
    assert "bad.jsonl:4: prompt_tokens: must be an integer >= 1 (got 0)" in problems
    assert "bad.jsonl:4: prompt: unknown key; did you mean 'prompt_tokens'?" in problems
    assert any(p.startswith("bad.jsonl:5: not JSON") for p in problems)
    assert "bad.jsonl:6: prefix: 'prefix' and 'prefix_tokens' go together" in problems
    assert "bad.jsonl:7: prefix_tokens: must not exceed prompt_tokens (11 > 10)" in problems
    assert "bad.jsonl:8: must be a JSON object, one request per line" in problems
    assert err.value.message == problems[0] and err.value.hint and "more problems" in err.value.hint
    assert err.value.exit_code == ExitCode.USAGE


def test_an_empty_trace_and_a_missing_file_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no requests"):
        parse_trace(["\n"], "empty.jsonl", REGIONS, "m", 500.0)
    with pytest.raises(UsageError, match="no such file"):
        load_trace(tmp_path / "nope.jsonl", REGIONS, "m", 500.0, None)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_trace(tmp_path / "bin.jsonl", REGIONS, "m", 500.0, None)


def test_a_traces_max_tokens_is_what_placement_predicts_with() -> None:
    w = parse_trace(
        lines(
            {"t": 1.0, "region": "us-east", "prompt_tokens": 10, "output_tokens": 20, "max_tokens": 48},
            {"t": 0.0, "region": "us-east", "prompt_tokens": 10, "output_tokens": 20},
        ),
        "t.jsonl",
        REGIONS,
        "m",
        500.0,
    )
    assert w.max_tokens == [0, 48]  # sorted by time with the other columns; 0: not asked
    plain = parse_trace(
        lines({"t": 0.0, "region": "us-east", "prompt_tokens": 10, "output_tokens": 20}),
        "t.jsonl",
        REGIONS,
        "m",
        500.0,
    )
    assert plain.max_tokens is None
    with pytest.raises(TraceError) as err:
        parse_trace(
            lines({"t": 0, "region": "us-east", "prompt_tokens": 1, "output_tokens": 9, "max_tokens": 4}),
            "t.jsonl",
            REGIONS,
            "m",
            500.0,
        )
    assert "t.jsonl:1: output_tokens: more than the max_tokens asked (9 > 4)" in str(err.value)


def test_the_grid_policy_predicts_with_a_traces_max_tokens() -> None:
    from gridctl.inventory.load import load_inventory
    from gridctl.sim.compare import SimOptions, plan_run, run_plan
    from tests.conftest import EXAMPLE

    inv = load_inventory(EXAMPLE)
    rows = [
        {"t": i * 0.05, "region": "us-east", "prompt_tokens": 300, "output_tokens": 20, "max_tokens": 48}
        for i in range(40)
    ]
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.writelines(lines(*rows))
    plan = plan_run(inv, {}, SimOptions(trace=Path(fh.name), policies=("grid",), sites="all"))
    result, _ = run_plan(plan)
    grid = next(p for p in result["policies"] if p["policy"] == "grid")
    # 48 tokens asked: only the H100 sites are predicted within 500 ms, so nothing goes elsewhere
    assert grid["prediction"]["predicted_feasible"] == 40
    used = [s for s in grid["sites"] if s["requests"]]
    assert used and all(s["gpus"].endswith("H100") for s in used), used


def test_a_time_past_a_year_is_a_unit_mistake() -> None:
    with pytest.raises(TraceError) as err:
        parse_trace(
            lines({"t": 1e308, "region": "us-east", "prompt_tokens": 1, "output_tokens": 1}),
            "t.jsonl",
            REGIONS,
            "m",
            500.0,
        )
    assert "t.jsonl:1: t: must be seconds from 0 to" in str(err.value)
