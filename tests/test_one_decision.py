"""One decision, no mirror: the daemon and the simulator, each through its own snapshot builder,
choose the same sites from the same live state (issue 11).

The daemon's side is its real ``GridState``, written by its own writers (the request path's
in-flight count, the probe's verdict, the breaker, the sites' /metrics through its parser;
calibration is set, having no writer but an answer) and its prefix index fed real prompt text;
the simulator's is its ``SiteView`` snapshot and its ``SentIndex`` of what it sent where (prefix
ids, not text). Both end in ``Planner.order``; what this checks is that nothing between the
state and that call differs.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridctl.core.placement.decision import Request
from gridctl.core.placement.engine import Planner
from gridctl.core.placement.predict import Calibration, Shape
from gridctl.core.placement.prefix import SentIndex
from gridctl.core.sitestate import GridState
from gridctl.daemon.config import DaemonConfig
from gridctl.inventory.load import load_inventory
from gridctl.sim.policy import SiteView, build_signals, index_capacity
from gridctl.sim.traffic import prompt_chain
from tests.conftest import EXAMPLE

M8 = "llama-3.1-8b-instruct"
REGION = "us-east"
NOW = 1000.0
BLOCK_CHARS = 256  # the daemon's default prefix block: 64 tokens at 4 characters a token
BLOCK_TOKENS = 64

INV = load_inventory(EXAMPLE)
SITES = [s.name for s in INV.sites if s.serves(M8) and s.jurisdiction == "US"]


@st.composite
def site_states(draw):
    states = {}
    for name in SITES:
        cap = next(m.capacity for m in INV.site(name).models if m.name == M8)  # type: ignore[union-attr]
        states[name] = {
            "in_flight": draw(st.integers(0, cap)),
            "running": draw(st.integers(0, cap + 5)),
            "waiting": draw(st.integers(0, 10)),
            "probe_ok": draw(st.sampled_from([True, True, True, False])),
            "breaker_open": draw(st.sampled_from([False, False, False, True])),
            "log_first": draw(st.floats(-0.7, 0.7)),
            "log_decode": draw(st.floats(-0.7, 0.7)),
            "age_s": draw(st.floats(0, 1200)),
            "holds_prefix": draw(st.booleans()),
        }
    blocks = draw(st.integers(1, 8))
    new_chars = draw(st.integers(4, 2000))
    max_tokens = draw(st.integers(1, 96))
    slo = draw(st.sampled_from([None, 300.0, 800.0, 2000.0]))
    return states, blocks, new_chars, max_tokens, slo


def daemon_order(states, blocks, prompt: str, shape: Shape, slo):
    """The daemon's state written by its own writers: the request path's in-flight count, the
    probe's verdict, the breaker's failures, the sites' /metrics through its parser, the prefix
    index fed the prompt's text. Calibration has no writer but an answer, so it is set."""
    from gridctl.core.metrics import parse_site_metrics

    gs = GridState(INV, DaemonConfig(inventory=EXAMPLE))
    for name, s in states.items():
        st = gs.sites[name]
        sig = st.signals[M8]
        for _ in range(s["in_flight"]):  # as Proxy._forward does before it sends
            sig.in_flight += 1
        st.set_load(  # as the probe loop does with the site's /metrics
            parse_site_metrics(
                f'vllm:num_requests_running{{model_name="{M8}"}} {s["running"]}\n'
                f'vllm:num_requests_waiting{{model_name="{M8}"}} {s["waiting"]}\n'
            )
        )
        st.probe_ok = s["probe_ok"]  # as _probe sets it
        if s["breaker_open"]:  # as failed attempts do
            for _ in range(gs.cfg.breaker_failures):
                st.breaker.on_failure(NOW)
        cal = Calibration(s["log_first"], s["log_decode"], 10, NOW - s["age_s"])
        gs.observe(name, M8, calibration=cal)
        if s["holds_prefix"]:
            gs.prefixes.record(name, M8, gs.prompt_chain(prompt[: blocks * BLOCK_CHARS]))  # as an answer does
    gs.refresh_factors(NOW)  # as the probe loop does each round
    req = Request(REGION, M8, None, slo)
    return gs.order(req, shape, gs.cached_tokens(M8, gs.prompt_chain(prompt)), None, NOW)


def sim_order(states, blocks, shape: Shape, slo):
    planner = Planner(INV)
    views = {
        name: SiteView(
            in_flight=s["in_flight"],
            running=s["running"],
            waiting=s["waiting"],
            health=None if s["probe_ok"] else "failed",
            open=s["breaker_open"],
            calibration=Calibration(s["log_first"], s["log_decode"], 10, NOW - s["age_s"]),
        )
        for name, s in states.items()
    }
    sent = SentIndex(index_capacity(planner))  # as GridPolicy keeps it
    chain = prompt_chain(0, blocks * BLOCK_TOKENS, -1, blocks * BLOCK_TOKENS)
    for name, s in states.items():
        if s["holds_prefix"]:
            sent.record(name, M8, chain)
    cached = sent.cached(M8, chain, list(views))
    return planner.order(Request(REGION, M8, None, slo), shape, build_signals(views, NOW), cached)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site_states())
def test_the_daemon_and_the_simulator_choose_the_same_sites(drawn) -> None:
    states, blocks, new_chars, max_tokens, slo = drawn
    prefix = "".join(chr(97 + (i * 7) % 26) for i in range(blocks * BLOCK_CHARS))
    prompt = prefix + "#" * new_chars
    shape = Shape(math.ceil(len(prompt) / 4), max_tokens, "max_tokens")
    daemon = daemon_order(states, blocks, prompt, shape, slo)
    sim = sim_order(states, blocks, shape, slo)
    assert daemon.sites == sim.sites
    assert daemon.feasible == sim.feasible
    assert daemon.predicted_ms == pytest.approx(sim.predicted_ms)


def test_the_property_sees_both_kinds_of_outcome() -> None:
    """The strategy reaches states where the sites differ (not only one trivial answer)."""
    idle = {
        n: {
            "in_flight": 0,
            "running": 0,
            "waiting": 0,
            "probe_ok": True,
            "breaker_open": False,
            "log_first": 0.0,
            "log_decode": 0.0,
            "age_s": 0.0,
            "holds_prefix": False,
        }
        for n in SITES
    }
    shape = Shape(300, 48, "max_tokens")
    calm = sim_order(idle, 1, shape, None)
    busy = dict(idle)
    busy[calm.sites[0]] = {**idle[calm.sites[0]], "probe_ok": False}
    moved = sim_order(busy, 1, shape, None)
    assert calm.sites[0] != moved.sites[0]
    prompt = "a" * 1200
    assert daemon_order(busy, 1, prompt, Shape(300, 48, "max_tokens"), None).sites == moved.sites
