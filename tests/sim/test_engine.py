"""The event loop on hand-made workloads: timing as the lab's, queueing, caching, conservation."""

from __future__ import annotations

import math

import pytest

from gridctl.placement.perf import gpu_perf, token_interval_ms, ttft_ms
from gridctl.sim.engine import FULL, NO_SITE, SERVED, build_pools, simulate
from gridctl.sim.policy import FixedPolicy
from gridctl.sim.sites import SimulatedSite
from gridctl.sim.traffic import Workload

H100 = gpu_perf("H100")


def site(
    name: str = "a", capacity: int = 4, kv: int = 1_000_000, cost: float = 2.0, gpus: int = 2
) -> SimulatedSite:
    return SimulatedSite(name, "edge", "US", H100, gpus, cost, {"m": capacity}, kv)


def workload(
    *reqs: tuple[float, int, int], prefix: int = -1, ptoks: int = 0, duration: float = 10.0
) -> Workload:
    """Requests (t, prompt, output), one region, one model."""
    w = Workload(("r",), ("m",), duration, 500.0)
    for t, prompt, out in reqs:
        w.t.append(t)
        w.region.append(0)
        w.model.append(0)
        w.prompt.append(prompt)
        w.output.append(out)
        w.prefix.append(prefix)
        w.prefix_tokens.append(ptoks)
        w.session.append(-1)
        w.history.append(0)
    return w


def run(w: Workload, sites: list[SimulatedSite], choice: int = 0, rtt: float = 3.0, queue: float = 1.0):  # type: ignore[no-untyped-def]
    pools = build_pools(sites, w.models, [[rtt] * len(sites)], queue)
    in_flight: list[dict[str, int]] = [{}]
    out = simulate(w, sites, pools, FixedPolicy("fixed", [[choice]]), in_flight)
    return out, in_flight


def test_one_request_is_timed_by_the_labs_formulas() -> None:
    out, _ = run(workload((1.0, 500, 20)), [site(capacity=4)])
    first = ttft_ms(H100, 500, 0, 1, 4)
    interval = token_interval_ms(H100, 1, 4)
    assert out.status[0] == SERVED and out.site[0] == 0
    assert out.ttft_ms[0] == pytest.approx(3.0 + first)
    assert out.e2e_ms[0] == pytest.approx(3.0 + first + 19 * interval)
    assert out.done_s[0] == pytest.approx(1.0 + (first + 19 * interval) / 1000)
    assert out.busy_s[0] == pytest.approx((first + 19 * interval) / 1000)
    assert out.span_s == 10.0


def test_load_slows_requests_admitted_while_others_run() -> None:
    out, _ = run(workload((0.0, 100, 50), (0.001, 100, 50)), [site(capacity=2)])
    assert out.e2e_ms[1] > out.e2e_ms[0]  # admitted with 2 of 2 slots busy


def test_a_shared_prefix_is_found_in_the_cache_the_second_time() -> None:
    out, _ = run(workload((0.0, 600, 10), (5.0, 600, 10), prefix=3, ptoks=400), [site()])
    assert out.cached == [0, 400]
    assert out.ttft_ms[1] < out.ttft_ms[0]


def test_cache_is_bounded_by_the_sites_kv_tokens() -> None:
    w = workload((0.0, 600, 10), (1.0, 600, 10), (2.0, 600, 10), prefix=0, ptoks=400)
    w.prefix[1] = 1  # another prefix evicts the first: KV holds one prefix only
    out, _ = run(w, [site(kv=500)])
    assert out.cached == [0, 0, 0]


def test_full_site_queues_in_order_then_refuses() -> None:
    w = workload((0.0, 100, 40), (0.0, 100, 40), (0.0, 100, 40))
    out, in_flight = run(w, [site(capacity=1)], queue=1.0)
    assert list(out.status) == [SERVED, SERVED, FULL]
    assert out.site == [0, 0, -1] and math.isnan(out.e2e_ms[2])
    assert out.done_s[1] > out.done_s[0]
    wait_ms = out.done_s[0] * 1000
    assert out.ttft_ms[1] == pytest.approx(3.0 + wait_ms + ttft_ms(H100, 100, 0, 1, 1))
    assert out.peak_queue == [1]
    assert in_flight == [{"a": 0}]


def test_no_site_is_a_rejection() -> None:
    out, _ = run(workload((0.0, 100, 10), (1.0, 100, 10)), [site()], choice=-1)
    assert list(out.status) == [NO_SITE, NO_SITE] and out.site == [-1, -1]
    assert out.served == [0] and out.busy_s == [0.0]


def test_span_runs_to_the_last_completion() -> None:
    out, _ = run(workload((9.99, 100, 48), duration=10.0), [site()])
    assert out.span_s == pytest.approx(out.done_s[0]) and out.span_s > 10.0


def test_conservation_under_overload() -> None:
    reqs = [(i * 0.001, 200 + i % 50, 10 + i % 30) for i in range(3000)]
    out, in_flight = run(workload(*reqs), [site(capacity=8)], queue=2.0)
    served = [i for i in range(3000) if out.status[i] == SERVED]
    full = [i for i in range(3000) if out.status[i] == FULL]
    assert len(served) + len(full) == 3000 and full
    assert all(out.site[i] == 0 and math.isfinite(out.e2e_ms[i]) for i in served)
    assert all(out.site[i] == -1 and math.isnan(out.e2e_ms[i]) for i in full)
    assert out.served == [len(served)] and out.peak_queue == [16]
    assert in_flight == [{"a": 0}]
