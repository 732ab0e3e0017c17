"""Figures per policy from an :class:`Outcome`, and the time series of the plot. Pure.

- SLO attainment: requests completed end to end within the SLO / all requests
  (a rejected request misses it).
- Percentiles (p50, p90, p99) are nearest-rank over the completed requests; the
  rejected ones are counted apart (``rejected``), never as fast answers.
- Throughput: prompt + output tokens of completed requests / the run's span
  (from 0 to the last completion); ``output_tok_s`` counts output tokens only;
  ``goodput_tok_s`` only the tokens of requests within the SLO.
- Cost: every site that served at least one request is paid for all its GPUs
  over the whole span: ``sum(gpus x cost_per_gpu_hour) x span / 3600``; per
  million tokens: that / (tokens / 1e6). Sites a policy never uses cost it
  nothing (they could be sold or switched off); a site used once costs its
  whole run.
- Utilisation of a site: slot-seconds of service / (slots x span), over the
  models simulated.
- Prediction (``grid`` only: the decision's predicted end to end at send, for the
  chosen site): the relative error ``|predicted - observed| / observed`` (p50, p90;
  the prediction assumes the request's ``max_tokens``, so it is high for shorter
  answers by design), and the share of completed requests predicted within the
  SLO's budget (SLO less the margin) that missed the SLO.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import Any

from gridctl.core.placement.decision import SLO_MARGIN
from gridctl.sim.engine import FULL, NO_SITE, Outcome
from gridctl.sim.sites import SimulatedSite
from gridctl.sim.traffic import Workload

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    n = len(sorted_values)
    if n == 0:
        return None
    k = max(1, math.ceil(p / 100.0 * n))
    return sorted_values[k - 1]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _pcts(values: list[float]) -> dict[str, float | None]:
    values.sort()
    return {f"p{p}": _ms(percentile(values, p)) for p in PERCENTILES}


def window_test(windows: Sequence[tuple[float, float]]) -> Callable[[float], bool]:
    """``t -> whether t falls in one of the (sorted, disjoint) windows``, by bisection."""
    starts = [a for a, _ in windows]
    ends = [b for _, b in windows]

    def inside(t: float) -> bool:
        k = bisect_right(starts, t) - 1
        return k >= 0 and t < ends[k]

    return inside


def summarize(w: Workload, sites: Sequence[SimulatedSite], out: Outcome) -> dict[str, Any]:
    """The figures of one policy's run, as plain data (the JSON shape of ``gridctl sim``)."""
    n = len(w)
    done = [i for i in range(n) if out.site[i] >= 0]
    within = [i for i in done if out.e2e_ms[i] <= w.slo_ms]
    return {
        "policy": out.policy,
        "requests": n,
        "completed": len(done),
        "rejected": n - len(done),
        "rejected_no_site": out.status.count(NO_SITE),
        "rejected_full": out.status.count(FULL),
        **_latency(w, out, done, within),
        **_throughput(w, out, done, within),
        "cost": _cost(w, sites, out, done),
        "sites": _site_rows(w, sites, out),
        "prediction": _prediction(out, done, w.slo_ms),
    }


def _latency(w: Workload, out: Outcome, done: list[int], within: list[int]) -> dict[str, Any]:
    """SLO attainment, end-to-end and TTFT percentiles, and the p99 in and outside bursts (by
    arrival)."""
    n = len(w)
    e2e, ttft = out.e2e_ms, out.ttft_ms
    windows = w.bursts
    burst: list[float] = []
    calm: list[float] = []
    if windows:
        arrived_in = bytearray(n)  # arrivals are sorted: each window is a range of requests
        for a, b in windows:
            lo, hi = bisect_left(w.t, a), bisect_left(w.t, b)
            arrived_in[lo:hi] = b"\x01" * (hi - lo)
        burst = [e2e[i] for i in done if arrived_in[i]]
        calm = [e2e[i] for i in done if not arrived_in[i]]
    return {
        "slo_ms": w.slo_ms,
        "slo_attainment": round(len(within) / n, 4) if n else None,
        "e2e_ms": _pcts([e2e[i] for i in done]),
        "ttft_ms": _pcts([ttft[i] for i in done]),
        "e2e_p99_in_bursts_ms": _ms(percentile(sorted(burst), 99)) if windows else None,
        "e2e_p99_outside_bursts_ms": _ms(percentile(sorted(calm), 99)) if windows else None,
    }


