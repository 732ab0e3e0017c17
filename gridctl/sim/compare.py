"""The service behind ``gridctl sim``: one workload, every policy asked for, the figures.

``plan_run`` resolves what to simulate (profile or trace, model, central site,
deployed sites) from the options and the inventory, and raises a located error
for anything that cannot work; ``run_plan`` generates the requests and runs
each policy on the same ones. Reading files (scenario, trace) happens in
``plan_run``; the rest is pure.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gridctl.core.errors import UsageError
from gridctl.core.inventory.model import Inventory
from gridctl.core.placement.engine import Planner
from gridctl.core.suggest import closest, did_you_mean
from gridctl.sim.engine import Outcome, build_pools, simulate
from gridctl.sim.policy import (
    EXTRA_POLICIES,
    POLICIES,
    GridPolicy,
    RoundRobinPolicy,
    SimPlacement,
    central_policy,
    nearest_policy,
    new_signals,
)
from gridctl.sim.profiles import PROFILES, Profile, load_scenario, scenario_path
from gridctl.sim.report import summarize, time_series
from gridctl.sim.sites import (
    SimulatedSite,
    biggest_site,
    build_sim_sites,
    deploy_only,
    most_served_model,
    speeds,
)
from gridctl.sim.traffic import Workload, generate_workload, region_rates


@dataclass(frozen=True)
class SimOptions:
    profile: str | None = None  # a built-in name, a scenario name in <inventory>/scenarios, or a file
    trace: Path | None = None
    policies: tuple[str, ...] = POLICIES
    duration_s: float | None = None
    seed: int = 1
    central: str | None = None
    model: str | None = None
    sites: str | None = None  # target pattern of the sites the service is deployed on
    scale: float = 1.0  # multiplies every region's rate
    slo_ms: float | None = None
    hidden_speed: bool = True  # each site's true speed: its GPU row x a hidden factor drawn from the seed


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, resolved; nothing read from files after this."""

    inv: Inventory  # with only the deployed sites serving models
    probes: Mapping[str, Mapping[str, float]]
    profile: Profile | None
    workload: Workload | None  # given (trace), else generated from the profile
    model: str
    central: str | None
    deployed: tuple[str, ...]
    policies: tuple[str, ...]
    seed: int
    scale: float
    slo_ms: float
    duration_s: float
    queue_per_slot: float
    trace: str | None = None
    hidden_speed: bool = True


