"""The daemon's snapshot builder and the parsers beside it, driven from plain data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.core.breaker import Breaker
from gridctl.core.metrics import parse_site_metrics
from gridctl.core.placement.decision import Request
from gridctl.core.placement.predict import Calibration, Shape
from gridctl.core.placement.signals import SiteSignals
from gridctl.core.placement.signals import write_signals as build_signals
from gridctl.core.sitestate import GridState, parse_calibration, site_health
from gridctl.daemon.config import DaemonConfig
from gridctl.daemon.relay import (
    _COMPLETION_TOKENS,
    _PROMPT_TOKENS,
    OutputCounter,
    completion_tokens,
    prompt_tokens,
)
from gridctl.inventory.load import load_inventory
from tests.conftest import EXAMPLE
from tests.daemon.upstream import CHUNKS

M8 = "llama-3.1-8b-instruct"
SPEECH = "parakeet-tdt-0.6b-v2"
SHORT = Shape(3, 8)


@pytest.fixture(scope="module")
def inv():  # type: ignore[no-untyped-def]
    return load_inventory(EXAMPLE)


def grid(inv) -> GridState:  # type: ignore[no-untyped-def]
    return GridState(inv, DaemonConfig(inventory=EXAMPLE))


def test_metrics_are_read_per_model() -> None:
    text = (
        "# HELP vllm:num_requests_running x\n"
        f'vllm:num_requests_running{{engine="0",model_name="{M8}"}} 7.0\n'
        f'vllm:num_requests_running{{model_name="{SPEECH}"}} 30\n'
        f'vllm:num_requests_waiting{{model_name="{M8}"}} 2\n'
        f'vllm:num_requests_waiting{{model_name="{SPEECH}"}} 0\n'
        f'vllm:gpu_cache_usage_perc{{model_name="{M8}"}} 0.42\n'
        "vllm:num_requests_waiting_by_reason 9\n"
    )
    load = parse_site_metrics(text)
    assert load.for_model(M8) == (7, 2) and load.for_model(SPEECH) == (30, 0)
    assert load.for_model("other") == (0, 0) and load.waiting_total == 2.0 and load.kv_usage == 0.42
    bare = parse_site_metrics("vllm:num_requests_running 3\nvllm:num_requests_waiting 1\n")
    assert bare.for_model(M8) == (3, 1)  # no model_name label: the site's one model
    assert parse_site_metrics("up 1\n").waiting_total is None


def test_output_tokens_are_counted_from_the_stream_or_taken_from_usage() -> None:
    counter = OutputCounter(sse=True)
    firsts = [counter.feed(c) for c in CHUNKS]
    assert counter.tokens() == 2 and firsts == [False, True, False, False, False]  # role, 2 tokens, final
    split = OutputCounter(sse=True)  # events cut anywhere between pieces
    joined = b"".join(CHUNKS)
    for i in range(0, len(joined), 7):
        split.feed(joined[i : i + 7])
    assert split.tokens() == 2
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":48}}\n\n'
    counter.feed(usage + b"data: [DONE]\n\n")
    assert counter.tokens() == 48  # the site's own count wins
    assert completion_tokens(b'{"usage": {"completion_tokens": 12, "total_tokens": 15}}') == 12
    assert completion_tokens(b'{"choices": []}') is None
    plain = OutputCounter(sse=False)
    plain.feed(b'{"choices":[],"usage":{"completion_')
    plain.feed(b'tokens":5}}')
    assert plain.tokens() == 5


_PIECES = [
    b'"completion_tokens"',
    b'"prompt_tokens"',
    b":",
    b" ",
    b"\\",
    b'"',
    b"7",
    b"1234567890",
    b"x",
    b",",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30))
def test_usage_tokens_searched_from_the_end_are_findalls_last(pieces: list[bytes]) -> None:
    """Searched back from the end for the key, the tokens are what findall's last match says."""
    body = b"".join(pieces)
    for find, pattern in ((completion_tokens, _COMPLETION_TOKENS), (prompt_tokens, _PROMPT_TOKENS)):
        found = pattern.findall(body)
        assert find(body) == (int(found[-1]) if found else None), body