def _throughput(w: Workload, out: Outcome, done: list[int], within: list[int]) -> dict[str, Any]:
    """Tokens per second over the run's span (and over the bursts, by completion), goodput (the
    requests within the SLO), the prefix cache's hit rate."""
    P, OUT = w.prompt, w.output
    tokens = sum(P[i] + OUT[i] for i in done)
    out_tokens = sum(OUT[i] for i in done)
    good_tokens = sum(P[i] + OUT[i] for i in within)
    prompt_tokens = sum(P[i] for i in done)
    cached = sum(out.cached[i] for i in done)
    span = out.span_s
    burst_tokens = 0
    if w.bursts:
        inside, D = window_test(w.bursts), out.done_s
        burst_tokens = sum(P[i] + OUT[i] for i in done if inside(D[i]))
    burst_time = sum(b - a for a, b in w.bursts)
    return {
        "throughput_tok_s": round(tokens / span, 1) if span > 0 else 0.0,
        "throughput_in_bursts_tok_s": round(burst_tokens / burst_time, 1) if burst_time > 0 else None,
        "output_tok_s": round(out_tokens / span, 1) if span > 0 else 0.0,
        "goodput_tok_s": round(good_tokens / span, 1) if span > 0 else 0.0,
        "prefix_hit_rate": round(cached / prompt_tokens, 4) if prompt_tokens else 0.0,
        "span_s": round(span, 3),
    }


def _cost(w: Workload, sites: Sequence[SimulatedSite], out: Outcome, done: list[int]) -> dict[str, Any]:
    """What the sites used cost over the span (whole sites, paid while the run lasts), and what
    their busy slot-time alone would (each site's price shared by its slots)."""
    tokens = sum(w.prompt[i] + w.output[i] for i in done)
    span = out.span_s
    used = [s for s, k in enumerate(out.served) if k > 0]
    gpu_hours = sum(sites[s].gpu_count for s in used) * span / 3600.0
    cost = sum(sites[s].cost_per_hour for s in used) * span / 3600.0
    busy_cost = 0.0
    for s, site in enumerate(sites):
        slots = sum(site.capacity.get(m, 0) for m in w.models)
        if slots:
            busy_cost += out.busy_s[s] / slots * site.cost_per_hour / 3600.0
    return {
        "usd": round(cost, 4),
        "gpu_hours": round(gpu_hours, 4),
        "per_million_tokens": round(cost / tokens * 1e6, 4) if tokens else None,
        "sites_used": len(used),
        "busy_usd": round(busy_cost, 4),
        "busy_per_million_tokens": round(busy_cost / tokens * 1e6, 4) if tokens else None,
    }


def _site_rows(w: Workload, sites: Sequence[SimulatedSite], out: Outcome) -> list[dict[str, Any]]:
    """One row per site serving any of the run's models."""
    n, span = len(w), out.span_s
    rows = []
    for s, site in enumerate(sites):
        slots = sum(site.capacity.get(m, 0) for m in w.models)
        if slots == 0:
            continue
        rows.append(
            {
                "site": site.name,
                "requests": out.served[s],
                "share": round(out.served[s] / n, 4) if n else 0.0,
                "utilization": round(out.busy_s[s] / (slots * span), 4) if span > 0 else 0.0,
                "peak_queue": out.peak_queue[s],
                "gpus": f"{site.gpu_count}x {site.gpu.name}",
                "usd_per_hour": round(site.cost_per_hour, 4),
            }
        )
    return rows


def _prediction(out: Outcome, done: list[int], slo: float) -> dict[str, Any] | None:
    pred, e2e = out.predicted_ms, out.e2e_ms
    if not pred:
        return None
    known = [i for i in done if pred[i] == pred[i]]
    if not known:
        return None
    errors = sorted(abs(pred[i] - e2e[i]) / e2e[i] for i in known if e2e[i] > 0)
    budget = slo * (1.0 - SLO_MARGIN)
    feasible = [i for i in known if pred[i] <= budget]
    missed = sum(1 for i in feasible if e2e[i] > slo)
    return {
        "abs_error_p50": _ms(percentile(errors, 50)),
        "abs_error_p90": _ms(percentile(errors, 90)),
        "predicted_feasible": len(feasible),
        "feasible_missed_share": round(missed / len(feasible), 4) if feasible else None,
    }


def time_series(w: Workload, out: Outcome, buckets: int = 120) -> dict[str, Any]:
    """p99 end to end (of the requests arriving in each bucket, completed ones) and rejections."""
    width = w.duration_s / buckets if w.duration_s > 0 else 1.0
    vals: list[list[float]] = [[] for _ in range(buckets)]
    rejected = [0] * buckets
    counts = [0] * buckets
    T, e2e, site_of = w.t, out.e2e_ms, out.site
    last = buckets - 1
    for i in range(len(w)):
        b = int(T[i] / width)
        b = b if b < last else last
        counts[b] += 1
        if site_of[i] >= 0:
            vals[b].append(e2e[i])
        else:
            rejected[b] += 1
    p99 = []
    for v in vals:
        v.sort()
        p99.append(_ms(percentile(v, 99)))
    return {
        "policy": out.policy,
        "bucket_s": round(width, 6),
        "p99_e2e_ms": p99,
        "rejected": rejected,
        "requests": counts,
    }
