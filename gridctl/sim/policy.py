"""Placement policies of the simulator. Every one chooses through the placement engine.

No policy names a site itself: each takes its sites from ``Planner.rank``, so a
site the Planner excludes (not serving the model, drained, outside the
jurisdictions the client region's data may go to, a round trip over the SLO)
can never be chosen. A request with no site to go to is rejected and counted.

``grid``
    The placement daemon's policy: ``Planner.rank`` with the live number of
    requests in flight at each site, so full sites are skipped and load spreads
    by the score (latency, cost, headroom), then the daemon's prefix affinity
    (below). When every eligible site is full the request is rejected, where the
    daemon answers 429 (after waiting up to ``--queue-timeout`` for a slot,
    which is not modelled).
``central``
    Everything to one designated central site, when the Planner lists it as
    eligible for the request's region; otherwise the request is rejected (a
    central site outside a region's allowed jurisdictions is never used for it).
``nearest``
    The lowest round trip among the eligible sites, ignoring load and cost: the
    first site of ``Planner.rank`` under latency-only weights.
``round-robin``
    The eligible sites in turn (per client region and model), ignoring load.

Policies other than ``grid`` do not look at load: their choice is fixed per
(region, model) and computed once. They send requests to full sites, which
queue them (up to the site's queue bound) or refuse them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import replace

from gridctl.inventory.model import Inventory, Weights
from gridctl.placement.engine import NO_LIVE, Live, Planner, Request
from gridctl.sim.traffic import Workload

POLICIES = ("grid", "nearest", "central", "round-robin")
EXTRA_POLICIES = ("grid-no-affinity",)
# the daemon's defaults (gridctl/daemon/config.py): affinity never picks a site this busy; its prefix
# index hashes the first 64 blocks of 256 characters of a prompt (about 64 tokens each), 50,000 per site
AFFINITY_MAX_UTIL = 0.8
AFFINITY_BALANCE = 0.2
AFFINITY_MAX_TOKENS = 64 * 64
AFFINITY_INDEX_TOKENS = 50_000 * 64


class Placement:
    """What every policy shares: one Request per (region, model) and its eligible sites."""

    def __init__(
        self,
        planner: Planner,
        sites: Sequence[str],
        regions: Sequence[str],
        models: Sequence[str],
        slo_ms: float,
    ) -> None:
        self.planner = planner
        self.index = {name: i for i, name in enumerate(sites)}
        self.requests = [[Request(r, m, None, slo_ms) for m in models] for r in regions]
        # eligible[r][m]: site indices the Planner allows, best first with no load
        self.eligible = [[self._indices(planner.rank(req, NO_LIVE)) for req in row] for row in self.requests]

    def _indices(self, names: Sequence[str]) -> tuple[int, ...]:
        return tuple(self.index[n] for n in names)


class GridPolicy:
    """The daemon's choice (``GridState.order``) without a session header.

    ``Planner.rank`` with the live in-flight counts; then prefix affinity: among
    the ranked sites, the one that most probably holds the prompt's leading
    tokens in KV cache goes first, unless it is saturated (in flight at
    ``AFFINITY_MAX_UTIL`` of the slots of all its models, as the daemon counts
    them; here the in-flight requests of the model simulated). Like the daemon's prefix
    index (chained hashes of what each site was sent, a bounded LRU per site,
    the first ``AFFINITY_MAX_TOKENS`` tokens), this policy remembers what it
    sent where: a prompt matches a site by its shared prefix, or by the whole
    previous turn of its session when that turn went there.
    """

    def __init__(
        self,
        placement: Placement,
        in_flight: Sequence[MutableMapping[str, int]],
        w: Workload,
        capacity: Sequence[Mapping[str, int]],
        affinity: bool = True,
    ) -> None:
        """``in_flight[m]``: site name -> requests in flight for model m, kept current by the engine;
        ``capacity[s]``: site index -> model -> slots; ``affinity=False``: the ranking alone."""
        self.name = "grid" if affinity else "grid-no-affinity"
        self._affinity = affinity
        self._rank = placement.planner.rank
        self._requests = placement.requests
        self._lives = [Live(in_flight=counts) for counts in in_flight]
        self._in_flight = in_flight
        self._index = placement.index
        # as the daemon: a site's requests in flight against the slots of the requested model
        model_name = w.models
        self._slots = [
            {n: capacity[i].get(m, 0) or sum(capacity[i].values()) or 1 for n, i in placement.index.items()}
            for m in model_name
        ]
        self._w = w
        self._sent: dict[str, OrderedDict[int, int]] = {n: OrderedDict() for n in placement.index}
        self._held: dict[str, int] = dict.fromkeys(placement.index, 0)

    def choose(self, region: int, model: int, i: int) -> int:
        if not self._affinity:
            best1 = self._rank(self._requests[region][model], self._lives[model], 1)
            return self._index[best1[0]] if best1 else -1
        ranked = self._rank(self._requests[region][model], self._lives[model])
        if not ranked:
            return -1
        w = self._w
        pf, ss = w.prefix[i], w.session[i]
        pkey, skey = pf << 1, (ss << 1) | 1
        hist = w.history[i]
        best, best_len = ranked[0], 0
        if pf >= 0 or (ss >= 0 and hist):
            slots, flying = self._slots[model], self._in_flight[model]
            limit = flying.get(ranked[0], 0) / slots[ranked[0]] + AFFINITY_BALANCE
            if limit > AFFINITY_MAX_UTIL:
                limit = AFFINITY_MAX_UTIL
            ptoks = w.prefix_tokens[i]
            for name in ranked:
                sent = self._sent[name]
                n = ptoks if pf >= 0 and pkey in sent else 0
                if hist > n and sent.get(skey, 0) >= hist:
                    n = hist
                if n > AFFINITY_MAX_TOKENS:
                    n = AFFINITY_MAX_TOKENS
                if n > best_len and flying.get(name, 0) / slots[name] < limit + 1e-12:
                    best, best_len = name, n
        self._record(
            best,
            pkey if pf >= 0 else -1,
            w.prefix_tokens[i],
            skey if ss >= 0 else -1,
            w.prompt[i] + w.output[i],
        )
        return self._index[best]

    def _record(self, name: str, pkey: int, ptoks: int, skey: int, stoks: int) -> None:
        sent = self._sent[name]
        held = self._held[name]
        for key, toks in ((pkey, ptoks), (skey, stoks)):
            if key < 0:
                continue
            old = sent.pop(key, None)
            if old is not None:
                held -= old
            sent[key] = toks
            held += toks
        while held > AFFINITY_INDEX_TOKENS and sent:
            held -= sent.popitem(last=False)[1]
        self._held[name] = held


class FixedPolicy:
    """A choice per (region, model) made once through the Planner: central, nearest."""

    def __init__(self, name: str, choice: Sequence[Sequence[int]]) -> None:
        self.name = name
        self._choice = choice

    def choose(self, region: int, model: int, i: int) -> int:
        return self._choice[region][model]


class RoundRobinPolicy:
    name = "round-robin"

    def __init__(self, placement: Placement) -> None:
        self._lists = placement.eligible
        self._next = [[0] * len(row) for row in placement.eligible]

    def choose(self, region: int, model: int, i: int) -> int:
        sites = self._lists[region][model]
        if not sites:
            return -1
        k = self._next[region][model]
        self._next[region][model] = k + 1 if k + 1 < len(sites) else 0
        return sites[k]


def central_policy(placement: Placement, central: str) -> FixedPolicy:
    """``central`` for every (region, model) where the Planner lists it as eligible; else nothing."""
    c = placement.index.get(central, -1)
    return FixedPolicy("central", [[c if c in row else -1 for row in rows] for rows in placement.eligible])


def nearest_policy(
    placement: Placement, inv: Inventory, probes: Mapping[str, Mapping[str, float]]
) -> FixedPolicy:
    """The first site of ``Planner.rank`` under latency-only weights (no load, no cost)."""
    latency_only = replace(inv, grid=replace(inv.grid, weights=Weights(latency=1.0, cost=0.0, headroom=0.0)))
    planner = Planner(latency_only, probes)
    choice = []
    for row in placement.requests:
        picks = []
        for req in row:
            best = planner.choose(req, NO_LIVE)
            picks.append(placement.index[best] if best is not None else -1)
        choice.append(picks)
    return FixedPolicy("nearest", choice)
