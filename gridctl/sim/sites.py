"""The inventory's sites as the simulator sees them: how each serves each model, cost, true speed. Pure.

How a site serves a model (GPU row, replicas, slots per replica, model factor,
KV tokens) comes from :func:`gridctl.core.placement.perf.build_serving`, the same
source the placement predictor reads. What placement never reads is the
site's *true* speed: the table's row times a hidden per-site factor
(:func:`gridctl.lab.truth.speed_factor`, seeded; 1.0 with ``--no-hidden-speed``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gridctl.core.inventory.model import GpuRow, Inventory, Site
from gridctl.core.placement.perf import GpuPerf, Serving, build_serving, choose_site_gpu, model_factor
from gridctl.lab.truth import speed_factor


@dataclass(frozen=True)
class SimulatedSite:
    name: str
    kind: str
    jurisdiction: str
    gpu: GpuPerf  # the table's row for the site's most numerous GPU model (reports)
    gpu_count: int  # every GPU of the site, at least 1 (what a site used is paid for)
    cost_per_gpu_hour: float
    capacity: Mapping[str, int] = field(hash=False)  # model -> concurrent slots
    kv_tokens: int = 0  # prefix-cache capacity of the site's GPUs (when ``serving`` does not say)
    serving: Mapping[str, Serving] = field(default_factory=dict, hash=False)  # model -> how it is served
    speed: float = 1.0  # the hidden true-time multiplier (placement never reads it)

    @property
    def cost_per_hour(self) -> float:
        return self.gpu_count * self.cost_per_gpu_hour

    def serving_of(self, model: str) -> Serving | None:
        """How the site serves ``model``: the inventory's, else one replica over all its GPUs."""
        sv = self.serving.get(model)
        if sv is not None:
            return sv
        cap = self.capacity.get(model, 0)
        if cap <= 0:
            return None
        return Serving(
            self.name, model, self.gpu, self.gpu_count, 1, 1, cap, model_factor(model), self.kv_tokens
        )


def build_sim_site(site: Site, rows: Sequence[GpuRow] = (), seed: int | None = None) -> SimulatedSite:
    gpu, count = choose_site_gpu([(n.gpus.model, n.gpus.count) for n in site.nodes if n.gpus])
    serving = {m.name: sv for m in site.models if (sv := build_serving(site, m.name, rows)) is not None}
    return SimulatedSite(
        name=site.name,
        kind=site.kind,
        jurisdiction=site.jurisdiction,
        gpu=gpu,
        gpu_count=count,
        cost_per_gpu_hour=site.cost_per_gpu_hour,
        capacity={m.name: m.capacity for m in site.models},
        kv_tokens=gpu.kv_tokens * count,
        serving=serving,
        speed=speed_factor(seed, site.name),
    )


def build_sim_sites(inv: Inventory, seed: int | None = None) -> tuple[SimulatedSite, ...]:
    """Every site of the inventory, in its (name) order; ``seed``: their hidden speed (None: 1.0)."""
    return tuple(build_sim_site(s, inv.grid.gpus, seed) for s in inv.sites)


def deploy_only(inv: Inventory, names: Iterable[str]) -> Inventory:
    """The inventory as if only the sites ``names`` served models: every other site keeps its
    place but serves nothing."""
    keep = set(names)
    sites = tuple(s if s.name in keep else replace(s, models=()) for s in inv.sites)
    return replace(inv, sites=sites)


def most_served_model(inv: Inventory) -> str | None:
    """The model the most (undrained) sites serve; ties go to the most slots, then the name."""
    count: Counter[str] = Counter()
    slots: Counter[str] = Counter()
    for s in inv.sites:
        if s.drain:
            continue
        for m in s.models:
            count[m.name] += 1
            slots[m.name] += m.capacity
    if not count:
        return None
    return min(count, key=lambda m: (-count[m], -slots[m], m))


def biggest_site(inv: Inventory, model: str) -> str | None:
    """The default central site: the undrained site with the most GPUs serving ``model``
    (ties: the most slots for it, then the name)."""
    best = []
    for s in inv.sites:
        sv = build_serving(s, model, inv.grid.gpus) if not s.drain else None
        if sv is not None:
            best.append((-sv.gpus, -sv.capacity, s.name))
    return min(best)[2] if best else None


def speeds(sites: Iterable[SimulatedSite]) -> Mapping[str, float]:
    return {s.name: round(s.speed, 4) for s in sites}
