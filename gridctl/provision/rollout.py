"""The provisioning service: render every node first, then roll out in batches.

``build_jobs`` renders every selected node before any is contacted: a template
error anywhere stops the run with every problem located, and no node touched.
``run_rollout`` works through ``--serial`` batches, each node under its own
deadline with ``run_on_nodes``; after each batch, when more than ``max_fail``
percent of the nodes tried so far failed or were unreachable, the remaining
nodes are reported as skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gridctl.core.errors import NotFoundError
from gridctl.core.inventory.model import Inventory, Node
from gridctl.fleet.fanout import NodeResult, run_on_nodes, session_task
from gridctl.fleet.ssh import Session, SshOptions
from gridctl.provision.apply import NodeOutcome, RunOptions, provision_node, skipped, unreachable
from gridctl.provision.context import build_context, build_settings
from gridctl.provision.profile import Profile, ProfileError, load_profile
from gridctl.provision.render import NodeRender, Renderer, RenderFailed

FAILED = ("failed", "unreachable")


@dataclass(frozen=True)
class Job:
    node: Node
    render: NodeRender | None  # None: nothing to provision (see reason)
    reason: str | None = None


def build_jobs(inv: Inventory, nodes: Sequence[Node], templates_dir: Path, shown: str) -> list[Job]:
    """Render every node; raise ProfileError listing every problem (with the nodes it hits)."""
    sites = {s.name: s for s in inv.sites}
    renderers: dict[str, Renderer | None] = {}
    problems: dict[str, list[str]] = {}  # problem -> node addresses
    jobs: list[Job] = []
    for node in nodes:
        site = sites[node.site]
        settings = build_settings(site, node)
        if settings.profile is None:
            jobs.append(Job(node, None, f"no provision.profile for this node or site ({site.file})"))
            continue
        if settings.profile not in renderers:
            renderers[settings.profile] = _renderer(templates_dir, settings.profile, shown, problems)
        renderer = renderers[settings.profile]
        if renderer is None:
            continue
        ctx = build_context(inv.grid.name, site, node, settings, renderer.profile.defaults)
        try:
            jobs.append(Job(node, renderer.render_node(node, ctx, site.api_key_env, site.tls)))
        except RenderFailed as exc:
            problems.setdefault(str(exc.problem), []).append(node.address)
    if problems:
        lines = [f"{p}{_nodes_note(addrs)}" for p, addrs in problems.items()]
        n = len(lines)
        raise ProfileError(
            lines,
            f"{n} template problem{'s' if n != 1 else ''}; no node was touched",
            hint="fix the templates or set the variables in the inventory's provision.vars, then run again",
        )
    return jobs


def _renderer(templates_dir: Path, name: str, shown: str, problems: dict[str, list[str]]) -> Renderer | None:
    try:
        profile: Profile = load_profile(templates_dir, name, shown)
    except ProfileError as exc:
        for p in exc.problems:
            problems.setdefault(p, [])
        return None
    except NotFoundError as exc:
        problems.setdefault(f"{exc.message} ({exc.hint})", [])
        return None
    return Renderer(profile)


def _nodes_note(addrs: list[str]) -> str:
    if not addrs:
        return ""
    shown = ", ".join(addrs[:3]) + (f", +{len(addrs) - 3} more" if len(addrs) > 3 else "")
    return f" (rendering for {shown})"


def with_wait(jobs: Sequence[Job], wait: float | None) -> list[Job]:
    """``--wait``: the endpoint wait of every node, instead of its profile's."""
    if wait is None:
        return list(jobs)
    return [
        replace(j, render=replace(j.render, verify=replace(j.render.verify, timeout=wait))) if j.render else j
        for j in jobs
    ]


def node_timeout(jobs: Sequence[Job], timeout: float, wait: float | None, check: bool) -> float:
    """Each node's hard deadline: ``timeout`` for the SSH work, plus up to two endpoint
    waits (after the change, and after a rollback)."""
    if check:
        return timeout
    waits = [wait if wait is not None else j.render.verify.timeout for j in jobs if j.render]
    return timeout + 2 * max(waits, default=0.0)


def run_rollout(
    jobs: Sequence[Job],
    ssh: SshOptions,
    opts: RunOptions,
    forks: int,
    timeout: float,
    serial: int | None = None,
    max_fail: float | None = None,
    on_done: Callable[[NodeOutcome], None] | None = None,
) -> list[NodeOutcome]:
    """Outcomes in the order of ``jobs``."""
    tick = on_done or (lambda _o: None)
    outcomes: dict[str, NodeOutcome] = {}
    for job in jobs:
        if job.render is None:
            outcomes[job.node.address] = skipped(job.node, None, job.reason or "nothing to provision")
            tick(outcomes[job.node.address])
    todo = [j for j in jobs if j.render is not None]
    renders: dict[str, NodeRender] = {j.node.address: j.render for j in todo if j.render is not None}
    size = serial or len(todo) or 1
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    stop: str | None = None
    tried = failed = 0
    for batch in batches:
        if stop is not None:
            for job in batch:
                outcomes[job.node.address] = skipped(job.node, _profile(job), stop)
                tick(outcomes[job.node.address])
            continue

        def work(session: Session, deadline: float) -> NodeOutcome:
            return provision_node(session, deadline, renders[session.node.address], opts)

        def done(result: NodeResult[NodeOutcome]) -> None:
            tick(_outcome(result, renders))

        results = run_on_nodes(
            [j.node for j in batch], session_task(ssh, work), forks=forks, timeout=timeout, on_done=done
        )
        for result in results:
            outcome = _outcome(result, renders)
            outcomes[outcome.node.address] = outcome
            tried += 1
            failed += outcome.status in FAILED
        if max_fail is not None and tried and failed * 100.0 / tried > max_fail:
            stop = (
                f"rollout stopped: {failed} of {tried} nodes tried failed, more than --max-fail {max_fail:g}%"
            )
    return [outcomes[j.node.address] for j in jobs]


def _profile(job: Job) -> str | None:
    return job.render.profile if job.render else None


def _outcome(result: NodeResult[NodeOutcome], renders: Mapping[str, NodeRender]) -> NodeOutcome:
    if result.value is not None:
        return result.value
    render = renders.get(result.node.address)
    reason = result.unreachable.message if result.unreachable else "unreachable"
    return unreachable(result.node, render.profile if render else None, reason, result.seconds)
