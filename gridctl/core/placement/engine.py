"""The placement decision: filters, the latency prediction, the cheapest feasible site.

A ``Planner`` is built once from the inventory (and measured latencies); it
precomputes, for each client region and model, the sites that could ever
serve it with their round trip, GPU timing inputs and price, so a decision is
one short loop over a snapshot of live signals. Pure: time, load, health and
calibration are passed in. The daemon, ``route test``, ``route render`` and
the simulator's ``grid`` policy all call :meth:`Planner.order` (or
:meth:`Planner.explain`, the same decision with every reason written out).

Hard filters, each with its reason when it excludes a site: serves the model;
not drained; last health not failed or unreachable; circuit not open; the
site's jurisdiction allowed for the region's data (and for the request's own
jurisdiction constraint, which can only narrow it); round trip alone within
the SLO; a free slot (this daemon's requests in flight < the model's capacity).

Then every remaining site's end-to-end latency is predicted
(:mod:`gridctl.core.placement.predict`) for the request's shape, on its own GPUs,
under its load, with its calibration and the prompt tokens it probably holds
in its prefix cache. A site is **feasible** when::

    predicted_e2e <= SLO * (1 - SLO_MARGIN)          (SLO_MARGIN = 0.1)

The order: feasible sites first, cheapest per request first, then by round
trip, then by name; then the others, fastest predicted first (the failover
order, and the default choice when no site is feasible: the request goes to
the fastest and is counted as expected to miss). The cost of one request::

    cost = cost_per_gpu_hour x (gpus serving the model / its capacity) x predicted service seconds / 3600

i.e. the GPU share of one slot for as long as the request holds it. A session
key picks among the feasible sites only, by rendezvous hashing. The result
never depends on the order of sites in the inventory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gridctl.core.inventory.jurisdictions import expand_jurisdictions
from gridctl.core.inventory.model import Inventory, Region, Site
from gridctl.core.placement.decision import (
    DEFAULT_SHAPE,
    SLO_MARGIN,
    Candidate,
    Decision,
    Exclusion,
    Ranking,
    Request,
)
from gridctl.core.placement.latency import Latency, haversine_km, radians_of, region_site_latency, rtt_for_km
from gridctl.core.placement.perf import LOAD_DECODE, LOAD_TTFT, Serving, build_serving
from gridctl.core.placement.predict import Prediction, Shape, predict
from gridctl.core.placement.signals import IDLE, NO_LIVE, Live, SiteSignals

BAD_HEALTH = frozenset({"failed", "unreachable"})


@dataclass(frozen=True)
class _Static:
    """A site that could serve (region, model), with what its prediction needs."""

    name: str
    rtt_ms: float
    jurisdiction: str
    capacity: int
    first_ms: float  # idle first-token compute, before the prompt: TTFT x factor
    prefill_ms_per_token: float  # 1000 / prefill x factor
    interval_ms: float  # idle time per output token: 1000 / decode x factor
    cost_per_ms: float  # price x GPUs / capacity / 3,600,000
    serving: Serving


class UnknownRegion(ValueError):
    pass


def rendezvous(key: str, sites: tuple[str, ...] | list[str]) -> list[str]:
    """Highest-random-weight order of ``sites`` for ``key``: every daemon computes the same
    order without sharing state, and removing a site moves only its own keys."""

    def weight(site: str) -> bytes:
        return hashlib.blake2b(f"{key}\0{site}".encode(), digest_size=8).digest()

    return sorted(sites, key=weight, reverse=True)


class Planner:
    """Everything about placement that does not change per request."""

    def __init__(self, inv: Inventory, probes: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.grid_name = inv.grid.name
        self.sites: dict[str, Site] = {s.name: s for s in inv.sites}
        self.regions: dict[str, Region] = {r.name: r for r in inv.grid.regions}
        self.default_slo_ms = inv.grid.slo_ms
        self.gpu_rows = inv.grid.gpus
        self.probes = probes or {}
        self._static: dict[tuple[str, str], tuple[_Static, ...]] = {}
        self._fast_cache: dict[tuple[str, str], tuple[tuple[Any, ...], ...]] = {}
        self._by_name: dict[tuple[str, str], dict[str, _Static]] = {}
        self._serving_cache: dict[str, list[tuple[Site, Serving, tuple[float, float, float]]]] = {}

    # -- precomputation ---------------------------------------------------------------

    def region(self, name: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            raise UnknownRegion(name)
        return region

    def latency(self, region: Region, site: Site) -> Latency:
        return region_site_latency(
            region.location,
            site.location,
            site.kind,
            inventory_ms=region.latency_ms.get(site.name),
            probe_ms=self.probes.get(region.name, {}).get(site.name),
        )

    def serving(self, site: str, model: str) -> Serving | None:
        s = self.sites.get(site)
        return build_serving(s, model, self.gpu_rows) if s is not None else None

    def _serving(self, model: str) -> list[tuple[Site, Serving, tuple[float, float, float]]]:
        """Sites serving ``model`` and not drained, with how they serve it and their position."""
        cached = self._serving_cache.get(model)
        if cached is None:
            cached = []
            for s in self.sites.values():
                if s.drain:
                    continue
                serving = build_serving(s, model, self.gpu_rows)
                if serving is not None:
                    cached.append((s, serving, radians_of(s.location)))
            self._serving_cache[model] = cached
        return cached

    def static_candidates(self, region_name: str, model: str) -> tuple[_Static, ...]:
        """Sites serving ``model``, not drained, allowed for the region: by round trip, then name."""
        key = (region_name, model)
        cached = self._static.get(key)
        if cached is not None:
            return cached
        region = self.region(region_name)
        here = radians_of(region.location)
        probes = self.probes.get(region.name, {})
        measured = region.latency_ms
        out = []
        for site, sv, there in self._serving(model):
            if site.jurisdiction not in region.allowed:
                continue
            name = site.name
            rtt = probes.get(name)  # the same order as latency(): probe, inventory, estimate
            if rtt is None:
                rtt = measured.get(name)
            if rtt is None:
                rtt = round(rtt_for_km(haversine_km(here, there), site.kind), 3)
            gpu = sv.gpu
            out.append(
                _Static(
                    name,
                    rtt,
                    site.jurisdiction,
                    sv.capacity,
                    gpu.ttft_ms * sv.factor,
                    1000.0 / gpu.prefill_tok_s * sv.factor,
                    1000.0 / gpu.decode_tok_s * sv.factor,
                    site.cost_per_gpu_hour * sv.gpus / sv.capacity / 3_600_000.0,
                    sv,
                )
            )
        out.sort(key=lambda s: (s.rtt_ms, s.name))
        result = tuple(out)
        self._static[key] = result
        return result

    def _fast(self, region_name: str, model: str) -> tuple[tuple[Any, ...], ...]:
        """:meth:`static_candidates` as plain tuples, for the decision's loop."""
        key = (region_name, model)
        fast = self._fast_cache.get(key)
        if fast is None:
            fast = tuple(
                (
                    s.name,
                    s.rtt_ms,
                    s.jurisdiction,
                    s.capacity,
                    s.serving.replicas,
                    s.serving.replicas / s.capacity,
                    s.first_ms,
                    s.prefill_ms_per_token,
                    s.interval_ms,
                    s.cost_per_ms,
                )
                for s in self.static_candidates(region_name, model)
            )
            self._fast_cache[key] = fast
        return fast

    # -- decisions ----------------------------------------------------------------------

    def order(
        self,
        request: Request,
        shape: Shape,
        live: Live = NO_LIVE,
        cached: Mapping[str, int] | None = None,
        session: str | None = None,
    ) -> Ranking:
        """The decision (the module docstring's), names only: sites to try, best first.

        ``live``: the snapshot (site -> :class:`SiteSignals` for this model; a site absent is
        idle and healthy); ``cached``: site -> prompt tokens it probably holds."""
        slo = request.slo_ms or self.default_slo_ms
        budget = slo * (1.0 - SLO_MARGIN)
        allowed = expand_jurisdictions((request.jurisdiction,)) if request.jurisdiction else None
        prompt = shape.prompt_tokens
        tokens = shape.output_tokens - 1 if shape.output_tokens > 1 else 0
        lt, ld = LOAD_TTFT, LOAD_DECODE
        feasible: list[tuple[float, float, str, float]] = []
        other: list[tuple[float, float, str, float]] = []
        get = live.get
        getc = cached.get if cached else None
        idle = IDLE
        same_load = lt == ld
        full = 1.0 + lt
        bad = BAD_HEALTH
        for (
            name,
            rtt,
            jur,
            cap,
            replicas,
            rep_share,
            first_ms,
            per_token,
            interval_ms,
            cost_per_ms,
        ) in self._fast(request.region, request.model):
            if rtt > slo:
                break  # sorted by rtt: the rest are further
            if allowed is not None and jur not in allowed:
                continue
            sig = get(name, idle)
            if sig.open or sig.health in bad:
                continue
            busy = sig.in_flight
            if busy >= cap:
                continue
            # every request at the site: ours (some may wait in its queue) or its own count of
            # running and waiting, whichever is more (its /metrics lag; other daemons share it)
            load = sig.running + sig.waiting
            if busy > load:
                load = busy
            if getc is not None:
                uncached = prompt - getc(name, 0)
                if uncached < 0:
                    uncached = 0
            else:
                uncached = prompt
            first = (first_ms + uncached * per_token) * sig.first_factor
            interval = interval_ms * sig.decode_factor * tokens
            # the least-loaded replica, with the request itself, against its share of the slots
            frac = (load // replicas + 1) * rep_share
            if frac > 1.0:
                frac = 1.0
            if same_load:  # LOAD_TTFT == LOAD_DECODE (the table's model): one stretch for both
                unloaded = first + interval
                service = unloaded * (1.0 + lt * frac)
                e2e = rtt + service
                ahead = load + 1 - cap  # requests before it beyond the slots
                if ahead > 0:
                    e2e += ahead * unloaded * full / cap
            else:
                service = first * (1.0 + lt * frac) + interval * (1.0 + ld * frac)
                e2e = rtt + service
                ahead = load + 1 - cap
                if ahead > 0:
                    e2e += ahead * (first * (1.0 + lt) + interval * (1.0 + ld)) / cap
            if e2e <= budget:
                feasible.append((cost_per_ms * service, rtt, name, e2e))
            else:
                other.append((e2e, rtt, name, e2e))
        return _ranking(feasible, other, session)

    def rank(self, request: Request, live: Live = NO_LIVE, shape: Shape = DEFAULT_SHAPE) -> list[str]:
        """Eligible sites, best first (names only)."""
        return list(self.order(request, shape, live).sites)

    def choose(self, request: Request, live: Live = NO_LIVE, shape: Shape = DEFAULT_SHAPE) -> str | None:
        return self.order(request, shape, live).best

    def predict(
        self,
        request: Request,
        shape: Shape,
        site: str,
        live: Live = NO_LIVE,
        cached_tokens: int = 0,
    ) -> Prediction | None:
        """The prediction for one eligible site, with its parts (what the daemon puts in
        ``x-grid-predicted-ms`` and learns from); None when the site is not a candidate."""
        key = (request.region, request.model)
        by_name = self._by_name.get(key)
        if by_name is None:
            by_name = {c.name: c for c in self.static_candidates(*key)}
            self._by_name[key] = by_name
        s = by_name.get(site)
        if s is None:
            return None
        sig = live.get(site, IDLE)
        load = max(sig.in_flight, sig.running + sig.waiting)
        return predict(
            s.serving, shape, s.rtt_ms, load, 0, cached_tokens, sig.first_factor, sig.decode_factor
        )

    def explain(
        self,
        request: Request,
        shape: Shape = DEFAULT_SHAPE,
        live: Live = NO_LIVE,
        cached: Mapping[str, int] | None = None,
        session: str | None = None,
    ) -> Decision:
        """Every site of the grid: ranked with its prediction and cost, or excluded with every
        reason. The ranked order is :meth:`order`'s."""
        region = self.region(request.region)
        slo = request.slo_ms or self.default_slo_ms
        budget = slo * (1.0 - SLO_MARGIN)
        allowed = expand_jurisdictions((request.jurisdiction,)) if request.jurisdiction else None
        candidates: dict[str, Candidate] = {}
        excluded: list[Exclusion] = []
        cached = cached or {}
        for name in sorted(self.sites):
            site = self.sites[name]
            serving = build_serving(site, request.model, self.gpu_rows)
            sig = live.get(name, IDLE)
            latency = self.latency(region, site)
            reasons = _reasons(request, site, serving, sig, region, allowed, latency, slo)
            if reasons or serving is None:
                excluded.append(Exclusion(name, tuple(reasons)))
            else:
                candidates[name] = _candidate(site, serving, sig, latency, shape, cached.get(name, 0), budget)
        ranking = self.order(request, shape, live, cached, session)
        ranked = tuple(candidates[n] for n in ranking.sites if n in candidates)
        return Decision(request, shape, slo, budget, ranked, tuple(excluded))


def _ranking(
    feasible: list[tuple[float, float, str, float]],
    other: list[tuple[float, float, str, float]],
    session: str | None,
) -> Ranking:
    """The order: feasible sites cheapest first (a session's key picks among them by rendezvous),
    then the others fastest first; ties by round trip, then name."""
    feasible.sort()
    other.sort()
    names = [t[2] for t in feasible]
    predicted = [t[3] for t in feasible]
    if session and len(names) > 1:
        by_name = dict(zip(names, predicted, strict=True))
        names = rendezvous(session, names)
        predicted = [by_name[n] for n in names]
    names.extend(t[2] for t in other)
    predicted.extend(t[3] for t in other)
    return Ranking(tuple(names), len(feasible), tuple(predicted))


def _reasons(
    request: Request,
    site: Site,
    serving: Serving | None,
    sig: SiteSignals,
    region: Region,
    allowed: frozenset[str] | None,
    latency: Latency,
    slo: float,
) -> list[str]:
    """Every hard filter that excludes ``site``, in words (empty: it is a candidate)."""
    reasons: list[str] = []
    if serving is None:
        reasons.append(f"does not serve {request.model}")
    if site.drain:
        reasons.append("drained")
    if sig.health in BAD_HEALTH:
        reasons.append(f"last health {sig.health}")
    if sig.open:
        reasons.append("circuit open (recent failures)")
    if site.jurisdiction not in region.allowed:
        allowed_txt = ",".join(region.allowed_jurisdictions)
        reasons.append(f"jurisdiction {site.jurisdiction} not allowed for {region.name} data ({allowed_txt})")
    elif allowed is not None and site.jurisdiction not in allowed:
        reasons.append(f"jurisdiction {site.jurisdiction} outside the request's {request.jurisdiction}")
    if latency.rtt_ms > slo:
        reasons.append(f"round trip {latency.rtt_ms:.1f} ms ({latency.source}) over the {slo:g} ms SLO")
    if serving is not None and sig.in_flight >= serving.capacity:
        reasons.append(f"full ({sig.in_flight}/{serving.capacity} in flight)")
    return reasons


def _candidate(
    site: Site, serving: Serving, sig: SiteSignals, latency: Latency, shape: Shape, hit: int, budget: float
) -> Candidate:
    """A site that passed the filters, with its prediction, cost and the signals behind them."""
    load = max(sig.in_flight, sig.running + sig.waiting)
    p = predict(serving, shape, latency.rtt_ms, load, 0, hit, sig.first_factor, sig.decode_factor)
    cost = site.cost_per_gpu_hour * serving.gpus / serving.capacity * p.service_ms / 3_600_000.0
    total_tokens = max(1, shape.prompt_tokens + shape.output_tokens)
    return Candidate(
        site=site.name,
        rtt_ms=latency.rtt_ms,
        latency_source=latency.source,
        prediction=p,
        feasible=p.e2e_ms <= budget,
        cost_per_request=cost,
        cost_per_1k_tokens=cost / total_tokens * 1000.0,
        in_flight=sig.in_flight,
        capacity=serving.capacity,
        load=load,
        waiting=sig.waiting,
        cached_tokens=min(hit, shape.prompt_tokens),
        first_factor=sig.first_factor,
        decode_factor=sig.decode_factor,
        gpu=serving.gpu.name,
        replicas=serving.replicas,
        tensor_parallel=serving.tensor_parallel,
    )
