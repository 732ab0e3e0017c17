"""What the daemon knows about each site right now, and the order in which to try sites.

``GridState`` wraps the placement ``Planner`` (the same code as ``route test``)
with live signals: in-flight requests, active probe results, the sites' own
load from their /metrics, circuit breakers, moving averages, and the prefix
index for KV-cache affinity. ``order()`` is the whole decision; it takes
``now`` so it can be tested as plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gridctl.daemon.affinity import PrefixIndex
from gridctl.placement.engine import rendezvous
from gridctl.daemon.breaker import Breaker, Ewma
from gridctl.daemon.config import DaemonConfig
from gridctl.inventory.model import Inventory, Site
from gridctl.placement.engine import Decision, Live, Planner, Request


@dataclass
class SiteState:
    site: Site
    breaker: Breaker
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    ttft_s: Ewma = field(default_factory=Ewma)
    latency_s: Ewma = field(default_factory=Ewma)
    error_rate: Ewma = field(default_factory=lambda: Ewma(alpha=0.1))
    probe_ok: bool | None = None  # None: not probed yet
    probe_error: str | None = None
    probe_rtt_ms: float | None = None
    waiting: float | None = None  # the site's own queue (vLLM num_requests_waiting)
    kv_usage: float | None = None  # 0..1 (vLLM gpu_cache_usage_perc)
    metrics_supported: bool = True

    def capacity(self, model: str) -> int:
        return next((m.capacity for m in self.site.models if m.name == model), 0)

    def total_capacity(self) -> int:
        return sum(m.capacity for m in self.site.models) or 1

    def utilization(self, model: str) -> float:
        return self.in_flight / (self.capacity(model) or self.total_capacity())

    def saturated(self, cfg: DaemonConfig, model: str) -> bool:
        """Too busy for affinity to add to it (a cache hit is not worth a queue)."""
        if self.in_flight >= cfg.affinity_max_util * (self.capacity(model) or self.total_capacity()):
            return True
        if self.waiting is not None and self.waiting > 0:
            return True
        return self.kv_usage is not None and self.kv_usage >= 0.95

    def status(self, recorded: str | None, now: float) -> str:
        """The health placement sees: live probes win over the recorded verdict."""
        if self.probe_ok is False:
            return "failed"
        if self.breaker.state(now) == "open":
            return "failed"
        if self.probe_ok is None and recorded is not None:
            return recorded
        return "ok"

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
        cfg: DaemonConfig,
        probes: Mapping[str, Mapping[str, float]] | None = None,
        recorded_health: Mapping[str, str] | None = None,
        previous: GridState | None = None,
    ) -> None:
        self.inv = inv
        self.cfg = cfg
        self.planner = Planner(inv, probes)
        self.recorded = dict(recorded_health or {})
        old = previous.sites if previous else {}
        self.sites: dict[str, SiteState] = {}
        for site in inv.sites:
            kept = old.get(site.name)
            if kept is not None:  # a reload keeps live signals of sites that stay
                kept.site = site
                self.sites[site.name] = kept
            else:
                self.sites[site.name] = SiteState(site, Breaker(cfg.breaker_failures, cfg.breaker_cooldown_s))
        self.prefixes: PrefixIndex = previous.prefixes if previous else PrefixIndex()
        self.prefixes.forget(self.sites)
        self.models = sorted({m.name for s in inv.sites for m in s.models})

    def live(self, now: float) -> Live:
        return Live(
            health={n: s.status(self.recorded.get(n), now) for n, s in self.sites.items()},
            in_flight={n: s.in_flight for n, s in self.sites.items()},
        )

    def order(self, request: Request, hashes: Sequence[bytes], session: str | None, now: float) -> list[str]:
        """Sites to try, in order: placement's ranking with live load, minus open
        circuits; a session key picks by rendezvous hashing among them; otherwise
        the site most likely to hold the prompt's prefix goes first, unless it is
        saturated or busier than the first-ranked site by more than ``affinity_balance``."""
        ranked = self.planner.rank(request, self.live(now))
        ranked = [n for n in ranked if self.sites[n].breaker.allows(now)]
        if not ranked:
            return ranked
        if session:
            return rendezvous(session, ranked)
        if hashes:
            # a cache hit is worth less than a queue: affinity only picks a site that is not
            # saturated and not much busier than the site placement ranks first (load balance)
            best, best_len = None, 0
            limit = self.sites[ranked[0]].utilization(request.model) + self.cfg.affinity_balance
            for name in ranked:
                n = self.prefixes.match(name, hashes)
                st = self.sites[name]
                if (
                    n > best_len
                    and not st.saturated(self.cfg, request.model)
                    and st.utilization(request.model) <= limit
                ):
                    best, best_len = name, n
            if best is not None and best != ranked[0]:
                ranked.remove(best)
                ranked.insert(0, best)
        return ranked

    def eligible_ignoring_load(self, request: Request, now: float) -> bool:
        """Would any site serve this request if none were busy? (429 vs 503)"""
        live = self.live(now)
        return bool(self.planner.rank(request, Live(health=live.health)))

    def explain(self, request: Request, now: float) -> Decision:
        return self.planner.explain(request, self.live(now))
