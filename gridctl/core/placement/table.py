"""Routing tables: for every client region and model, the sites to send traffic to.

Built by the same decision as every live request (:meth:`Planner.order`), for one
request shape (``route render --prompt-tokens/--max-tokens``, default
:data:`~gridctl.core.placement.decision.DEFAULT_SHAPE`), with no live load (the last
recorded health still excludes failed sites). Per (region, model):

- ``primary``: the sites predicted to meet the SLO for that shape, in the decision's
  order (cheapest first), at most ``primaries``; each weighted by its **predicted
  capacity within the SLO**: how many requests of the shape it can run at once with
  each still predicted within the budget (SLO less the margin;
  :func:`~gridctl.core.placement.predict.capacity_within`), scaled to 1..100 over the
  route's primaries. A site that cannot meet the SLO even idle (capacity 0) is never
  a primary while one that can exists.
- when no site is predicted to meet the SLO, the route says ``"meets_slo": false``
  and its primaries are the fastest predicted sites (the daemon's default: send to
  the fastest, expected to miss), weighted by their capacity;
- ``backup``: the next sites of the decision's order, taking the traffic when every
  primary is down.

Deterministic: the same inputs give the same table; the inventory's order never matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gridctl.core.placement.decision import DEFAULT_SHAPE, SLO_MARGIN, Request
from gridctl.core.placement.engine import Planner
from gridctl.core.placement.predict import Shape, capacity_within
from gridctl.core.placement.signals import Live, health_live

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


def _route(
    planner: Planner,
    region: str,
    model: str,
    shape: Shape,
    live: Live,
    budget_ms: float,
    primaries: int,
    backups: int,
) -> dict[str, Any]:
    ranking = planner.order(Request(region, model), shape, live)
    static = {s.name: s for s in planner.static_candidates(region, model)}
    within: dict[str, int] = {}

    def capacity(name: str) -> int:  # only for the sites the table lists (10,000 sites: a few)
        if name not in within:
            s = static[name]
            within[name] = capacity_within(s.serving, shape, s.rtt_ms, budget_ms)
        return within[name]

    predicted = dict(zip(ranking.sites, ranking.predicted_ms, strict=True))
    head: list[str] = []
    for n in ranking.sites[: ranking.feasible]:
        if len(head) >= primaries:
            break
        if capacity(n) > 0:
            head.append(n)
    meets = bool(head)
    weight_of = within
    if not head:  # no site meets the SLO: the fastest, by their slots (expected to miss)
        head = list(ranking.sites[:primaries])
        weight_of = {n: static[n].capacity for n in head}
    chosen = set(head)
    tail: list[str] = []
    for n in ranking.sites:
        if len(tail) >= backups:
            break
        if n not in chosen:
            tail.append(n)
    for n in tail:
        capacity(n)
    total = sum(weight_of[n] for n in head) or 1

    def entry(name: str) -> dict[str, Any]:
        s = static[name]
        return {
            "site": name,
            "endpoint": _endpoint(planner.sites[name].endpoint),
            "rtt_ms": s.rtt_ms,
            "capacity": s.capacity,
            "predicted_ms": round(predicted[name], 3),
            "capacity_within_slo": capacity(name),
        }

    return {
        "region": region,
        "model": model,
        "meets_slo": meets,
        "primary": [{**entry(n), "weight": max(1, round(WEIGHT_SCALE * weight_of[n] / total))} for n in head],
        "backup": [entry(n) for n in tail],
    }


def build_routing_table(
    planner: Planner,
    health: Mapping[str, str] | None = None,
    primaries: int = DEFAULT_PRIMARIES,
    backups: int = DEFAULT_BACKUPS,
    shape: Shape = DEFAULT_SHAPE,
) -> dict[str, Any]:
    """The table as plain data (what ``route render --format json`` prints).

    ``{"grid", "slo_ms", "budget_ms", "shape": {"prompt_tokens", "max_tokens"}, "routes":
    [{"region", "model", "meets_slo", "primary": [...], "backup": [...]}]}``; each site entry
    has ``site``, ``endpoint`` (url, scheme, host, port, path), ``rtt_ms``, ``capacity``,
    ``predicted_ms`` (idle, for the shape), ``capacity_within_slo`` and, for primaries,
    ``weight``. A route with no eligible site has empty lists (and is still listed, so its
    absence is visible; ``meets_slo`` false).
    """
    live = health_live(dict(health or {}))
    slo = planner.default_slo_ms
    budget = slo * (1.0 - SLO_MARGIN)
    models = sorted({m.name for s in planner.sites.values() for m in s.models})
    routes = [
        _route(planner, region, model, shape, live, budget, primaries, backups)
        for region in sorted(planner.regions)
        for model in models
    ]
    return {
        "grid": planner.grid_name,
        "slo_ms": slo,
        "budget_ms": round(budget, 3),
        "shape": {"prompt_tokens": shape.prompt_tokens, "max_tokens": shape.output_tokens},
        "routes": routes,
    }
