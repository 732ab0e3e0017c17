"""Filters, scores and explanations: the placement engine.

A ``Planner`` is built once from the inventory (and measured latencies); it
precomputes, for each client region and model, the sites that could ever
serve it, so a decision is a short loop over live signals. Pure: time, load
and health are passed in.

Filters, each with its reason when it excludes a site:
  serves the model; not drained; last health not failed or unreachable;
  the site's jurisdiction allowed for the region's data (and for the
  request's own jurisdiction constraint, which can only narrow it); estimated
  round trip within the SLO; capacity left (in-flight < capacity).

Score, higher is better, in [0, 1]::

    penalty = (w_latency * min(rtt, LATENCY_SCALE_MS) / LATENCY_SCALE_MS + w_cost * cost / max_cost
               + w_headroom * in_flight / capacity) / (w_latency + w_cost + w_headroom)
    score   = 1 - penalty

where ``max_cost`` is the highest cost per GPU-hour in the inventory and
``LATENCY_SCALE_MS`` (50 ms, a continental round trip) is the round trip that
costs the whole latency weight: within a metro, milliseconds matter against
cost; across a continent, every far site is equally far. Ties go
to the lower round trip, then to the name: the result never depends on the
order of sites in the inventory.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gridctl.inventory.jurisdictions import expand_jurisdictions
from gridctl.inventory.model import Inventory, Region, Site
from gridctl.placement.latency import Latency, haversine_km, radians_of, region_site_latency, rtt_for_km

BAD_HEALTH = frozenset({"failed", "unreachable"})
LATENCY_SCALE_MS = 50.0


@dataclass(frozen=True)
class Request:
    region: str
    model: str
    jurisdiction: str | None = None  # a code or group (EU): narrows where the data may go
    slo_ms: float | None = None  # default: the grid's slo_ms


@dataclass(frozen=True)
class Live:
    """Signals known at decision time. All optional."""

    health: Mapping[str, str] = field(default_factory=dict)  # site -> last status
    in_flight: Mapping[str, int] = field(default_factory=dict)  # site -> requests in flight


NO_LIVE = Live()


@dataclass(frozen=True)
class Candidate:
    site: str
    rtt_ms: float
    latency_source: str
    score: float
    breakdown: Mapping[str, float]  # each term's share of the penalty, and the inputs
    in_flight: int
    capacity: int


@dataclass(frozen=True)
class Exclusion:
    site: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    request: Request
    slo_ms: float
    ranked: tuple[Candidate, ...]  # best first
    excluded: tuple[Exclusion, ...]  # by name

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None


@dataclass(frozen=True)
class _Static:
    """A site that could serve (region, model) before live signals and SLO."""

    name: str
    rtt_ms: float
    cost_term: float  # cost / max_cost
    capacity: int
    jurisdiction: str


class UnknownRegion(ValueError):
    pass


class Planner:
    """Everything about placement that does not change per request."""

    def __init__(self, inv: Inventory, probes: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.grid_name = inv.grid.name
        self.sites: dict[str, Site] = {s.name: s for s in inv.sites}
        self.regions: dict[str, Region] = {r.name: r for r in inv.grid.regions}
        self.default_slo_ms = inv.grid.slo_ms
        w = inv.grid.weights
        self.weights = (w.latency, w.cost, w.headroom)
        self.max_cost = max((s.cost_per_gpu_hour for s in inv.sites), default=0.0) or 1.0
        self.probes = probes or {}
        self._static: dict[tuple[str, str], tuple[_Static, ...]] = {}
        self._serving_cache: dict[str, list[tuple[Site, int, tuple[float, float, float]]]] = {}

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

    def _serving(self, model: str) -> list[tuple[Site, int, tuple[float, float, float]]]:
        """Sites serving ``model`` and not drained, with their capacity and position (cached)."""
        cached = self._serving_cache.get(model)
        if cached is None:
            cached = [
                (s, m.capacity, radians_of(s.location))
                for s in self.sites.values()
                if not s.drain
                for m in s.models
                if m.name == model
            ]
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
        for site, capacity, there in self._serving(model):
            if site.jurisdiction not in region.allowed:
                continue
            name = site.name
            rtt = probes.get(name)  # the same order as latency(): probe, inventory, estimate
            if rtt is None:
                rtt = measured.get(name)
            if rtt is None:
                rtt = round(rtt_for_km(haversine_km(here, there), site.kind), 3)
            out.append(
                _Static(name, rtt, site.cost_per_gpu_hour / self.max_cost, capacity, site.jurisdiction)
            )
        out.sort(key=lambda s: (s.rtt_ms, s.name))
        result = tuple(out)
        self._static[key] = result
        return result

    # -- decisions ----------------------------------------------------------------------

    def rank(self, request: Request, live: Live = NO_LIVE, limit: int | None = None) -> list[str]:
        """Eligible sites, best first (the fast path: names only)."""
        slo = request.slo_ms or self.default_slo_ms
        allowed = expand_jurisdictions((request.jurisdiction,)) if request.jurisdiction else None
        wl, wc, wh = self.weights
        wl_scale = wl / LATENCY_SCALE_MS
        health = live.health
        in_flight = live.in_flight
        scored = []
        for s in self.static_candidates(request.region, request.model):
            rtt = s.rtt_ms
            if rtt > slo:
                break  # sorted by rtt: the rest are further
            if allowed is not None and s.jurisdiction not in allowed:
                continue
            if health and health.get(s.name) in BAD_HEALTH:
                continue
            busy = in_flight.get(s.name, 0) if in_flight else 0
            if busy >= s.capacity:
                continue
            lat = rtt if rtt < LATENCY_SCALE_MS else LATENCY_SCALE_MS
            scored.append((wl_scale * lat + wc * s.cost_term + wh * busy / s.capacity, rtt, s.name))
        if limit is not None:
            return [name for _, _, name in heapq.nsmallest(limit, scored)]
        scored.sort()
        return [name for _, _, name in scored]

    def choose(self, request: Request, live: Live = NO_LIVE) -> str | None:
        best = self.rank(request, live, limit=1)
        return best[0] if best else None

    def explain(self, request: Request, live: Live = NO_LIVE) -> Decision:
        """Every site of the grid: ranked with its score breakdown, or excluded with every reason."""
        region = self.region(request.region)
        slo = request.slo_ms or self.default_slo_ms
        allowed = expand_jurisdictions((request.jurisdiction,)) if request.jurisdiction else None
        wl, wc, wh = self.weights
        total = (wl + wc + wh) or 1.0
        ranked: list[tuple[float, float, str, Candidate]] = []
        excluded: list[Exclusion] = []
        for name in sorted(self.sites):
            site = self.sites[name]
            reasons: list[str] = []
            serving = next((m for m in site.models if m.name == request.model), None)
            if serving is None:
                reasons.append(f"does not serve {request.model}")
            if site.drain:
                reasons.append("drained")
            status = live.health.get(name)
            if status in BAD_HEALTH:
                reasons.append(f"last health {status}")
            if site.jurisdiction not in region.allowed:
                allowed_txt = ",".join(region.allowed_jurisdictions)
                reasons.append(
                    f"jurisdiction {site.jurisdiction} not allowed for {region.name} data ({allowed_txt})"
                )
            elif allowed is not None and site.jurisdiction not in allowed:
                reasons.append(
                    f"jurisdiction {site.jurisdiction} outside the request's {request.jurisdiction}"
                )
            latency = self.latency(region, site)
            if latency.rtt_ms > slo:
                reasons.append(
                    f"round trip {latency.rtt_ms:.1f} ms ({latency.source}) over the {slo:g} ms SLO"
                )
            busy = live.in_flight.get(name, 0)
            capacity = serving.capacity if serving else 0
            if serving is not None and busy >= capacity:
                reasons.append(f"full ({busy}/{capacity} in flight)")
            if reasons:
                excluded.append(Exclusion(name, tuple(reasons)))
                continue
            lat = min(latency.rtt_ms, LATENCY_SCALE_MS) / LATENCY_SCALE_MS
            cost = site.cost_per_gpu_hour / self.max_cost
            util = busy / capacity
            raw = wl * lat + wc * cost + wh * util
            penalty = raw / total
            breakdown = {
                "latency": round(wl * lat / total, 6),
                "cost": round(wc * cost / total, 6),
                "load": round(wh * util / total, 6),
                "rtt_ms": latency.rtt_ms,
                "cost_per_gpu_hour": site.cost_per_gpu_hour,
                "utilization": round(util, 6),
            }
            candidate = Candidate(
                name, latency.rtt_ms, latency.source, round(1 - penalty, 6), breakdown, busy, capacity
            )
            ranked.append((raw, latency.rtt_ms, name, candidate))
        ranked.sort(key=lambda t: t[:3])  # the order rank() gives: penalty, then rtt, then name
        return Decision(request, slo, tuple(t[3] for t in ranked), tuple(excluded))


def decision_dict(decision: Decision, sites: Mapping[str, Site]) -> dict[str, Any]:
    """The documented JSON shape of an explanation (``route test -o json``, ``/grid/route``)."""
    req = decision.request
    return {
        "request": {
            "region": req.region,
            "model": req.model,
            "jurisdiction": req.jurisdiction,
            "slo_ms": decision.slo_ms,
        },
        "ranked": [
            {
                "rank": i + 1,
                "site": c.site,
                "kind": sites[c.site].kind,
                "jurisdiction": sites[c.site].jurisdiction,
                "endpoint": sites[c.site].endpoint,
                "rtt_ms": c.rtt_ms,
                "latency_source": c.latency_source,
                "score": c.score,
                "breakdown": dict(c.breakdown),
            }
            for i, c in enumerate(decision.ranked)
        ],
        "excluded": [{"site": e.site, "reasons": list(e.reasons)} for e in decision.excluded],
    }