def test_health_and_signals_from_plain_readings() -> None:
    assert site_health(None, None, "closed") == "ok"
    assert site_health(None, "degraded", "closed") == "degraded"  # the recorded verdict until a probe
    assert site_health(True, "failed", "closed") == "ok"
    assert site_health(True, None, "open") == "failed" and site_health(False, None, "closed") == "failed"
    cal = Calibration(0.6931, 0.0, 20, 100.0)
    sig = build_signals(
        SiteSignals(), health="ok", open=False, in_flight=3, running=5, waiting=1, calibration=cal, now=100.0
    )
    assert (sig.in_flight, sig.running, sig.waiting) == (3, 5, 1)
    assert sig.first_factor == pytest.approx(2.0, 1e-3) and sig.decode_factor == 1.0
    build_signals(sig, health="ok", open=False, in_flight=0, running=0, waiting=0, calibration=cal, now=700.0)
    assert sig.first_factor == pytest.approx(2**0.5, 1e-3)  # one half-life later


def test_in_flight_is_counted_per_model(inv) -> None:  # type: ignore[no-untyped-def]
    state = grid(inv)
    req = Request("us-east", M8)
    first = state.order(req, SHORT, None, None, 0.0).best
    assert first == "nwk-co-03"
    cap = next(m.capacity for m in state.sites[first].site.models if m.name == SPEECH)
    state.observe(first, SPEECH, in_flight=cap)  # its speech slots are full...
    assert state.order(req, SHORT, None, None, 0.0).best == first  # ...its LLM slots are not
    assert state.sites[first].in_flight == cap
    llm_cap = next(m.capacity for m in state.sites[first].site.models if m.name == M8)
    state.observe(first, M8, in_flight=llm_cap)
    assert first not in state.order(req, SHORT, None, None, 0.0).sites
    assert state.eligible_ignoring_load(req, SHORT, 0.0)


def test_the_snapshot_reads_breaker_load_calibration_and_prefix(inv) -> None:  # type: ignore[no-untyped-def]
    state = grid(inv)
    req = Request("us-east", M8)
    base = state.order(req, SHORT, None, None, 0.0)
    first, second = base.sites[:2]
    state.sites[first].breaker = Breaker(failures_to_open=1, cooldown_s=10.0)
    state.sites[first].breaker.on_failure(0.0)
    assert first not in state.order(req, SHORT, None, None, 5.0).sites  # open
    assert state.order(req, SHORT, None, None, 11.0).best == first  # half-open: one trial allowed
    state.sites[first].breaker.on_attempt(11.0)
    assert first not in state.order(req, SHORT, None, None, 11.0).sites  # ...and it is out
    state.sites[first].breaker.on_success()
    state.observe(first, M8, breaker_opened_at=20.0)
    assert first not in state.order(req, SHORT, None, None, 25.0).sites
    state.sites[first].breaker.on_success()
    state.observe(first, M8, probe_ok=False)
    live = state.live(M8, 0.0)
    assert live[first].health == "failed" and first not in state.order(req, SHORT, None, None, 0.0).sites
    state.observe(first, M8, probe_ok=True)
    state.observe(first, M8, calibration=Calibration(1.5, 1.5, 30, 0.0))  # e^1.5: 4.5x slower
    assert state.order(req, SHORT, None, None, 0.0).best == second
    state.refresh_factors(60_000.0)  # a long quiet spell: back to the table
    assert state.order(req, SHORT, None, None, 60_000.0).best == first
    long = Shape(4000, 8)
    prompt = "".join(chr(97 + i % 26) * 256 for i in range(62)) + "tail"
    state.prefixes.record(second, M8, state.prompt_chain(prompt[: 40 * 256]))  # an answered prompt
    assert state.cached_tokens(M8, state.prompt_chain(prompt)) == {second: 40 * 64}  # its 40 blocks
    state.prefixes.record(second, M8, state.prompt_chain(prompt))
    cached = state.cached_tokens(M8, state.prompt_chain(prompt))
    assert cached == {second: 62 * 64}  # 62 blocks of 256 characters, 4 characters a token
    assert state.cached_tokens(M8, state.prompt_chain("x" + prompt)) == {}  # another prefix: no block
    assert state.cached_tokens("llama-3.1-70b-instruct", state.prompt_chain(prompt)) == {}  # another model
    p_cold = state.predict(req, long, second, 0)
    p_hot = state.predict(req, long, second, cached[second])
    assert p_cold is not None and p_hot is not None and p_hot.prefill_ms < p_cold.prefill_ms / 3
    state.observe(first, M8, running=90, waiting=40)  # the site's own queue, from its /metrics
    ranking = state.order(req, SHORT, None, None, 60_000.0)
    assert ranking.sites.index(first) > 0


