"""Placement policies of the simulator. Every one chooses through the placement engine.

No policy names a site itself: each takes its sites from ``Planner.order``, so a
site the Planner excludes (not serving the model, drained, outside the
jurisdictions the client region's data may go to, a round trip over the SLO)
can never be chosen. A request with no site to go to is rejected and counted.

``grid``
    The placement daemon's decision, the same function: ``Planner.order(request,
    shape, live, cached)`` over a snapshot kept as the daemon keeps it: one
    :class:`~gridctl.core.placement.signals.SiteSignals` per (model, site), updated in
    place by the engine (requests in flight, the site's running and waiting) and
    by online calibration. The request's shape is what a client sends: its
    prompt tokens and, as ``max_tokens``, the profile's largest output when its
    clients set one (voice; never the true output length); otherwise (chat,
    rag, a trace) the daemon's estimate: the model's p90 of completed answers. ``cached``: the
    prompt tokens each site probably holds, from this policy's own record of
    what it sent where (a :class:`~gridctl.core.placement.prefix.SentIndex` of the requests'
    :func:`~gridctl.sim.traffic.prompt_chain`, as the daemon's of their text). When a request completes (an
    event, never at admission) the site's :class:`~gridctl.core.placement.predict.Calibration`
    learns from the prediction made at send and what the client observed (TTFT
    and end to end from send: round trip + queue + compute), and the site's
    signals take ``cal.factors(now)``; every ``REFRESH_S`` simulated seconds all
    factors are refreshed (they decay toward the table without evidence). When
    every eligible site is full the request is rejected, where the daemon
    answers 429 (after waiting up to ``--queue-timeout`` for a slot, which is not
    modelled).
``grid-no-affinity``
    The same without the prefix record (``cached`` empty).
``central``
    Everything to one designated central site, when the Planner lists it as
    eligible for the request's region; otherwise the request is rejected.
``nearest``
    The lowest round trip among the eligible sites, ignoring load, speed and cost.
``round-robin``
    The eligible sites in turn (per client region and model), ignoring load.

The grid policy's snapshot is built by plain functions a test can drive from
plain data: :func:`build_signals` (site -> :class:`SiteView`: in flight, the
site's running and waiting, health, breaker, calibration -> the ``SiteSignals``
``Planner.order`` reads) and ``SentIndex.cached`` (what was sent where ->
the ``cached`` mapping of one request). The engine keeps the same objects
current in place during a run.

Policies other than ``grid`` do not look at load: their choice is fixed per
(region, model) and computed once, from the Planner's eligibility for
``DEFAULT_SHAPE``. They send requests to full sites, which queue them (up to
the site's queue bound) or refuse them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from gridctl.core.placement.decision import DEFAULT_SHAPE, Request
from gridctl.core.placement.engine import Planner
from gridctl.core.placement.predict import PRIOR, Calibration, OutputTokens, Prediction, Shape, calibrate
from gridctl.core.placement.prefix import SentIndex
from gridctl.core.placement.signals import NO_LIVE, SiteSignals, write_signals
from gridctl.sim.traffic import Workload, prompt_chain

POLICIES = ("grid", "nearest", "central", "round-robin")
EXTRA_POLICIES = ("grid-no-affinity",)
# the daemon's prefix index (GridState.prompt_chain): the first 64 blocks of 256 characters of a
# prompt (64 tokens each), at most 50,000 blocks per (site, model)
AFFINITY_MAX_TOKENS = 64 * 64
AFFINITY_INDEX_TOKENS = 50_000 * 64
REFRESH_S = 5.0  # the daemon's probe interval: calibration factors read again, decayed


class SimPlacement:
    """What every policy of a run shares: the Planner, the run's sites, one placement Request per
    (region, model) and its eligible sites. (Not the daemon's ``Placement``, which is
    :class:`gridctl.core.placement.decision.Request` under another name.)"""

    def __init__(
        self,
        planner: Planner,
        sites: Sequence[str],
        regions: Sequence[str],
        models: Sequence[str],
        slo_ms: float,
    ) -> None:
        self.planner = planner
        self.names = tuple(sites)
        self.index = {name: i for i, name in enumerate(sites)}
        self.requests = [[Request(r, m, None, slo_ms) for m in models] for r in regions]
        # eligible[r][m]: site indices the Planner allows, in its order for the default shape, idle
        self.eligible = [
            [self._indices(planner.order(req, DEFAULT_SHAPE, NO_LIVE).sites) for req in row]
            for row in self.requests
        ]

    def _indices(self, names: Sequence[str]) -> tuple[int, ...]:
        return tuple(self.index[n] for n in names)


# -- the snapshot: what the grid policy knows of each site ------------------------------------------


@dataclass(frozen=True)
class SiteView:
    """What the simulator knows of one site for one model, as plain data (the daemon keeps the
    same from its own requests, the site's /metrics, its breaker and its calibration)."""

    in_flight: int = 0  # the policy's requests there, sent and not completed
    running: int = 0  # the site's own running count for the model
    waiting: int = 0  # the site's own queue for the model
    health: str | None = None  # the simulator's sites never fail: None
    open: bool = False
    calibration: Calibration = PRIOR


def apply_view(sig: SiteSignals, view: SiteView, now: float) -> SiteSignals:
    """``sig`` updated in place from ``view`` at ``now`` (calibration factors decayed to now),
    by the daemon's own writer (:func:`gridctl.core.placement.signals.write_signals`)."""
    return write_signals(
        sig,
        health=view.health,
        open=view.open,
        in_flight=view.in_flight,
        running=view.running,
        waiting=view.waiting,
        calibration=view.calibration,
        now=now,
    )


def build_signals(views: Mapping[str, SiteView], now: float) -> dict[str, SiteSignals]:
    """The snapshot of one model: site -> SiteSignals, what ``Planner.order`` reads."""
    return {name: apply_view(SiteSignals(), view, now) for name, view in views.items()}


def index_capacity(planner: Planner) -> Callable[[str, str], int]:
    """The daemon's prefix-index bound per (site, model) (``GridState.index_capacity``): the KV
    tokens of the GPUs serving the model, at most ``AFFINITY_INDEX_TOKENS``."""

    def capacity(site: str, model: str) -> int:
        serving = planner.serving(site, model)
        return min(AFFINITY_INDEX_TOKENS, serving.kv_tokens) if serving is not None else AFFINITY_INDEX_TOKENS

    return capacity


class GridPolicy:
    """The daemon's decision (``Planner.order``) over the simulator's snapshot, calibrated online."""

    def __init__(
        self,
        placement: SimPlacement,
        w: Workload,
        signals: Sequence[MutableMapping[str, SiteSignals]],
        max_tokens: int | None,
        affinity: bool = True,
    ) -> None:
        """``signals[m]``: site -> SiteSignals for model m, kept current by the engine;
        ``max_tokens``: what every request asks for (None: the daemon's observed estimate)."""
        self.name = "grid" if affinity else "grid-no-affinity"
        self._affinity = affinity
        planner = placement.planner
        self._order = planner.order
        self._predict = planner.predict
        self._requests = placement.requests
        self._names = placement.names
        self._index = placement.index
        self._signals = signals
        self._cal: list[dict[str, Calibration]] = [dict.fromkeys(s, PRIOR) for s in signals]
        self._w = w
        self._max_tokens = max_tokens
        self._outputs = OutputTokens()
        self.sent = SentIndex(index_capacity(planner))
        self._pending: dict[int, tuple[Prediction, int, str]] = {}
        self._next_refresh = REFRESH_S
        self.predicted = [math.nan] * len(w)  # per request: the chosen site's prediction at send

    def chain(self, i: int, tokens: int) -> list[tuple[int, int]]:
        """Request i's first ``tokens`` tokens (at least its prefix) as the daemon's prefix index
        sees a prompt: at most its first ``AFFINITY_MAX_TOKENS``."""
        w = self._w
        pt = w.prefix_tokens[i]
        n = tokens if tokens > pt else pt
        return prompt_chain(w.prefix[i], pt, w.session[i], min(n, AFFINITY_MAX_TOKENS))

    def shape(self, i: int, model: int) -> Shape:
        """What the client's request says: its prompt, and max_tokens (never the true output)."""
        asked = self._w.max_tokens
        if asked is not None and asked[i] > 0:  # a trace's own max_tokens
            return Shape(self._w.prompt[i], asked[i], "max_tokens")
        if self._max_tokens is not None:
            return Shape(self._w.prompt[i], self._max_tokens, "max_tokens")
        n, source = self._outputs.estimate(self._w.models[model])
        return Shape(self._w.prompt[i], n, source)

    def choose(self, region: int, model: int, i: int) -> int:
        w = self._w
        now = w.t[i]
        if now >= self._next_refresh:
            self.refresh(now)
        req = self._requests[region][model]
        shape = self.shape(i, model)
        live = self._signals[model]
        ss = w.session[i]
        mname = w.models[model]
        cached = (
            self.sent.cached(mname, self.chain(i, w.history[i] if ss >= 0 else 0), self._names)
            if self._affinity
            else {}
        )
        ranking = self._order(req, shape, live, cached)
        best = ranking.best
        if best is None:
            return -1
        pred = self._predict(req, shape, best, live, cached.get(best, 0))
        if pred is not None:
            self._pending[i] = (pred, model, best)
            self.predicted[i] = pred.e2e_ms
        if self._affinity:
            self.sent.record(best, mname, self.chain(i, w.prompt[i]))  # the prompt sent, not the answer
        return self._index[best]

    def complete(self, i: int, site: int, now: float, ttft_ms: float, e2e_ms: float) -> None:
        """Request ``i`` finished at ``site``: learn from it as the daemon does."""
        pending = self._pending.pop(i, None)
        if pending is None:
            return
        pred, model, name = pending
        out = self._w.output[i]
        asked = self._w.max_tokens
        bounded = self._max_tokens is not None or (asked is not None and asked[i] > 0)
        if not bounded:  # as the daemon: only answers nobody bounded say how long they run
            self._outputs.record(self._w.models[model], out)
        cal = calibrate(self._cal[model][name], pred, now, ttft_ms, e2e_ms, out)
        self._cal[model][name] = cal
        sig = self._signals[model][name]
        sig.first_factor, sig.decode_factor = cal.factors(now)

    def refresh(self, now: float) -> None:
        """Every site's calibration factors read again at ``now`` (decayed without evidence)."""
        for cals, sigs in zip(self._cal, self._signals, strict=True):
            for name, cal in cals.items():
                if cal.samples:
                    sigs[name].first_factor, sigs[name].decode_factor = cal.factors(now)
        self._next_refresh = now + REFRESH_S

    def calibration(self, model: int = 0) -> dict[str, Calibration]:
        return dict(self._cal[model])


class FixedPolicy:
    """A choice per (region, model) made once through the Planner: central, nearest."""

    def __init__(self, name: str, choice: Sequence[Sequence[int]]) -> None:
        self.name = name
        self._choice = choice

    def choose(self, region: int, model: int, i: int) -> int:
        return self._choice[region][model]


class RoundRobinPolicy:
    name = "round-robin"

    def __init__(self, placement: SimPlacement) -> None:
        self._lists = placement.eligible
        self._next = [[0] * len(row) for row in placement.eligible]

    def choose(self, region: int, model: int, i: int) -> int:
        sites = self._lists[region][model]
        if not sites:
            return -1
        k = self._next[region][model]
        self._next[region][model] = k + 1 if k + 1 < len(sites) else 0
        return sites[k]


def central_policy(placement: SimPlacement, central: str) -> FixedPolicy:
    """``central`` for every (region, model) where the Planner lists it as eligible; else nothing."""
    c = placement.index.get(central, -1)
    return FixedPolicy("central", [[c if c in row else -1 for row in rows] for rows in placement.eligible])


def nearest_policy(placement: SimPlacement) -> FixedPolicy:
    """The eligible site with the lowest round trip (then name): no load, speed or cost."""
    planner = placement.planner
    choice = []
    for row, eligible in zip(placement.requests, placement.eligible, strict=True):
        picks = []
        for req, sites in zip(row, eligible, strict=True):
            ok = {placement.names[s] for s in sites}
            best = next(
                (c.name for c in planner.static_candidates(req.region, req.model) if c.name in ok), None
            )
            picks.append(placement.index[best] if best is not None else -1)
        choice.append(picks)
    return FixedPolicy("nearest", choice)


def new_signals(sites: Sequence[str], models: int) -> list[dict[str, SiteSignals]]:
    """An idle snapshot per model (what a daemon starts with)."""
    return [build_signals(dict.fromkeys(sites, SiteView()), 0.0) for _ in range(models)]
