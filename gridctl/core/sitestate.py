"""What the daemon knows about each site right now: the snapshot the placement decision reads.

Pure: no file, socket or clock of its own (time is a parameter); the daemon's side
(each site's TLS context from its files) is in :mod:`gridctl.daemon.state`.

``GridState`` wraps the placement ``Planner`` (the same code as ``route test``,
``route render`` and the simulator) with live signals. It keeps one
:class:`~gridctl.core.placement.signals.SiteSignals` per (model, site), updated in
place as things happen:

- ``in_flight``: this daemon's requests in flight to the site **for that model**
  (a site's speech traffic does not count against its LLM slots), changed as
  attempts start and end;
- ``running`` / ``waiting``: the site's own ``vllm:num_requests_running`` /
  ``vllm:num_requests_waiting`` for the model (their ``model_name`` label), from
  its /metrics at each probe: the load that several daemons and ``--workers`` share;
- ``first_factor`` / ``decode_factor``: the site's calibration for the model
  (:class:`~gridctl.core.placement.predict.Calibration`), refreshed when an answer
  teaches it something and, decayed toward the prior, at every probe round;
- ``health`` / ``open``: from the probes, the recorded health and the circuit
  breaker, written at decision time (a breaker's cooldown ends with time).

:func:`gridctl.core.placement.signals.write_signals` is the one place plain readings become signals
(the simulator's too); the test suite drives it (and ``GridState.observe``) from plain data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gridctl.core.breaker import Breaker, Ewma
from gridctl.core.inventory.model import Inventory, Site
from gridctl.core.metrics import SiteLoad
from gridctl.core.placement.decision import Decision, Ranking
from gridctl.core.placement.decision import Request as Placement
from gridctl.core.placement.engine import Planner
from gridctl.core.placement.predict import PRIOR, Calibration, Prediction, Shape, calibrate
from gridctl.core.placement.prefix import Chain, SentIndex, text_chain
from gridctl.core.placement.signals import SiteSignals

if TYPE_CHECKING:  # a value the shell builds (daemon/state.py) and hands in
    import ssl


class StateSettings(Protocol):
    """What the state needs of the daemon's configuration (``DaemonConfig`` has it)."""

    @property
    def breaker_failures(self) -> int: ...
    @property
    def breaker_cooldown_s(self) -> float: ...
    @property
    def affinity_block_chars(self) -> int: ...
    @property
    def affinity_block_tokens(self) -> int: ...


def site_health(probe_ok: bool | None, recorded: str | None, breaker: str) -> str:
    """The health placement sees: live probes win over the recorded verdict; an open
    circuit is a failure until its cooldown ends."""
    if probe_ok is False or breaker == "open":
        return "failed"
    if probe_ok is None and recorded is not None:
        return recorded
    return "ok"


