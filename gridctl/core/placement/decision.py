"""What a placement decision is about and what it returns: the request, each candidate
with its prediction, the exclusions with their reasons, the ranking; and the documented JSON
shape of an explanation. Pure data; :mod:`gridctl.core.placement.engine` computes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gridctl.core.inventory.model import Site
from gridctl.core.placement.predict import Prediction, Shape

SLO_MARGIN = 0.1
# route test / route render without --prompt-tokens / --max-tokens: a short chat answer
DEFAULT_SHAPE = Shape(256, 32, "given")


@dataclass(frozen=True)
class Request:
    region: str
    model: str
    jurisdiction: str | None = None  # a code or group (EU): narrows where the data may go
    slo_ms: float | None = None  # default: the grid's slo_ms


@dataclass(frozen=True)
class Candidate:
    site: str
    rtt_ms: float
    latency_source: str
    prediction: Prediction
    feasible: bool
    cost_per_request: float  # currency units (the inventory's cost_per_gpu_hour's)
    cost_per_1k_tokens: float
    in_flight: int
    capacity: int
    load: int  # max(in flight, the site's running count)
    waiting: int
    cached_tokens: int
    first_factor: float
    decode_factor: float
    gpu: str
    replicas: int
    tensor_parallel: int


@dataclass(frozen=True)
class Exclusion:
    site: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    request: Request
    shape: Shape
    slo_ms: float
    budget_ms: float  # SLO less the margin: the feasibility bound
    ranked: tuple[Candidate, ...]  # feasible (cheapest first), then the others (fastest first)
    excluded: tuple[Exclusion, ...]  # by name

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None

    @property
    def feasible(self) -> int:
        return sum(1 for c in self.ranked if c.feasible)


@dataclass(frozen=True)
class Ranking:
    """The decision's result in order: ``sites[:feasible]`` are predicted to meet the SLO."""

    sites: tuple[str, ...]
    feasible: int
    predicted_ms: tuple[float, ...]  # end to end, per site in ``sites``

    @property
    def best(self) -> str | None:
        return self.sites[0] if self.sites else None

    @property
    def expected_miss(self) -> bool:
        return bool(self.sites) and self.feasible == 0


EMPTY = Ranking((), 0, ())


def _finite(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def candidate_dict(c: Candidate, site: Site, rank: int) -> dict[str, Any]:
    return {
        "rank": rank,
        "site": c.site,
        "kind": site.kind,
        "jurisdiction": site.jurisdiction,
        "endpoint": site.endpoint,
        "feasible": c.feasible,
        **c.prediction.to_dict(),
        "latency_source": c.latency_source,
        "cost_per_request": _finite(c.cost_per_request),
        "cost_per_1k_tokens": _finite(c.cost_per_1k_tokens),
        "gpu": c.gpu,
        "replicas": c.replicas,
        "tensor_parallel": c.tensor_parallel,
        "load": {"in_flight": c.in_flight, "running": c.load, "waiting": c.waiting, "capacity": c.capacity},
        "cached_tokens": c.cached_tokens,
        "calibration": {"first_factor": round(c.first_factor, 4), "decode_factor": round(c.decode_factor, 4)},
    }


def decision_dict(decision: Decision, sites: Mapping[str, Site]) -> dict[str, Any]:
    """The documented JSON shape of an explanation (``route test -o json``, ``/grid/route``)."""
    req = decision.request
    best = decision.best
    return {
        "request": {
            "region": req.region,
            "model": req.model,
            "jurisdiction": req.jurisdiction,
            "slo_ms": decision.slo_ms,
            "prompt_tokens": decision.shape.prompt_tokens,
            "max_tokens": decision.shape.output_tokens,
            "output_tokens_from": decision.shape.output_source,
        },
        "budget_ms": round(decision.budget_ms, 3),
        "slo_margin": SLO_MARGIN,
        "expected_to_meet_slo": bool(best and best.feasible),
        "ranked": [candidate_dict(c, sites[c.site], i + 1) for i, c in enumerate(decision.ranked)],
        "excluded": [{"site": e.site, "reasons": list(e.reasons)} for e in decision.excluded],
    }