def test_calibration_round_trips_and_decays_from_the_restart(inv) -> None:  # type: ignore[no-untyped-def]
    state = grid(inv)
    state.observe("nwk-co-03", M8, calibration=Calibration(0.6931, 0.6931, 30, 10.0))
    data = state.calibration_dict(10.0)
    assert set(data) == {"nwk-co-03"} and data["nwk-co-03"][M8]["samples"] == 30
    entry = {**data["nwk-co-03"][M8], "written_at": 1_000.0}
    back = parse_calibration({"nwk-co-03": {M8: entry}}, 500.0)
    assert back["nwk-co-03"][M8].factors(500.0)[0] == pytest.approx(2.0, 1e-3)
    assert back["nwk-co-03"][M8].factors(1_100.0)[0] == pytest.approx(2**0.5, 1e-3)  # decays from then
    assert parse_calibration({"x": {M8: {"first_factor": -1}}, "y": "junk"}, 0.0) == {}
    restarted = GridState(inv, DaemonConfig(inventory=EXAMPLE), calibration=back)
    assert restarted.live(M8, 500.0)["nwk-co-03"].first_factor == pytest.approx(2.0, 1e-3)
    reloaded = GridState(inv, DaemonConfig(inventory=EXAMPLE), previous=restarted)
    assert reloaded.sites["nwk-co-03"].cal(M8).samples == 30


def test_a_hostile_calibration_file_is_no_evidence_never_a_hang(tmp_path) -> None:
    import os

    from gridctl.inventory.state import calibration_path, load_calibration

    path = calibration_path(tmp_path)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    assert load_calibration(tmp_path) == {}  # a FIFO: not read (it would block)
    path.unlink()
    path.symlink_to("/dev/zero")
    assert load_calibration(tmp_path) == {}  # a device: not read (it never ends)
    path.unlink()
    path.write_text('{"sites": {"a": {"m": {"first_factor": 1e300, "samples": 1e400}}}}')
    from gridctl.core.sitestate import parse_calibration

    [[cal]] = [list(m.values()) for m in parse_calibration(load_calibration(tmp_path), 0.0).values()]
    assert cal.factors(0.0)[0] == pytest.approx(10.0)  # clamped


@settings(max_examples=60, deadline=None)
@given(
    load=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300)), min_size=1),
    factors=st.tuples(st.floats(-2, 2), st.floats(-2, 2)),
    failed=st.booleans(),
    opened=st.booleans(),
    cached=st.integers(0, 5000),
    now=st.floats(0, 1e5),
)
def test_a_prediction_is_the_planners_over_the_whole_live_snapshot(  # type: ignore[no-untyped-def]
    inv, load, factors, failed, opened, cached, now
) -> None:
    """The prediction reads the site's own signals without refreshing every site's health:
    the same as the planner's over the full snapshot, whatever the health and breakers."""
    state = grid(inv)
    req = Request("us-east", M8)
    names = [n for n, _ in state._by_model[M8]]
    for name, (in_flight, running, waiting) in zip(names, load, strict=False):
        state.observe(name, M8, in_flight=in_flight, running=running, waiting=waiting, probe_ok=not failed)
        state.observe(name, M8, calibration=Calibration(factors[0], factors[1], 30, now))
        if opened:
            state.observe(name, M8, breaker_opened_at=now)
    shape = Shape(2000, 64)
    for name in [*names, "no-such-site"]:
        whole = state.planner.predict(req, shape, name, state.live(M8, now), cached)
        assert state.predict(req, shape, name, cached) == whole