@dataclass
class SiteState:
    site: Site
    breaker: Breaker
    signals: dict[str, SiteSignals] = field(default_factory=dict)  # model -> its signals
    calibration: dict[str, Calibration] = field(default_factory=dict)  # model -> correction
    requests: int = 0
    failures: int = 0
    ttft_s: Ewma = field(default_factory=Ewma)
    latency_s: Ewma = field(default_factory=Ewma)
    error_rate: Ewma = field(default_factory=lambda: Ewma(alpha=0.1))
    probe_ok: bool | None = None  # None: not probed yet
    probe_error: str | None = None
    probe_rtt_ms: float | None = None
    waiting: float | None = None  # the site's own queue, all models (vLLM num_requests_waiting)
    kv_usage: float | None = None  # 0..1 (vLLM gpu_cache_usage_perc)
    metrics_supported: bool = True
    tls: ssl.SSLContext | None = None  # toward the site: its tls_ca/tls_cert/tls_key (None: the system's)

    def __post_init__(self) -> None:
        self.fit_models()

    def fit_models(self) -> None:
        """One signals object per model the site serves (a reload may add or drop models)."""
        models = [m.name for m in self.site.models]
        self.signals = {m: self.signals.get(m) or SiteSignals() for m in models}

    @property
    def in_flight(self) -> int:
        """This daemon's requests in flight to the site, all models."""
        return sum(s.in_flight for s in self.signals.values())

    def set_load(self, load: SiteLoad) -> None:
        """What the site's /metrics said (``NO_LOAD`` when they could not be read)."""
        self.waiting = load.waiting_total
        self.kv_usage = load.kv_usage
        for model, sig in self.signals.items():
            sig.running, sig.waiting = load.for_model(model)

    def cal(self, model: str) -> Calibration:
        return self.calibration.get(model, PRIOR)

    def status(self, recorded: str | None, now: float) -> str:
        return site_health(self.probe_ok, recorded, self.breaker.state(now))

    def refresh(self, model: str, recorded: str | None, now: float) -> SiteSignals:
        """The site's signals for ``model`` with health and breaker brought up to ``now`` (the
        calibration factors are written when an answer teaches something and at each probe
        round, not recomputed per request)."""
        sig = self.signals[model]
        sig.health = self.status(recorded, now)
        sig.open = not self.breaker.allows(now)
        return sig

    def learn(
        self,
        model: str,
        predicted: Prediction,
        now: float,
        ttft_ms: float | None,
        e2e_ms: float,
        output_tokens: int | None,
    ) -> Calibration:
        """One answer's evidence: the model's calibration at this site moves, and its
        signals carry the new factors at once."""
        cal = calibrate(self.cal(model), predicted, now, ttft_ms, e2e_ms, output_tokens)
        self.calibration[model] = cal
        sig = self.signals.get(model)
        if sig is not None:
            sig.first_factor, sig.decode_factor = cal.factors(now)
        return cal

    def to_dict(self, recorded: str | None, now: float) -> dict[str, Any]:
        return {
            "site": self.site.name,
            "endpoint": self.site.endpoint,
            "status": self.status(recorded, now),
            "recorded_health": recorded,
            "probe_ok": self.probe_ok,
            "probe_error": self.probe_error,
            "probe_rtt_ms": self.probe_rtt_ms,
            "breaker": self.breaker.state(now),
            "in_flight": self.in_flight,
            "capacity": {m.name: m.capacity for m in self.site.models},
            "models": {
                m: {
                    "in_flight": s.in_flight,
                    "site_running": s.running,
                    "site_waiting": s.waiting,
                    "calibration": self.cal(m).to_dict(now),
                }
                for m, s in sorted(self.signals.items())
            },
            "requests": self.requests,
            "failures": self.failures,
            "error_rate": self.error_rate.value,
            "ttft_ms": None if self.ttft_s.value is None else round(self.ttft_s.value * 1000, 3),
            "latency_ms": None if self.latency_s.value is None else round(self.latency_s.value * 1000, 3),
            "site_waiting": self.waiting,
            "site_kv_usage": self.kv_usage,
        }


