"""The event loop on hand-made workloads: timing as the lab's, replicas, queueing, caching, conservation."""

from __future__ import annotations

import math
import random

import pytest

from gridctl.core.placement.perf import Serving, gpu_perf, token_interval_ms, ttft_ms
from gridctl.core.placement.signals import SiteSignals
from gridctl.sim.engine import FULL, NO_SITE, SERVED, Outcome, build_pools, simulate
from gridctl.sim.policy import FixedPolicy
from gridctl.sim.sites import SimulatedSite
from gridctl.sim.traffic import Workload

H100 = gpu_perf("H100")


def site(
    name: str = "a",
    capacity: int = 4,
    kv: int = 1_000_000,
    cost: float = 2.0,
    gpus: int = 2,
    replicas: int = 1,
    speed: float = 1.0,
) -> SimulatedSite:
    serving = Serving(name, "m", H100, gpus, 1, replicas, capacity, 1.0, kv)
    return SimulatedSite(name, "edge", "US", H100, gpus, cost, {"m": capacity}, kv, {"m": serving}, speed)


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


def run(
    w: Workload,
    sites: list[SimulatedSite],
    choice: int = 0,
    rtt: float = 3.0,
    queue: float = 1.0,
    rnd: random.Random | None = None,
) -> tuple[Outcome, list[dict[str, SiteSignals]]]:
    pools = build_pools(sites, w.models, [[rtt] * len(sites)], queue)
    signals = [{s.name: SiteSignals() for s in sites}]
    out = simulate(w, sites, pools, FixedPolicy("fixed", [[choice]]), signals, rnd)
    return out, signals


def idle(signals: list[dict[str, SiteSignals]]) -> bool:
    return all(s.in_flight == s.running == s.waiting == 0 for m in signals for s in m.values())


def test_one_request_is_timed_by_the_labs_formulas() -> None:
    out, signals = run(workload((1.0, 500, 20)), [site(capacity=4)])
    first = ttft_ms(H100, 500, 0, 1, 4)
    interval = token_interval_ms(H100, 1, 4)
    assert out.status[0] == SERVED and out.site[0] == 0
    assert out.ttft_ms[0] == pytest.approx(3.0 + first)
    assert out.e2e_ms[0] == pytest.approx(3.0 + first + 19 * interval)
    assert out.done_s[0] == pytest.approx(1.0 + (first + 19 * interval) / 1000)
    assert out.busy_s[0] == pytest.approx((first + 19 * interval) / 1000)
    assert out.span_s == 10.0 and idle(signals)


def test_the_hidden_speed_multiplies_the_true_time_and_noise_is_seeded() -> None:
    w = workload((1.0, 500, 20))
    base, _ = run(w, [site()])
    slow, _ = run(w, [site(speed=1.3)])
    assert slow.e2e_ms[0] - 3.0 == pytest.approx((base.e2e_ms[0] - 3.0) * 1.3)
    a, _ = run(w, [site()], rnd=random.Random(7))
    b, _ = run(w, [site()], rnd=random.Random(7))
    c, _ = run(w, [site()], rnd=random.Random(8))
    assert a.e2e_ms == b.e2e_ms and a.e2e_ms != c.e2e_ms
    assert 0.8 < (a.e2e_ms[0] - 3.0) / (base.e2e_ms[0] - 3.0) < 1.25  # 5% sigma: within 4.5 sigma


def test_a_multi_gpu_site_serves_as_replicas_each_with_its_own_batch() -> None:
    reqs = [(0.0, 100, 30)] * 4
    pooled, _ = run(workload(*reqs), [site(capacity=4, replicas=1)])
    spread, _ = run(workload(*reqs), [site(capacity=4, replicas=4)])
    for k in range(4):  # one 4-slot batch: the k-th request runs with k+1 of 4 slots busy
        assert pooled.ttft_ms[k] == pytest.approx(3.0 + ttft_ms(H100, 100, 0, k + 1, 4))
        # four 1-slot replicas: each request alone on its replica, which is then full
        assert spread.ttft_ms[k] == pytest.approx(3.0 + ttft_ms(H100, 100, 0, 1, 1))
        assert spread.e2e_ms[k] == pytest.approx(
            3.0 + ttft_ms(H100, 100, 0, 1, 1) + 29 * token_interval_ms(H100, 1, 1)
        )
    assert pooled.e2e_ms[0] < spread.e2e_ms[0] and pooled.e2e_ms[3] == pytest.approx(spread.e2e_ms[3])


