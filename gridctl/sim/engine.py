"""The event loop: requests through the policy to the sites' replicas, in simulated time. Pure.

Events are arrivals (the workload, already sorted by time) and completions (a
``heapq`` of ``(time, request, pool, replica)``; a completion at the same
instant as an arrival frees its slot first). Time is simulated seconds; nothing
reads a clock, and the only randomness is the ``random.Random`` passed in (the
per-request noise): the same workload, policy and seed give the same outcome.

Each site serves each of its models with a *pool*: its replicas
(:class:`~gridctl.core.placement.perf.Serving`: ``replicas`` engines, the model's
``capacity`` slots shared out by ``replica_slots()``), each with its own batch,
behind a least-loaded balancer: a request goes to the replica with the fewest
running requests (ties: the first). When every replica is full, the site's
FIFO queue holds at most ``queue_per_slot x capacity`` waiting requests and
feeds whichever replica frees a slot first; a request arriving at a full queue
is refused (rejected, ``full``). A request the policy has no site for is
rejected (``no site``). Every request is either completed or rejected.

When a request takes a slot its *true* timing is fixed, as the lab's sites do
it (:mod:`gridctl.core.placement.perf`; ``running`` and ``slots`` are its replica's,
``running`` counting it)::

    cached   = prefix-cache hit (the shared prefix, or the session's previous turn), < prompt
               (placement.prefix.reusable_tokens)
    k        = serving.factor x site.speed x noise(rnd)   (speed: the hidden per-site factor,
                                                           noise: log-normal, one draw per request;
                                                           both from gridctl.lab.truth, as the lab's)
    first    = ttft_ms(gpu, prompt, cached, running, slots) x k
    interval = token_interval_ms(gpu, running, slots) x k
    service  = first + interval x (output - 1)

and the client sees ``TTFT = rtt + wait + first`` and ``end to end = rtt + wait +
service``, from the moment it sent the request, where ``rtt`` is the round
trip from its region to the site (the placement latency model) and ``wait``
its time in the queue. The site sees the request when it is placed.

The prefix cache of a pool is a :class:`~gridctl.core.placement.prefix.PrefixCache` of the
requests' :func:`~gridctl.sim.traffic.prompt_chain` (a shared prefix, a session's
conversation), holding at most the KV tokens of the GPUs serving the model (shared by
its replicas); an admitted request's prompt and answer stay cached.

Live signals: ``signals[m][site]`` (a :class:`~gridctl.core.placement.signals.SiteSignals`
per model and site, as the daemon keeps them) is updated in place: ``in_flight``
when a request is sent and when it completes, ``running`` and ``waiting`` (the
site's own counts, as its /metrics would give them) at every change. A policy
with a ``complete(i, site, now, ttft_ms, e2e_ms)`` method hears of each
completion when it happens (never before), with what the client observed.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Protocol

from gridctl.core.placement.perf import GpuPerf, token_interval_ms, ttft_ms
from gridctl.core.placement.prefix import PrefixCache, reusable_tokens
from gridctl.core.placement.signals import SiteSignals
from gridctl.lab.truth import noise
from gridctl.sim.sites import SimulatedSite
from gridctl.sim.traffic import Workload, prompt_chain

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
    predicted_ms: list[float] = field(default_factory=list)  # per request, the policy's e2e prediction


@dataclass(frozen=True)
class Pools:
    """A pool per (site, model served): replicas and their slots, queue bound, round trips."""

    of: list[list[int]]  # [site][model] -> pool, -1 when the site does not serve the model
    site: list[int]
    model: list[int]
    capacity: list[int]
    queue_limit: list[int]
    rtt: list[list[float]]  # [region][pool] -> ms
    slots: list[list[int]] = field(default_factory=list)  # [pool][replica] -> slots


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
    slots_l: list[list[int]] = []
    for s, site in enumerate(sites):
        for m, model in enumerate(models):
            sv = site.serving_of(model)
            if sv is None or sv.capacity <= 0:
                continue
            of[s][m] = len(site_l)
            site_l.append(s)
            model_l.append(m)
            cap_l.append(sv.capacity)
            qlim_l.append(int(queue_per_slot * sv.capacity))
            slots_l.append(sv.replica_slots())
    rtt = [[row[s] for s in site_l] for row in rtt_ms]
    return Pools(of, site_l, model_l, cap_l, qlim_l, rtt, slots_l)


def simulate(
    w: Workload,
    sites: Sequence[SimulatedSite],
    pools: Pools,
    policy: Policy,
    signals: Sequence[Mapping[str, SiteSignals]] = (),
    rnd: random.Random | None = None,
) -> Outcome:
    """Run the workload through ``policy``. ``signals[m]`` (site name -> SiteSignals for model m,
    optional) is kept current as the module docstring says; ``rnd``: the per-request noise
    (None: none)."""
    run = _start_run(w, sites, pools, signals)
    admit = _admitter(run, w, pools.rtt, rnd)
    finish = _finisher(run, admit, pools.site, getattr(policy, "complete", None))
    last_done = _replay(w, run, pools, policy.choose, admit, finish)
    return _outcome(w, run, pools.site, len(sites), policy, last_done)


@dataclass
class _Run:
    """One run's state: per request what happened, per pool its replicas, queue, cache and counters,
    and the completions to come."""

    # per request
    site: list[int]
    status: bytearray
    ttft: list[float]
    e2e: list[float]
    done: list[float]
    cached: list[int]
    # per pool
    gpu: list[GpuPerf]
    scale: list[float]  # serving factor x the site's hidden speed
    slots: list[list[int]]  # [pool][replica] -> slots
    replica_running: list[list[int]]  # [pool][replica] -> running
    running: list[int]
    queues: list[deque[int]]
    caches: list[PrefixCache]
    busy: list[float]  # slot-milliseconds of service
    peak: list[int]
    sig: list[SiteSignals | None]
    # per site
    served: list[int]
    # (time, request, pool, replica) of every request being served
    heap: list[tuple[float, int, int, int]] = field(default_factory=list)


def _start_run(
    w: Workload, sites: Sequence[SimulatedSite], pools: Pools, signals: Sequence[Mapping[str, SiteSignals]]
) -> _Run:
    """Nothing served yet: every pool idle, its cache empty, every request without an outcome."""
    n = len(w)
    nan = math.nan
    npools = len(pools.site)
    psite = pools.site
    servings = [sites[s].serving_of(w.models[m]) for s, m in zip(psite, pools.model, strict=True)]
    slots = pools.slots or [[c] for c in pools.capacity]
    names = [sites[s].name for s in psite]
    return _Run(
        site=[-1] * n,
        status=bytearray(n),
        ttft=[nan] * n,
        e2e=[nan] * n,
        done=[nan] * n,
        cached=[0] * n,
        gpu=[sv.gpu if sv else sites[0].gpu for sv in servings],
        scale=[(sv.factor if sv else 1.0) * sites[s].speed for sv, s in zip(servings, psite, strict=True)],
        slots=slots,
        replica_running=[[0] * len(sl) for sl in slots],
        running=[0] * npools,
        queues=[deque() for _ in range(npools)],
        caches=[PrefixCache(sv.kv_tokens if sv else 0) for sv in servings],
        busy=[0.0] * npools,
        peak=[0] * npools,
        sig=[(signals[m].get(names[p]) if m < len(signals) else None) for p, m in enumerate(pools.model)],
        served=[0] * len(sites),
    )


def _admitter(
    run: _Run, w: Workload, rtt: list[list[float]], rnd: random.Random | None
) -> Callable[[int, int, int, float], None]:
    """``admit(j, p, r, now)``: request j takes a slot of replica r of pool p at ``now``: its prefix
    is looked up, its true timing fixed (the module docstring) and its completion scheduled."""
    T, R = w.t, w.region
    P, OUT, PF, PT, S, H = w.prompt, w.output, w.prefix, w.prefix_tokens, w.session, w.history
    rrun, running, slots, caches = run.replica_running, run.running, run.slots, run.caches
    gpu, scale, busy, heap = run.gpu, run.scale, run.busy, run.heap
    cached_l, ttft_l, e2e_l, done_l = run.cached, run.ttft, run.e2e, run.done
    first_fn, interval_fn, chain, reusable = ttft_ms, token_interval_ms, prompt_chain, reusable_tokens

    def admit(j: int, p: int, r: int, now: float) -> None:
        rr = rrun[p][r] + 1
        rrun[p][r] = rr
        running[p] += 1
        c = slots[p][r]
        cache = caches[p]
        pf, ss = PF[j], S[j]
        if pf >= 0 or ss >= 0:
            h = H[j] if ss >= 0 else 0
            got = cache.match(chain(pf, PT[j], ss, h if h > PT[j] else PT[j]))
            cache.insert(chain(pf, PT[j], ss, P[j] + OUT[j]))  # the answer is cached with its prompt
        else:
            got = 0
        prompt = P[j]
        got = reusable(got, prompt)
        cached_l[j] = got
        k = scale[p] if rnd is None else scale[p] * noise(rnd)
        first = first_fn(gpu[p], prompt, got, rr, c) * k
        service = first + interval_fn(gpu[p], rr, c) * k * (OUT[j] - 1)
        base = rtt[R[j]][p] + (now - T[j]) * 1000.0
        ttft_l[j] = base + first
        e2e_l[j] = base + service
        busy[p] += service
        end = now + service / 1000.0
        done_l[j] = end
        heappush(heap, (end, j, p, r))

    return admit


def _finisher(
    run: _Run,
    admit: Callable[[int, int, int, float], None],
    psite: list[int],
    complete: Callable[[int, int, float, float, float], object] | None,
) -> Callable[[float, int, int, int], None]:
    """``finish(done, j, p, r)``: request j completes on replica r of pool p at ``done``: the slot
    goes to the pool's next waiting request, the signals are updated, the policy hears of it."""
    rrun, running, queues, sig = run.replica_running, run.running, run.queues, run.sig
    ttft_l, e2e_l = run.ttft, run.e2e

    def finish(done: float, j: int, p: int, r: int) -> None:
        rrun[p][r] -= 1
        running[p] -= 1
        q = queues[p]
        if q:
            admit(q.popleft(), p, r, done)
        sg = sig[p]
        if sg is not None:
            sg.in_flight -= 1
            sg.running = running[p]
            sg.waiting = len(q)
        if complete is not None:
            complete(j, psite[p], done, ttft_l[j], e2e_l[j])

    return finish