class GridState:
    def __init__(
        self,
        inv: Inventory,
        cfg: StateSettings,
        probes: Mapping[str, Mapping[str, float]] | None = None,
        recorded_health: Mapping[str, str] | None = None,
        previous: GridState | None = None,
        calibration: Mapping[str, Mapping[str, Calibration]] | None = None,
        files: Mapping[str, str] | None = None,
        stale: Mapping[str, Mapping[str, Any]] | None = None,
        contexts: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        """``previous``: the state a reload replaces (live signals, calibration and the prefix
        index of sites that stay are kept); ``calibration``: site -> model -> what an earlier
        run learned (read from ``.state`` at start-up); ``files``: the text of each inventory
        file ``inv`` was built from (the last good versions a later reload falls back on);
        ``stale``: per file whose version on disk is broken, what runs instead and why;
        ``contexts``: each TLS site's context toward it (loaded from its files beforehand)."""
        self.inv = inv
        self.files = dict(files or {})
        self.stale = {rel: dict(v) for rel, v in (stale or {}).items()}
        self.cfg = cfg
        self.planner = Planner(inv, probes)
        self.recorded = dict(recorded_health or {})
        old = previous.sites if previous else {}
        contexts = contexts or {}
        self.sites: dict[str, SiteState] = {}
        for site in inv.sites:
            kept = old.get(site.name)
            if kept is not None:  # a reload keeps live signals of sites that stay
                kept.site = site
                kept.fit_models()
                self.sites[site.name] = kept
            else:
                st = SiteState(site, Breaker(cfg.breaker_failures, cfg.breaker_cooldown_s))
                for model, cal in (calibration or {}).get(site.name, {}).items():
                    st.calibration[model] = cal
                    if model in st.signals:  # as learnt: decayed on by the probe rounds from here
                        st.signals[model].first_factor, st.signals[model].decode_factor = cal.factors(
                            cal.at or 0.0
                        )
                self.sites[site.name] = st
            self.sites[site.name].tls = contexts.get(site.name)
        # per (site, model), what this daemon sent there, kept across a reload
        self.prefixes: SentIndex = previous.prefixes if previous else SentIndex(self.index_capacity)
        self.prefixes.capacity = self.index_capacity
        self.prefixes.forget(self.sites)
        self.models = sorted({m.name for s in inv.sites for m in s.models})
        self._by_model: dict[str, list[tuple[str, SiteState]]] = {
            model: [(n, st) for n, st in self.sites.items() if model in st.signals] for model in self.models
        }

    # -- the snapshot -------------------------------------------------------------------

    def live(self, model: str, now: float) -> dict[str, SiteSignals]:
        """The snapshot for ``model``: its signals at every site serving it, brought to ``now``."""
        recorded = self.recorded
        return {n: st.refresh(model, recorded.get(n), now) for n, st in self._by_model.get(model, ())}

    def observe(
        self,
        site: str,
        model: str,
        *,
        in_flight: int | None = None,
        running: int | None = None,
        waiting: int | None = None,
        calibration: Calibration | None = None,
        probe_ok: bool | None = None,
        breaker_opened_at: float | None = None,
    ) -> None:
        """Set plain readings of one site for one model (what the request path, the probes,
        the breaker and calibration write as they happen; a test writes them directly).
        ``probe_ok=False``: its last probe failed (the site is out); ``breaker_opened_at``:
        its circuit opened then (out for the breaker's cooldown, then one trial)."""
        st = self.sites[site]
        sig = st.signals[model]
        if probe_ok is not None:
            st.probe_ok = probe_ok
        if breaker_opened_at is not None:
            st.breaker.opened_at = breaker_opened_at
            st.breaker.trial = None
        if in_flight is not None:
            sig.in_flight = in_flight
        if running is not None:
            sig.running = running
        if waiting is not None:
            sig.waiting = waiting
        if calibration is not None:
            st.calibration[model] = calibration
            sig.first_factor, sig.decode_factor = calibration.factors(calibration.at or 0.0)

    def refresh_factors(self, now: float) -> None:
        """Every site's calibration factors decayed to ``now`` (the probe loop calls it)."""
        for st in self.sites.values():
            for model, sig in st.signals.items():
                sig.first_factor, sig.decode_factor = st.cal(model).factors(now)

    def prompt_chain(self, text: str) -> list[tuple[bytes, int]]:
        """The prefix-cache chain of a prompt's text: its first 64 blocks of ``affinity_block_chars``."""
        return text_chain(text, self.cfg.affinity_block_chars, self.cfg.affinity_block_tokens, 64)

    def index_capacity(self, site: str, model: str) -> int:
        """Tokens the prefix index keeps for (site, model): what the GPUs serving the model hold
        (the site forgets beyond that), at most 50,000 blocks."""
        cap = 50_000 * self.cfg.affinity_block_tokens
        serving = self.planner.serving(site, model)
        return min(cap, serving.kv_tokens) if serving is not None else cap

    def cached_tokens(self, model: str, chain: Chain, sites: Sequence[str] | None = None) -> dict[str, int]:
        """Site -> prompt tokens it probably holds in its prefix cache for ``model`` (what was sent
        there)."""
        return self.prefixes.cached(model, chain, self.sites if sites is None else sites)

    # -- decisions ----------------------------------------------------------------------

    def order(
        self,
        request: Placement,
        shape: Shape,
        cached: Mapping[str, int] | None,
        session: str | None,
        now: float,
    ) -> Ranking:
        """The placement decision over the live snapshot: sites to try, best first."""
        return self.planner.order(request, shape, self.live(request.model, now), cached, session)

    def predict(self, request: Placement, shape: Shape, site: str, cached_tokens: int) -> Prediction | None:
        """The prediction a request is sent to ``site`` with (for its header and calibration).
        Only the site's load and calibration enter it, never its health or breaker: its signals
        as they are, without :meth:`live`'s refresh of every site serving the model."""
        st = self.sites.get(site)
        sig = st.signals.get(request.model) if st is not None else None
        live = {site: sig} if sig is not None else {}
        return self.planner.predict(request, shape, site, live, cached_tokens)

    def eligible_ignoring_load(self, request: Placement, shape: Shape, now: float) -> bool:
        """Would any site serve this request if none were busy? (429 vs 503)"""
        idle = {n: SiteSignals(health=sig.health) for n, sig in self.live(request.model, now).items()}
        return bool(self.planner.order(request, shape, idle).sites)

    def feasible_when_free(
        self, request: Placement, shape: Shape, cached: Mapping[str, int] | None, now: float
    ) -> bool:
        """Would a site be predicted to meet the SLO once this daemon's own requests there
        ended (the sites' queues, health and calibration as they are)? Strict: wait, or refuse."""
        free = {
            n: SiteSignals(
                sig.health, sig.open, 0, sig.running, sig.waiting, sig.first_factor, sig.decode_factor
            )
            for n, sig in self.live(request.model, now).items()
        }
        return self.planner.order(request, shape, free, cached).feasible > 0

    def explain(
        self,
        request: Placement,
        shape: Shape,
        cached: Mapping[str, int] | None,
        now: float,
        session: str | None = None,
    ) -> Decision:
        return self.planner.explain(request, shape, self.live(request.model, now), cached or {}, session)

    # -- persistence --------------------------------------------------------------------

    def calibration_dict(self, now: float) -> dict[str, dict[str, dict[str, Any]]]:
        """site -> model -> ``Calibration.to_dict(now)``, for the models the site still serves
        with evidence."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for n, st in sorted(self.sites.items()):
            models = {
                m: cal.to_dict(now)
                for m, cal in sorted(st.calibration.items())
                if cal.samples and m in st.signals
            }
            if models:
                out[n] = models
        return out


def parse_calibration(
    data: Mapping[str, Any], now: float, wall_now: float | None = None
) -> dict[str, dict[str, Calibration]]:
    """What :meth:`GridState.calibration_dict` wrote (site -> model -> entry), read back at
    ``now`` (``Calibration.from_dict``: the factors as written, clamped, decaying on from the
    entry's ``written_at`` when ``wall_now`` (Unix seconds) is given, so the time the daemon
    was down counts). Bad entries and entries without evidence are dropped."""
    out: dict[str, dict[str, Calibration]] = {}
    for site, models in data.items():
        if not isinstance(models, Mapping):
            continue
        for model, entry in models.items():
            if isinstance(entry, Mapping):
                written = entry.get("written_at")
                down = 0.0
                if (
                    wall_now is not None
                    and isinstance(written, int | float)
                    and not isinstance(written, bool)
                ):
                    down = wall_now - float(written) if math.isfinite(float(written)) else 0.0
                cal = Calibration.from_dict(entry, now, down)
                if cal.samples:
                    out.setdefault(str(site), {})[str(model)] = cal
    return out
