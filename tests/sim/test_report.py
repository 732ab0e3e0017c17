"""Figures per policy: percentiles, SLO attainment, throughput and both costs, by hand."""

from __future__ import annotations

import math

import pytest

from gridctl.core.placement.perf import gpu_perf
from gridctl.sim.engine import FULL, NO_SITE, SERVED, Outcome
from gridctl.sim.report import percentile, summarize, time_series
from gridctl.sim.sites import SimulatedSite
from gridctl.sim.traffic import Workload


@pytest.mark.parametrize(
    ("values", "p", "want"),
    [([], 99, None), ([5.0], 50, 5.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.0), ([1.0, 2.0, 3.0, 4.0], 99, 4.0),
     (list(map(float, range(1, 101))), 90, 90.0), (list(map(float, range(1, 101))), 99, 99.0)],
)  # fmt: skip
def test_percentile_is_nearest_rank(values: list[float], p: float, want: float | None) -> None:
    assert percentile(values, p) == want


def test_summary_counts_costs_and_utilisation() -> None:
    sites = [
        SimulatedSite("a", "edge", "US", gpu_perf("H100"), 2, 3.0, {"m": 10}, 1000),
        SimulatedSite("b", "cloud", "US", gpu_perf("H100"), 4, 5.0, {"m": 20}, 1000),
        SimulatedSite("c", "edge", "US", gpu_perf("L4"), 1, 1.0, {"m": 5}, 1000),
    ]
    w = Workload(("r",), ("m",), 100.0, 500.0, bursts=((10.0, 20.0),))
    for t in (1.0, 12.0, 15.0, 50.0):
        for col, v in zip((w.t, w.region, w.model, w.prompt, w.output), (t, 0, 0, 90, 10), strict=True):
            col.append(v)  # type: ignore[attr-defined]
        for col in (w.prefix, w.session):
            col.append(-1)
        for col in (w.prefix_tokens, w.history):
            col.append(0)
    out = Outcome(
        policy="p",
        site=[0, 1, -1, -1],
        status=bytearray([SERVED, SERVED, NO_SITE, FULL]),
        ttft_ms=[50.0, 80.0, math.nan, math.nan],
        e2e_ms=[300.0, 700.0, math.nan, math.nan],
        done_s=[1.3, 12.7, math.nan, math.nan],
        cached=[40, 0, 0, 0],
        busy_s=[0.3, 0.7, 0.0],
        served=[1, 1, 0],
        peak_queue=[0, 2, 0],
        span_s=200.0,
    )
    r = summarize(w, sites, out)
    assert (r["requests"], r["completed"], r["rejected"]) == (4, 2, 2)
    assert (r["rejected_no_site"], r["rejected_full"]) == (1, 1)
    assert r["slo_attainment"] == 0.25  # one of four within 500 ms
    assert r["e2e_ms"] == {"p50": 300.0, "p90": 700.0, "p99": 700.0}
    assert r["e2e_p99_in_bursts_ms"] == 700.0 and r["e2e_p99_outside_bursts_ms"] == 300.0
    assert r["throughput_tok_s"] == 1.0 and r["output_tok_s"] == 0.1  # 200 tokens / 200 s
    assert r["goodput_tok_s"] == 0.5 and r["throughput_in_bursts_tok_s"] == 10.0  # 100 tokens / 10 s
    assert r["prefix_hit_rate"] == round(40 / 180, 4)
    # sites a and b served: (2 x 3 + 4 x 5) $/h over 200 s; c served nothing and costs nothing
    assert r["cost"]["usd"] == round(26 * 200 / 3600, 4) and r["cost"]["sites_used"] == 2
    assert r["cost"]["gpu_hours"] == round(6 * 200 / 3600, 4)
    assert r["cost"]["per_million_tokens"] == round(26 * 200 / 3600 / 200 * 1e6, 4)
    busy = (0.3 / 10 * 6 + 0.7 / 20 * 20) / 3600
    assert r["cost"]["busy_usd"] == round(busy, 4)
    assert [s["utilization"] for s in r["sites"]] == [round(0.3 / 2000, 4), round(0.7 / 4000, 4), 0.0]
    ts = time_series(w, out, buckets=4)
    assert ts["requests"] == [3, 0, 1, 0] and ts["rejected"] == [1, 0, 1, 0]
    assert ts["p99_e2e_ms"] == [700.0, None, None, None] and ts["bucket_s"] == 25.0