def test_the_balancer_sends_each_request_to_the_least_loaded_replica() -> None:
    # 2 replicas x 2 slots: the second request goes to the empty replica (1 of 2 busy there),
    # the third to either (both at 1): 2 of 2 busy
    out, _ = run(workload((0.0, 100, 30), (0.0, 100, 30), (0.0, 100, 30)), [site(capacity=4, replicas=2)])
    assert out.ttft_ms[0] == pytest.approx(3.0 + ttft_ms(H100, 100, 0, 1, 2))
    assert out.ttft_ms[1] == pytest.approx(3.0 + ttft_ms(H100, 100, 0, 1, 2))
    assert out.ttft_ms[2] == pytest.approx(3.0 + ttft_ms(H100, 100, 0, 2, 2))


def test_the_site_queue_feeds_whichever_replica_frees_a_slot_first() -> None:
    # 2 replicas x 1 slot; a long and a short request, then one that waits for the short one's replica
    out, _ = run(workload((0.0, 100, 200), (0.0, 100, 5), (0.0, 100, 5)), [site(capacity=2, replicas=2)])
    assert list(out.status) == [SERVED] * 3
    short_done = out.done_s[1]
    assert out.done_s[0] > out.done_s[2] > short_done
    assert out.ttft_ms[2] == pytest.approx(3.0 + short_done * 1000 + ttft_ms(H100, 100, 0, 1, 1))


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
    out, signals = run(w, [site(capacity=1)], queue=1.0)
    assert list(out.status) == [SERVED, SERVED, FULL]
    assert out.site == [0, 0, -1] and math.isnan(out.e2e_ms[2])
    assert out.done_s[1] > out.done_s[0]
    wait_ms = out.done_s[0] * 1000
    assert out.ttft_ms[1] == pytest.approx(3.0 + wait_ms + ttft_ms(H100, 100, 0, 1, 1))
    assert out.peak_queue == [1] and idle(signals)


class Recorder(FixedPolicy):
    """Always site 0; records what the snapshot said at each decision, and each completion."""

    def __init__(self, signals: list[dict[str, SiteSignals]]) -> None:
        super().__init__("recorder", [[0]])
        self.signals = signals
        self.seen: list[tuple[int, int, int]] = []
        self.completed: list[tuple[int, float, float, float]] = []

    def choose(self, region: int, model: int, i: int) -> int:
        s = self.signals[0]["a"]
        self.seen.append((s.in_flight, s.running, s.waiting))
        return 0

    def complete(self, i: int, site: int, now: float, ttft_ms: float, e2e_ms: float) -> None:
        self.completed.append((i, now, ttft_ms, e2e_ms))


def test_the_snapshot_follows_the_site_and_completions_come_when_they_happen() -> None:
    sites = [site(capacity=2)]
    w = workload(*[(0.0, 100, 40)] * 5, (5.0, 100, 4))
    pools = build_pools(sites, w.models, [[3.0]], 1.0)
    signals = [{"a": SiteSignals()}]
    rec = Recorder(signals)
    out = simulate(w, sites, pools, rec, signals)
    # before each decision: (in flight, running, waiting); the 5th is refused (a queue of 1 x 2 slots)
    assert rec.seen == [(0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 2, 2), (0, 0, 0)]
    assert list(out.status) == [SERVED, SERVED, SERVED, SERVED, FULL, SERVED]
    assert sorted(c[0] for c in rec.completed) == [0, 1, 2, 3, 5]
    for i, now, ttft, e2e in rec.completed:
        assert now == out.done_s[i] and ttft == out.ttft_ms[i] and e2e == out.e2e_ms[i]
    assert [c[1] for c in rec.completed] == sorted(c[1] for c in rec.completed)  # in time order
    assert idle(signals)


def test_no_site_is_a_rejection() -> None:
    out, _ = run(workload((0.0, 100, 10), (1.0, 100, 10)), [site()], choice=-1)
    assert list(out.status) == [NO_SITE, NO_SITE] and out.site == [-1, -1]
    assert out.served == [0] and out.busy_s == [0.0]


def test_span_runs_to_the_last_completion() -> None:
    out, _ = run(workload((9.99, 100, 48), duration=10.0), [site()])
    assert out.span_s == pytest.approx(out.done_s[0]) and out.span_s > 10.0


def test_conservation_under_overload() -> None:
    reqs = [(i * 0.001, 200 + i % 50, 10 + i % 30) for i in range(3000)]
    out, signals = run(workload(*reqs), [site(capacity=8, replicas=4)], queue=2.0, rnd=random.Random(1))
    served = [i for i in range(3000) if out.status[i] == SERVED]
    full = [i for i in range(3000) if out.status[i] == FULL]
    assert len(served) + len(full) == 3000 and full
    assert all(out.site[i] == 0 and math.isfinite(out.e2e_ms[i]) for i in served)
    assert all(out.site[i] == -1 and math.isnan(out.e2e_ms[i]) for i in full)
    assert out.served == [len(served)] and out.peak_queue == [16]
    assert idle(signals)