def _least_loaded(running: list[int], slots: list[int]) -> int:
    """The replica with the fewest running that has a free slot; -1 when all are full."""
    best, fewest = -1, 1 << 30
    for r, (k, c) in enumerate(zip(running, slots, strict=True)):
        if k < c and k < fewest:
            best, fewest = r, k
    return best


def _replay(
    w: Workload,
    run: _Run,
    pools: Pools,
    choose: Callable[[int, int, int], int],
    admit: Callable[[int, int, int, float], None],
    finish: Callable[[float, int, int, int], None],
) -> float:
    """Every arrival in time order (the completions due by then first), then the completions left;
    the time of the last of those (0 when there were none)."""
    T, R, M = w.t, w.region, w.model
    pool_of, cap, qlim = pools.of, pools.capacity, pools.queue_limit
    rrun, slots, running = run.replica_running, run.slots, run.running
    queues, peak, sig = run.queues, run.peak, run.sig
    status, site_of, served, heap = run.status, run.site, run.served, run.heap
    least_loaded = _least_loaded
    for i in range(len(w)):
        t = T[i]
        while heap and heap[0][0] <= t:
            done, j, p, r = heappop(heap)
            finish(done, j, p, r)
        s = choose(R[i], M[i], i)
        if s < 0:
            status[i] = NO_SITE
            continue
        p = pool_of[s][M[i]]
        r = least_loaded(rrun[p], slots[p]) if running[p] < cap[p] else -1
        if r >= 0:
            admit(i, p, r, t)
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
        sg = sig[p]
        if sg is not None:
            sg.in_flight += 1
            sg.running = running[p]
            sg.waiting = len(queues[p])
    last_done = 0.0
    while heap:
        done, j, p, r = heappop(heap)
        last_done = done
        finish(done, j, p, r)
    return last_done


def _outcome(
    w: Workload, run: _Run, psite: list[int], nsites: int, policy: Policy, last_done: float
) -> Outcome:
    """The run's outcome, its pools' busy time and peak queue summed per site."""
    busy_site = [0.0] * nsites
    peak_site = [0] * nsites
    for p in range(len(psite)):
        busy_site[psite[p]] += run.busy[p] / 1000.0
        peak_site[psite[p]] = max(peak_site[psite[p]], run.peak[p])
    predicted = getattr(policy, "predicted", None)
    return Outcome(
        policy=policy.name,
        site=run.site,
        status=run.status,
        ttft_ms=run.ttft,
        e2e_ms=run.e2e,
        done_s=run.done,
        cached=run.cached,
        busy_s=busy_site,
        served=run.served,
        peak_queue=peak_site,
        span_s=max(w.duration_s, last_done),
        predicted_ms=list(predicted) if predicted is not None else [],
    )