def parse_policies(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    known = POLICIES + EXTRA_POLICIES
    bad = [p for p in names if p not in known]
    if bad or not names:
        near = closest(bad[0], known) if bad else []
        raise UsageError(
            f"--policy {text!r}: unknown policy {', '.join(bad) or '(none)'}",
            hint=(f"did you mean '{near[0]}'? " if near else "")
            + f"give a comma-separated list of: {', '.join(known)}",
        )
    return names


def resolve_profile(inv: Inventory, name: str) -> Profile:
    """A scenario file of the inventory (or a path) when there is one, else the built-in profile."""
    regions = {r.name: r for r in inv.grid.regions}
    sites = {s.name: s for s in inv.sites}
    path = scenario_path(inv.root, name)
    if path is not None:
        if not path.is_file():
            raise UsageError(
                f"--profile {name}: no such scenario file",
                hint=f"give a YAML file, or a profile name: {', '.join(PROFILES)}",
            )
        return load_scenario(path, inv.root, regions, sites)
    if name in PROFILES:
        return PROFILES[name]
    near = closest(name, PROFILES)
    raise UsageError(
        f"--profile {name}: no built-in profile and no {inv.root}/scenarios/{name}.yaml",
        hint=(f"did you mean '{near[0]}'? " if near else "") + f"built-in: {', '.join(PROFILES)}",
    )


def plan_run(inv: Inventory, probes: Mapping[str, Mapping[str, float]], opts: SimOptions) -> Plan:
    if opts.trace is not None and opts.profile is not None:
        raise UsageError(
            "--profile and --trace exclude each other", hint="simulate a profile or replay a trace"
        )
    if not inv.grid.regions:
        raise UsageError("the inventory has no client regions", hint="add regions to grid.yaml")
    profile = resolve_profile(inv, opts.profile or "voice-burst") if opts.trace is None else None
    if profile is not None and profile.add_sites:
        inv = replace(inv, sites=tuple(sorted((*inv.sites, *profile.add_sites), key=lambda s: s.name)))
    model = opts.model or (profile.model if profile else None) or most_served_model(inv)
    if model is None:
        raise UsageError("no site serves any model", hint="add models to the sites, or give --model")
    deployed, sub = _deployment(inv, opts.sites or (profile.sites if profile else None))
    central = _central(inv, sub, model, profile, opts)
    slo = opts.slo_ms or (profile.slo_ms if profile else inv.grid.slo_ms)
    workload, duration = _traffic(inv, profile, opts, model, slo)
    return Plan(
        inv=sub,
        probes=probes,
        profile=profile,
        workload=workload,
        model=model,
        central=central,
        deployed=deployed,
        policies=opts.policies,
        seed=opts.seed,
        scale=opts.scale,
        slo_ms=slo,
        duration_s=duration,
        queue_per_slot=profile.queue_per_slot if profile else 1.0,
        trace=str(opts.trace) if opts.trace is not None else None,
        hidden_speed=opts.hidden_speed,
    )


def _deployment(inv: Inventory, pattern: str | None) -> tuple[tuple[str, ...], Inventory]:
    """The sites the model is deployed on (``pattern``; None: all) and the inventory where only
    they serve it."""
    from gridctl.core.inventory.targets import select_sites

    if not pattern:
        return tuple(s.name for s in inv.sites), inv
    deployed = tuple(s.name for s in select_sites(inv, pattern))
    return deployed, deploy_only(inv, deployed)


def _central(
    inv: Inventory, sub: Inventory, model: str, profile: Profile | None, opts: SimOptions
) -> str | None:
    """The central policy's site: the option's, the scenario's, else (when the policy runs) the
    biggest deployed site for the model."""
    central = opts.central or (profile.central if profile else None)
    if central is not None and inv.site(central) is None:
        raise UsageError(
            f"--central {central}: no such site",
            hint=did_you_mean(central, [s.name for s in inv.sites], "sites"),
        )
    if central is None and "central" in opts.policies:
        central = biggest_site(sub, model)
    return central


def _traffic(
    inv: Inventory, profile: Profile | None, opts: SimOptions, model: str, slo: float
) -> tuple[Workload | None, float]:
    """The trace's workload (None for a profile, generated later from the seed) and the run's
    duration; a profile with no traffic from the grid's regions is refused."""
    from gridctl.sim.trace import load_trace

    if opts.trace is not None:
        regions = {r.name: r for r in inv.grid.regions}
        workload = load_trace(opts.trace, regions, model, slo, opts.duration_s)
        return workload, workload.duration_s
    assert profile is not None
    rates = region_rates(profile, [r.name for r in inv.grid.regions])
    if not any(rates.values()):
        raise UsageError(f"profile {profile.name}: no traffic from any client region of the grid")
    return None, opts.duration_s or profile.duration_s


def build_workload(plan: Plan) -> Workload:
    if plan.workload is not None:
        return plan.workload
    assert plan.profile is not None
    profile = replace(plan.profile, duration_s=plan.duration_s, slo_ms=plan.slo_ms)
    regions = [r.name for r in plan.inv.grid.regions]
    return generate_workload(profile, regions, plan.model, random.Random(plan.seed), plan.scale)


def max_tokens(plan: Plan) -> int | None:
    """What the clients ask for as ``max_tokens``: the profile's largest output, when its clients
    set one (None: a trace, or clients that set none; placement then predicts each answer at the
    90th percentile of the answers it has seen, as the daemon does)."""
    p = plan.profile
    return p.output_tokens.hi if p is not None and p.clients_set_max_tokens else None


def noise_rng(plan: Plan) -> random.Random | None:
    """The run's own source of per-request noise (not the traffic generator's); None with
    ``--no-hidden-speed`` (the table exactly, as the lab's sites without a hidden speed)."""
    return random.Random(f"{plan.seed}:noise") if plan.hidden_speed else None


def run_policy(
    plan: Plan,
    w: Workload,
    name: str,
    sites: Sequence[SimulatedSite],
    placement: SimPlacement,
    rtt: list[list[float]],
) -> Outcome:
    pools = build_pools(sites, w.models, rtt, plan.queue_per_slot)
    signals = new_signals(placement.names, len(w.models))
    policy: Any
    if name in ("grid", "grid-no-affinity"):
        policy = GridPolicy(placement, w, signals, max_tokens(plan), affinity=name == "grid")
    elif name == "central":
        policy = central_policy(placement, plan.central or "")
    elif name == "nearest":
        policy = nearest_policy(placement)
    else:
        policy = RoundRobinPolicy(placement)
    return simulate(w, sites, pools, policy, signals, noise_rng(plan))


def simulate_plan(
    plan: Plan, on_policy: Callable[[str], None] | None = None
) -> tuple[Workload, tuple[SimulatedSite, ...], list[Outcome]]:
    """The workload, the sites and each policy's outcome on that same workload."""
    w = build_workload(plan)
    if len(w) == 0:
        raise UsageError(
            f"no requests to simulate in {plan.duration_s:g} s",
            hint="raise --scale or --duration, or give the scenario's regions a rate above 0",
        )
    planner = Planner(plan.inv, plan.probes)
    sites = build_sim_sites(plan.inv, plan.seed if plan.hidden_speed else None)
    placement = SimPlacement(planner, [s.name for s in sites], w.regions, w.models, w.slo_ms)
    rtt = [[planner.latency(planner.region(r), s).rtt_ms for s in plan.inv.sites] for r in w.regions]
    outcomes = []
    for name in plan.policies:
        outcomes.append(run_policy(plan, w, name, sites, placement, rtt))
        if on_policy is not None:
            on_policy(name)
    return w, sites, outcomes


def run_plan(
    plan: Plan, on_policy: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The result (the JSON of ``gridctl sim``) and the time series of each policy (for the plot)."""
    w, sites, outcomes = simulate_plan(plan, on_policy)
    results = [summarize(w, sites, out) for out in outcomes]
    series = [time_series(w, out) for out in outcomes]
    scenario = describe(plan, w)
    scenario["hidden_speed"] = (
        speeds(s for s in sites if s.name in plan.deployed) if plan.hidden_speed else None
    )
    return {"scenario": scenario, "policies": results}, series


def describe(plan: Plan, w: Workload) -> dict[str, Any]:
    p = plan.profile
    counts = [0] * len(w.regions)
    for r in w.region:
        counts[r] += 1
    return {
        "profile": p.name if p else None,
        "source": p.source if p else None,
        "trace": plan.trace,
        "model": plan.model,
        "slo_ms": w.slo_ms,
        "duration_s": w.duration_s,
        "seed": plan.seed if p else None,
        "scale": plan.scale,
        "central": plan.central,
        "deployed": list(plan.deployed),
        "queue_per_slot": plan.queue_per_slot,
        "bursts": [[round(a, 3), round(b, 3)] for a, b in w.bursts],
        "burst_factor": p.bursts.factor if p and p.bursts else None,
        "requests": len(w),
        "requests_by_region": {r: counts[i] for i, r in enumerate(w.regions)},
        "latency_from": "probes, inventory and estimates" if plan.probes else "inventory and estimates",
    }
