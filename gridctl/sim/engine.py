"""The event loop: requests through the policy to the sites, in simulated time. Pure.

Events are arrivals (the workload, already sorted by time) and completions (a
``heapq`` of ``(time, request, pool)``; a completion at the same instant as an
arrival frees its slot first). Time is simulated seconds; nothing reads a clock
and nothing is random here: the same workload and policy give the same outcome.

Each site serves each of its models with a *pool*: ``capacity`` slots (the
inventory's model capacity) and a FIFO queue holding at most ``queue_per_slot x
capacity`` waiting requests; a request arriving at a full queue is refused
(rejected, ``full``). A request the policy has no site for is rejected
(``no site``). Every request is either completed or rejected.

When a request takes a slot (on arrival, or later from the queue), its timing
is fixed, as the lab's sites do it (:mod:`gridctl.placement.perf`; ``running``
counts it)::

    cached   = prefix-cache hit (the shared prefix, or the session's previous turn), < prompt
    first    = ttft_ms(gpu, prompt, cached, running, capacity) x model factor
    interval = token_interval_ms(gpu, running, capacity) x model factor
    service  = first + interval x (output - 1)

and the client sees ``TTFT = rtt + wait + first`` and ``end to end = rtt + wait +
service``, where ``rtt`` is the round trip from its region to the site (the
placement latency model) and ``wait`` its time in the queue. The site sees the
request when it is placed (the one-way delay is not modelled in the queue).

The prefix cache of a pool is an LRU of shared prefixes and sessions, holding
at most the site's KV tokens (GPU row x GPU count).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Protocol

from gridctl.placement.perf import model_factor, token_interval_ms, ttft_ms
from gridctl.sim.sites import SimulatedSite
from gridctl.sim.traffic import Workload

SERVED, NO_SITE, FULL = 0, 1, 2


class Policy(Protocol):
    name: str

    def choose(self, region: int, model: int, i: int) -> int:
        """The site index for request ``i``, from ``region`` for ``model``; -1 for none."""
        ...


@dataclass
class Outcome:
    """What happened to each request, and to each site."""

    policy: str
    site: list[int]  # per request: the site that served it, -1 when rejected
    status: bytearray  # per request: SERVED, NO_SITE or FULL
    ttft_ms: list[float]  # per request, as the client sees it; nan when rejected
    e2e_ms: list[float]  # per request, end to end as the client sees it; nan when rejected
    done_s: list[float]  # per request: when the site finished it; nan when rejected
    cached: list[int]  # per request: prompt tokens found in the prefix cache
    busy_s: list[float]  # per site: slot-seconds of service
    served: list[int]  # per site: requests served
    peak_queue: list[int]  # per site: most requests waiting at once (any model)
    span_s: float  # from 0 to the last completion (at least the workload's duration)


@dataclass(frozen=True)
class Pools:
    """A pool per (site, model served): slots, queue bound, timing inputs, round trips."""

    of: list[list[int]]  # [site][model] -> pool, -1 when the site does not serve the model
    site: list[int]
    model: list[int]
    capacity: list[int]
    queue_limit: list[int]
    rtt: list[list[float]]  # [region][pool] -> ms


def build_pools(
    sites: Sequence[SimulatedSite],
    models: Sequence[str],
    rtt_ms: Sequence[Sequence[float]],
    queue_per_slot: float,
) -> Pools:
    """``rtt_ms[region][site]`` -> the pools of every site for every model it serves."""
    of = [[-1] * len(models) for _ in sites]
    site_l: list[int] = []
    model_l: list[int] = []
    cap_l: list[int] = []
    qlim_l: list[int] = []
    for s, site in enumerate(sites):
        for m, model in enumerate(models):
            cap = site.capacity.get(model, 0)
            if cap <= 0:
                continue
            of[s][m] = len(site_l)
            site_l.append(s)
            model_l.append(m)
            cap_l.append(cap)
            qlim_l.append(int(queue_per_slot * cap))
    rtt = [[row[s] for s in site_l] for row in rtt_ms]
    return Pools(of, site_l, model_l, cap_l, qlim_l, rtt)


def simulate(
    w: Workload,
    sites: Sequence[SimulatedSite],
    pools: Pools,
    policy: Policy,
    in_flight: Sequence[MutableMapping[str, int]],
) -> Outcome:
    """Run the workload through ``policy``. ``in_flight[m]`` (site name -> requests in flight for
    model m) is kept current for load-aware policies; it must start empty or at zero."""
    n = len(w)
    T, R, M = w.t, w.region, w.model
    P, OUT, PF, PT, S, H = w.prompt, w.output, w.prefix, w.prefix_tokens, w.session, w.history
    nan = math.nan
    site_of = [-1] * n
    status = bytearray(n)
    ttft_l = [nan] * n
    e2e_l = [nan] * n
    done_l = [nan] * n
    cached_l = [0] * n

    npools = len(pools.site)
    pool_of, cap, qlim, rtt = pools.of, pools.capacity, pools.queue_limit, pools.rtt
    psite = pools.site
    gpu = [sites[s].gpu for s in psite]
    factor = [model_factor(w.models[m]) for m in pools.model]
    kvcap = [sites[s].kv_tokens for s in psite]
    running = [0] * npools
    queues: list[deque[int]] = [deque() for _ in range(npools)]
    caches: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(npools)]
    used = [0] * npools
    busy = [0.0] * npools
    served = [0] * len(sites)
    peak = [0] * npools
    names = [sites[s].name for s in psite]
    live = [in_flight[m] for m in pools.model]
    for p in range(npools):
        live[p][names[p]] = 0
    heap: list[tuple[float, int, int]] = []
    choose = policy.choose
    first_fn, interval_fn = ttft_ms, token_interval_ms
    last_done = 0.0

    def admit(j: int, p: int, now: float) -> None:
        r = running[p] + 1
        running[p] = r
        c = cap[p]
        cache = caches[p]
        got = 0
        pf = PF[j]
        if pf >= 0:
            key = pf << 1
            have = cache.get(key)
            want = PT[j]
            if have is None:
                cache[key] = want
                used[p] += want
            else:
                cache.move_to_end(key)
                got = want if want < have else have
                if want > have:
                    cache[key] = want
                    used[p] += want - have
        ss = S[j]
        if ss >= 0:
            key = (ss << 1) | 1
            have = cache.pop(key, None)
            if have is not None:
                used[p] -= have
                h = H[j]
                if h > got and have >= h:
                    got = h
            keep = P[j] + OUT[j]
            cache[key] = keep
            used[p] += keep
        if used[p] > kvcap[p]:
            u, limit = used[p], kvcap[p]
            while u > limit and cache:
                u -= cache.popitem(last=False)[1]
            used[p] = u
        prompt = P[j]
        if got >= prompt:
            got = prompt - 1
        cached_l[j] = got
        f = factor[p]
        first = first_fn(gpu[p], prompt, got, r, c) * f
        service = first + interval_fn(gpu[p], r, c) * f * (OUT[j] - 1)
        base = rtt[R[j]][p] + (now - T[j]) * 1000.0
        ttft_l[j] = base + first
        e2e_l[j] = base + service
        busy[p] += service
        end = now + service / 1000.0
        done_l[j] = end
        heappush(heap, (end, j, p))

    for i in range(n):
        t = T[i]
        while heap and heap[0][0] <= t:
            done, j, p = heappop(heap)
            running[p] -= 1
            lv = live[p]
            lv[names[p]] -= 1
            q = queues[p]
            if q:
                admit(q.popleft(), p, done)
        s = choose(R[i], M[i], i)
        if s < 0:
            status[i] = NO_SITE
            continue
        p = pool_of[s][M[i]]
        if running[p] < cap[p]:
            admit(i, p, t)
        else:
            q = queues[p]
            if len(q) >= qlim[p]:
                status[i] = FULL
                continue
            q.append(i)
            if len(q) > peak[p]:
                peak[p] = len(q)
        site_of[i] = s
        served[s] += 1
        lv = live[p]
        lv[names[p]] += 1
    while heap:
        done, j, p = heappop(heap)
        last_done = done
        running[p] -= 1
        live[p][names[p]] -= 1
        q = queues[p]
        if q:
            admit(q.popleft(), p, done)
    busy_site = [0.0] * len(sites)
    peak_site = [0] * len(sites)
    for p in range(npools):
        busy_site[psite[p]] += busy[p] / 1000.0
        peak_site[psite[p]] = max(peak_site[psite[p]], peak[p])
    return Outcome(
        policy=policy.name,
        site=site_of,
        status=status,
        ttft_ms=ttft_l,
        e2e_ms=e2e_l,
        done_s=done_l,
        cached=cached_l,
        busy_s=busy_site,
        served=served,
        peak_queue=peak_site,
        span_s=max(w.duration_s, last_done),
    )
