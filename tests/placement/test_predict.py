"""The latency predictor, how a site serves a model, and calibration: table-driven, by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.core.inventory.model import GpuRow, Gpus, Grid, Inventory, Location, ModelServing, Node, Site
from gridctl.core.placement.perf import (
    DEFAULT_GPU,
    TP_EXPONENT,
    build_serving,
    find_gpu,
    gpu_perf,
    gpu_warnings,
)
from gridctl.core.placement.predict import (
    DEFAULT_OUTPUT_TOKENS,
    PRIOR,
    Calibration,
    OutputTokens,
    Shape,
    calibrate,
    capacity_within,
    estimate_shape,
    predict,
)


def site(
    gpus: list[tuple[str, int]], models: list[ModelServing], cost: float = 2.0, name: str = "s1"
) -> Site:
    nodes = tuple(
        Node(f"n{i}", name, "127.0.0.1", 22, None, None, Gpus(model, count))
        for i, (model, count) in enumerate(gpus)
    )
    return Site(
        name=name,
        kind="edge",
        region="r",
        jurisdiction="US",
        location=Location(40, -74),
        endpoint="http://127.0.0.1:1",
        cost_per_gpu_hour=cost,
        models=tuple(models),
        nodes=nodes,
    )


H100_TP1 = build_serving(site([("H100", 1)], [ModelServing("llama-8b", 10, 1)]), "llama-8b")


# (case, shape, rtt, load, waiting, cached, (first factor, decode factor)) -> (e2e, queue, prefill, decode)
# by hand from the H100 row (TTFT 25 ms, prefill 25,000 tok/s, decode 150 tok/s), 10 slots:
CASES = [
    # idle: frac 1/10; first (25 + 40) x 1.1 = 71.5; 20 x 6.667 x 1.1 = 146.667
    ("idle", Shape(1000, 21), 5.0, 0, 0, 0, (1.0, 1.0), (223.1667, 0.0, 71.5, 146.6667)),
    # 600 of the 1000 prompt tokens cached: first (25 + 16) x 1.1 = 45.1
    ("cached", Shape(1000, 21), 5.0, 0, 0, 600, (1.0, 1.0), (196.7667, 0.0, 45.1, 146.6667)),
    # full and 4 waiting: frac 1; first 130, decode 266.667; 5 ahead x 396.667 / 10 slots
    ("queued", Shape(1000, 21), 5.0, 10, 4, 0, (1.0, 1.0), (600.0, 198.3333, 130.0, 266.6667)),
    # half loaded (4 + itself of 10), calibrated twice as slow to first token, 1.5x per token
    ("calibrated", Shape(1000, 21), 5.0, 4, 0, 0, (2.0, 1.5), (5 + 195 + 300, 0.0, 195.0, 300.0)),
    # one output token: no decode step after the first; an embedding neither
    ("one token", Shape(1000, 1), 5.0, 0, 0, 0, (1.0, 1.0), (76.5, 0.0, 71.5, 0.0)),
    ("embedding", Shape(1000, 0), 5.0, 0, 0, 0, (1.0, 1.0), (76.5, 0.0, 71.5, 0.0)),
]


@pytest.mark.parametrize(("case", "shape", "rtt", "load", "waiting", "cached", "cal", "want"), CASES)
def test_predict_by_hand(case, shape, rtt, load, waiting, cached, cal, want) -> None:
    assert H100_TP1 is not None
    p = predict(H100_TP1, shape, rtt, load, waiting, cached, *cal)
    e2e, queue, prefill, decode = want
    assert p.e2e_ms == pytest.approx(e2e, abs=1e-3), case
    assert (p.queue_ms, p.prefill_ms, p.decode_ms) == pytest.approx((queue, prefill, decode), abs=1e-3)
    assert p.ttft_ms == pytest.approx(rtt + queue + prefill)


def test_serving_defaults_to_one_replica_per_node_over_all_its_gpus() -> None:
    s = site([("L4", 2), ("L4", 2)], [ModelServing("llama-3.1-8b-instruct", 16)])
    sv = build_serving(s, "llama-3.1-8b-instruct")
    assert sv is not None
    assert (sv.gpu.name, sv.gpus, sv.tensor_parallel, sv.replicas) == ("L4", 4, 2, 2)
    assert sv.factor == pytest.approx(1 / 2**TP_EXPONENT)
    assert sv.replica_slots() == [8, 8] and sv.kv_tokens == 4 * gpu_perf("L4").kv_tokens


def test_tensor_parallel_one_gives_a_replica_per_gpu_and_size_slows() -> None:
    s = site([("H100", 8)], [ModelServing("llama-8b", 20, 1), ModelServing("llama-3.1-70b-instruct", 6, 4)])
    small, big = build_serving(s, "llama-8b"), build_serving(s, "llama-3.1-70b-instruct")
    assert small is not None and big is not None
    assert (small.replicas, small.factor, small.replica_slots()) == (8, 1.0, [3, 3, 3, 3, 2, 2, 2, 2])
    assert big.replicas == 2 and big.factor == pytest.approx(math.sqrt(70 / 8) / 4**TP_EXPONENT)
    assert build_serving(s, "not-served") is None


def test_a_mixed_site_serves_each_model_on_its_named_gpu() -> None:
    s = site(
        [("L40S", 4), ("RTX PRO 6000", 4)],
        [ModelServing("llama-8b", 32, 1, "L40S"), ModelServing("asr", 64, 1)],
    )
    assert build_serving(s, "llama-8b").gpu.name == "L40S"  # type: ignore[union-attr]
    # without models[].gpu: the most numerous GPU model (a tie: the name that sorts last)
    assert build_serving(s, "asr").gpu.name == "RTX PRO 6000"  # type: ignore[union-attr]


def test_inventory_rows_add_and_override_the_table() -> None:
    b200 = GpuRow("B200", 15, 45_000, 260, 1_500_000)
    slow_h100 = GpuRow("H100", 50, 10_000, 50, 100_000)
    assert find_gpu("NVIDIA B200", ()) is None and gpu_perf("NVIDIA B200") == DEFAULT_GPU
    assert find_gpu("NVIDIA B200", (b200,)) == b200
    assert find_gpu("NVIDIA H100 80GB HBM3", (slow_h100,)) == slow_h100
    s = site([("B200", 8)], [ModelServing("llama-8b", 64, 1)])
    assert build_serving(s, "llama-8b", (b200,)).gpu == b200  # type: ignore[union-attr]


def test_a_gpu_in_no_row_is_a_warning_naming_the_default() -> None:
    s = site([("MI300X", 8)], [ModelServing("llama-8b", 64, 1)])
    inv = Inventory(Path("."), Grid("g"), (s,))
    [warning] = gpu_warnings(inv)
    assert "MI300X" in warning and "default row" in warning and "gpus:" in warning
    rows = (GpuRow("MI300X", 30, 20_000, 140, 1_200_000),)
    assert gpu_warnings(Inventory(Path("."), Grid("g", gpus=rows), (s,))) == []


def test_capacity_within_the_slo() -> None:
    assert H100_TP1 is not None
    shape = Shape(1000, 21)
    # idle e2e 223 ms; full (frac 1) 5 + 130 + 266.7 = 401.7 ms: every slot fits 450 ms
    assert capacity_within(H100_TP1, shape, 5.0, 450.0) == 10
    assert capacity_within(H100_TP1, shape, 5.0, 200.0) == 0
    half = capacity_within(H100_TP1, shape, 5.0, 300.0)
    assert 0 < half < 10
    assert predict(H100_TP1, shape, 5.0, half - 1).e2e_ms <= 300 < predict(H100_TP1, shape, 5.0, half).e2e_ms


# -- calibration ---------------------------------------------------------------------------


def run_slow_site(factor: float, answers: int, streamed: bool) -> Calibration:
    """A site ``factor`` times slower than its row answers ``answers`` requests."""
    assert H100_TP1 is not None
    cal, now = PRIOR, 0.0
    shape = Shape(1000, 21)
    for _ in range(answers):
        first, decode = cal.factors(now)
        sent = predict(H100_TP1, shape, 5.0, 0, 0, 0, first, decode)
        true_first = sent.first_raw_ms * factor
        true_e2e = sent.rtt_ms + true_first + sent.interval_raw_ms * factor * 20
        ttft = sent.rtt_ms + true_first if streamed else None
        cal = calibrate(cal, sent, now, ttft, true_e2e, 21)
        now += 0.1
    return cal


@pytest.mark.parametrize("streamed", [True, False])
def test_calibration_converges_on_a_site_twice_as_slow(streamed: bool) -> None:
    few = run_slow_site(2.0, 15, streamed).factors(1.5)
    assert few[0] == pytest.approx(2.0, rel=0.1) and few[1] == pytest.approx(2.0, rel=0.1)
    cal = run_slow_site(2.0, 40, streamed)
    first, decode = cal.factors(4.0)
    assert first == pytest.approx(2.0, rel=0.01) and decode == pytest.approx(2.0, rel=0.01)
    assert cal.samples == 40


def test_calibration_decays_toward_the_prior_without_evidence() -> None:
    cal = run_slow_site(2.0, 60, True)
    at = cal.at
    assert at is not None
    now = cal.factors(at)[0]
    later = cal.factors(at + 600)[0]  # one half-life
    much_later = cal.factors(at + 6000)[0]
    assert now == pytest.approx(2.0, rel=0.01)
    assert later == pytest.approx(math.sqrt(now), rel=1e-6)
    assert 1.0 < much_later < 1.01


def test_calibration_ratios_are_clamped() -> None:
    assert H100_TP1 is not None
    sent = predict(H100_TP1, Shape(100, 10), 5.0)
    cal = calibrate(PRIOR, sent, 0.0, 1e9, 2e9, 10, alpha=1.0)
    assert cal.factors(0.0) == pytest.approx((10.0, 10.0))


def test_calibration_round_trips_through_state() -> None:
    cal = run_slow_site(1.5, 30, True)
    assert cal.at is not None
    saved = cal.to_dict(cal.at + 60)
    back = Calibration.from_dict(saved, 1000.0)
    assert back.factors(1000.0) == pytest.approx(cal.factors(cal.at + 60), rel=1e-3)
    assert back.factors(1600.0)[0] == pytest.approx(math.sqrt(back.factors(1000.0)[0]), rel=1e-3)
    assert back.samples == 30
    assert Calibration.from_dict({"first_factor": -1, "decode_factor": "x"}, 0.0) == PRIOR


# -- the request's shape --------------------------------------------------------------------


def test_shape_from_the_body() -> None:
    text = "x" * 400  # 100 tokens at 4 characters each
    assert estimate_shape({"max_tokens": 48}, text) == Shape(100, 48, "max_tokens")
    assert estimate_shape({"max_completion_tokens": 7, "max_tokens": 48}, text).output_tokens == 7
    assert estimate_shape({}, text) == Shape(100, DEFAULT_OUTPUT_TOKENS, "default")
    assert estimate_shape({"max_tokens": "48"}, text).output_source == "default"  # not a number
    assert estimate_shape({"max_tokens": True}, text).output_source == "default"
    assert estimate_shape({"max_tokens": float("nan")}, text).output_source == "default"
    assert estimate_shape({}, text, fallback=(33, "observed")) == Shape(100, 33, "observed")
    assert estimate_shape({"max_tokens": 5}, text, embedding=True).output_tokens == 0


def test_output_tokens_quantile_of_what_a_model_answered() -> None:
    seen = OutputTokens(window=100)
    assert seen.estimate("m") == (DEFAULT_OUTPUT_TOKENS, "default")
    for n in range(1, 101):
        seen.record("m", n)
    assert seen.estimate("m") == (91, "observed")
    for _ in range(100):
        seen.record("m", 5)  # the window forgets the old answers
    assert seen.estimate("m") == (5, "observed")
    assert seen.estimate("other")[1] == "default"


# -- hostile or odd inputs (review of issue 11) -------------------------------------------


def test_sizes_beyond_any_context_are_bounded_not_errors() -> None:
    from gridctl.core.placement.predict import MAX_TOKENS

    assert estimate_shape({"max_tokens": 10**400}, "x").output_tokens == MAX_TOKENS
    assert estimate_shape({"max_tokens": 1e300}, "x").output_tokens == MAX_TOKENS
    assert estimate_shape({"max_tokens": -5}, "x").output_source == "default"


def test_a_prompt_of_token_ids_counts_one_token_each() -> None:
    assert estimate_shape({"prompt": list(range(4000)), "max_tokens": 1}, "").prompt_tokens == 4000
    assert estimate_shape({"prompt": [[1, 2, 3], [4, 5]]}, "").prompt_tokens == 5
    assert estimate_shape({"input": [True, False]}, "").prompt_tokens == 1  # booleans are not ids


def test_an_answer_without_a_decode_step_moves_only_the_first_token_factor() -> None:
    assert H100_TP1 is not None
    sent = predict(H100_TP1, Shape(4000, 1), 5.0)
    cal = calibrate(PRIOR, sent, 0.0, None, 5 + sent.first_raw_ms * 3, 1, alpha=1.0)
    first, decode = cal.factors(0.0)
    assert first == pytest.approx(3.0) and decode == 1.0


def test_saved_calibration_is_clamped_aged_by_downtime_and_never_fatal() -> None:
    wild = Calibration.from_dict({"first_factor": 1e300, "decode_factor": 1e-300, "samples": 5}, 0.0)
    assert wild.factors(0.0) == pytest.approx((10.0, 0.1))
    assert Calibration.from_dict({"first_factor": 2, "samples": 1e400}, 0.0).samples == 10**12
    week = Calibration.from_dict({"first_factor": 2.0, "decode_factor": 2.0, "samples": 9}, 0.0, 7 * 86400)
    assert week.factors(0.0)[0] == pytest.approx(1.0, abs=1e-6)  # a week of downtime: the prior


def test_a_tensor_parallel_that_leaves_gpus_idle_is_a_warning() -> None:
    s = site([("H100", 4)], [ModelServing("llama-8b", 16, 3)])
    [warning] = gpu_warnings(Inventory(Path("."), Grid("g"), (s,)))
    assert (
        "models[0].tensor_parallel: 3 does not divide the 4 H100 GPUs" in warning and "1 stay idle" in warning
    )
    even = site([("H100", 4)], [ModelServing("llama-8b", 16, 2)])
    assert gpu_warnings(Inventory(Path("."), Grid("g"), (even,))) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(min_value=-3, max_value=50)), max_size=80),
    st.integers(min_value=1, max_value=12),
)
def test_output_tokens_matches_the_quantile_of_its_window(records, window) -> None:
    """The sorted copy of the window stays the window: the estimate is the quantile of the
    last ``window`` positive answers of each model, computed from scratch."""
    seen = OutputTokens(window=window)
    for model, n in records:
        seen.record(model, n)
    for model in "ab":
        last = [n for m, n in records if m == model and n > 0][-window:]
        if not last:
            assert seen.estimate(model) == (DEFAULT_OUTPUT_TOKENS, "default")
            continue
        ordered = sorted(last)
        assert seen.estimate(model) == (ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "observed")
