"""Routing tables: for every client region and model, the sites to send traffic to.

Built from the same planner as every live decision, with no live load (the
last recorded health still excludes failed sites). Per (region, model):
``primary`` sites share the traffic by weight; ``backup`` sites take it when
every primary is down. Deterministic: the same inputs give the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gridctl.placement.engine import Live, Planner, Request

DEFAULT_PRIMARIES = 2
DEFAULT_BACKUPS = 2
WEIGHT_SCALE = 100  # weights are integers 1..WEIGHT_SCALE, as nginx and HAProxy want


def _endpoint(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    return {
        "url": url,
        "scheme": scheme,
        "host": parts.hostname,
        "port": port,
        "path": parts.path.rstrip("/"),
    }


def build_routing_table(
    planner: Planner,
    health: Mapping[str, str] | None = None,
    primaries: int = DEFAULT_PRIMARIES,
    backups: int = DEFAULT_BACKUPS,
) -> dict[str, Any]:
    """The table as plain data (what ``route render --format json`` prints).

    ``{"grid", "slo_ms", "routes": [{"region", "model", "primary": [...], "backup": [...]}]}``;
    each site entry has ``site``, ``endpoint`` (url, scheme, host, port, path),
    ``rtt_ms``, ``capacity`` and, for primaries, ``weight``. A route with no
    eligible site has empty lists (and is still listed, so its absence is visible).
    """
    live = Live(health=dict(health or {}))
    models = sorted({m.name for s in planner.sites.values() for m in s.models})
    routes = []
    for region in sorted(planner.regions):
        for model in models:
            names = planner.rank(Request(region, model), live, limit=primaries + backups)
            static = {s.name: s for s in planner.static_candidates(region, model)}
            chosen = [static[n] for n in names]
            head, tail = chosen[:primaries], chosen[primaries:]
            total = sum(s.capacity for s in head) or 1
            routes.append(
                {
                    "region": region,
                    "model": model,
                    "primary": [
                        {
                            "site": s.name,
                            "endpoint": _endpoint(planner.sites[s.name].endpoint),
                            "rtt_ms": s.rtt_ms,
                            "capacity": s.capacity,
                            "weight": max(1, round(WEIGHT_SCALE * s.capacity / total)),
                        }
                        for s in head
                    ],
                    "backup": [
                        {
                            "site": s.name,
                            "endpoint": _endpoint(planner.sites[s.name].endpoint),
                            "rtt_ms": s.rtt_ms,
                            "capacity": s.capacity,
                        }
                        for s in tail
                    ],
                }
            )
    return {"grid": planner.grid_name, "slo_ms": planner.default_slo_ms, "routes": routes}
