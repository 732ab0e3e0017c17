"""The inventory's sites as the simulator sees them: GPUs, slots, cost. Pure.

GPU performance comes from the lab's table (:mod:`gridctl.placement.perf`): the
simulator and the lab sites time requests with the same figures and formulas.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from gridctl.inventory.model import Inventory, Site
from gridctl.placement.perf import GpuPerf, choose_site_gpu


@dataclass(frozen=True)
class SimulatedSite:
    name: str
    kind: str
    jurisdiction: str
    gpu: GpuPerf  # the table's row for the site's most numerous GPU model
    gpu_count: int  # at least 1 (a site without GPUs listed is simulated as one default GPU)
    cost_per_gpu_hour: float
    capacity: Mapping[str, int] = field(hash=False)  # model -> concurrent slots
    kv_tokens: int = 0  # prefix-cache capacity: the GPU row's KV tokens x GPU count

    @property
    def cost_per_hour(self) -> float:
        return self.gpu_count * self.cost_per_gpu_hour


def build_sim_site(site: Site) -> SimulatedSite:
    gpu, count = choose_site_gpu([(n.gpus.model, n.gpus.count) for n in site.nodes if n.gpus])
    return SimulatedSite(
        name=site.name,
        kind=site.kind,
        jurisdiction=site.jurisdiction,
        gpu=gpu,
        gpu_count=count,
        cost_per_gpu_hour=site.cost_per_gpu_hour,
        capacity={m.name: m.capacity for m in site.models},
        kv_tokens=gpu.kv_tokens * count,
    )


def build_sim_sites(inv: Inventory) -> tuple[SimulatedSite, ...]:
    """Every site of the inventory, in its (name) order."""
    return tuple(build_sim_site(s) for s in inv.sites)


def deploy_only(inv: Inventory, names: Iterable[str]) -> Inventory:
    """The inventory as if only the sites ``names`` served models: every other site keeps its
    place (and its cost in the placement score's scale) but serves nothing."""
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
    best = [
        (-build_sim_site(s).gpu_count, -next(m.capacity for m in s.models if m.name == model), s.name)
        for s in inv.sites
        if not s.drain and s.serves(model)
    ]
    return min(best)[2] if best else None
