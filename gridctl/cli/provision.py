"""``gridctl node provision``: render a profile per node, push it, restart, verify, roll back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from gridctl.cli.common import OutputOpt, State, YesOpt, confirm, state_of
from gridctl.cli.fleet import AcceptNewOpt, FleetTarget, ForksOpt
from gridctl.core.errors import ExitCode, QuietExit, UsageError
from gridctl.output import Column, Format, Streams, emit, render_table

if TYPE_CHECKING:
    from gridctl.core.inventory.model import Inventory, Node
    from gridctl.fleet.ssh import SshOptions
    from gridctl.provision.apply import NodeOutcome, RunOptions
    from gridctl.provision.rollout import Job

CheckOpt = Annotated[bool, typer.Option("--check", help="Show the plan (files, commands); change nothing.")]
DiffOpt = Annotated[bool, typer.Option("--diff", help="Show unified diffs of the files that change.")]
SerialOpt = Annotated[
    int | None, typer.Option("--serial", min=1, help="Roll out N nodes at a time (batches, in order).")
]
MaxFailOpt = Annotated[
    float | None,
    typer.Option(
        "--max-fail",
        min=0,
        max=100,
        help="Stop the rollout when more than PCT% of the nodes tried so far failed (the rest: skipped).",
    ),
]
ProvisionTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout", "-t", min=0.1, help="Deadline per node for the SSH work, in seconds (waits come on top)."
    ),
]
WaitOpt = Annotated[
    float | None,
    typer.Option(
        "--wait",
        min=0.1,
        help="Seconds to wait for the endpoint after a change (default: the profile's verify.timeout).",
    ),
]

ORDER = ("changed", "would-change", "unchanged", "failed", "unreachable", "skipped")
COLOURS = {
    "failed": "red",
    "unreachable": "red",
    "skipped": "yellow",
    "changed": "green",
    "would-change": "yellow",
}
SYMBOLS = {"create": "+", "update": "~"}


def provision(
    ctx: typer.Context,
    target: FleetTarget,
    check: CheckOpt = False,
    diff: DiffOpt = False,
    yes: YesOpt = False,
    forks: ForksOpt = 64,
    serial: SerialOpt = None,
    max_fail: MaxFailOpt = None,
    timeout: ProvisionTimeoutOpt = 60.0,
    wait: WaitOpt = None,
    accept_new: AcceptNewOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Provision nodes with their profile (templates/provision/<profile>/): push the
    rendered files that differ, restart, wait for the endpoint, roll back on failure.

    Every template is rendered for every node first: a template error touches no
    node. Without --yes, shows the plan and asks (refused when there is no terminal).

    Exit 0 when every node is changed or unchanged, 1 when any failed or the
    rollout stopped, 4 when any was unreachable.
    """
    from gridctl.cli.fleet import select_fleet
    from gridctl.fleet.ssh import ssh_options_for
    from gridctl.provision.apply import RunOptions

    state = state_of(ctx)
    if not (check or yes or state.streams.interactive):
        raise UsageError(
            "provisioning changes nodes: refusing without --yes (no terminal to ask on)",
            hint="see the plan with --check, then run again with --yes",
        )
    inv, nodes = select_fleet(state, target)
    jobs = _jobs(state, inv, nodes, wait)
    ssh = ssh_options_for(inv.root, accept_new, dict(state.streams.environ))
    roll = _Rollout(state.streams, ssh, forks, timeout, wait, serial, max_fail)
    environ = dict(state.streams.environ)
    if check:
        outcomes = roll(jobs, RunOptions(check=True, diff=diff, environ=environ), "plan")
        _report(state, outcomes, output, check=True)
        return
    planned: dict[str, NodeOutcome] = {}
    confirmed = None
    if not yes:
        plan = roll(jobs, RunOptions(check=True, diff=diff, environ=environ), "plan")
        planned = {o.node.address: o for o in plan}
        confirmed = _confirm_plan(state, plan)
        jobs = [j for j in jobs if j.node.address in confirmed]
    outcomes = roll(jobs, RunOptions(diff=diff and yes, environ=environ, confirmed=confirmed), "provision")
    done = {o.node.address: o for o in outcomes}
    merged = [done.get(a) or planned[a] for a in planned] if planned else outcomes
    _report(state, merged, output, check=False)


def _jobs(state: State, inv: Inventory, nodes: Sequence[Node], wait: float | None) -> list[Job]:
    """Every node's profile rendered, before any node is touched: a template error (its
    problems on stderr) or no profile on any matched node stops here."""
    from gridctl.provision.profile import ProfileError, shown_root
    from gridctl.provision.rollout import build_jobs, with_wait
    from gridctl.templating import builtin_templates_dir

    templates = state.templates_dir
    try:
        jobs = build_jobs(inv, nodes, templates, shown_root(templates, builtin_templates_dir()))
    except ProfileError as exc:
        state.streams.stderr.write("".join(f"{p}\n" for p in exc.problems))
        raise
    if not any(j.render for j in jobs):
        raise UsageError(
            f"none of the {len(jobs)} matched node(s) has a provisioning profile",
            hint="set provision.profile on the site or node in the inventory (profiles: lab, vllm, nim)",
        )
    return with_wait(jobs, wait)


@dataclass(frozen=True)
class _Rollout:
    """Runs jobs over SSH with a progress line: a plan (check) or the real rollout."""

    streams: Streams
    ssh: SshOptions
    forks: int
    timeout: float
    wait: float | None
    serial: int | None
    max_fail: float | None

    def __call__(self, chosen: Sequence[Job], opts: RunOptions, label: str) -> list[NodeOutcome]:
        from gridctl.cli.progress import progress
        from gridctl.provision.rollout import node_timeout, run_rollout

        with progress(self.streams, len(chosen), label) as advance:
            return run_rollout(
                chosen,
                self.ssh,
                opts,
                self.forks,
                node_timeout(chosen, self.timeout, self.wait, opts.check),
                serial=None if opts.check else self.serial,
                max_fail=None if opts.check else self.max_fail,
                on_done=lambda _o: advance(),
            )


def _confirm_plan(state: State, plan: Sequence[NodeOutcome]) -> dict[str, tuple[tuple[str, str], ...]]:
    """Show the nodes that would change and ask; the confirmed nodes' plan signatures."""
    pending = [o for o in plan if o.status == "would-change"]
    if pending:
        _write_plan(state.streams, state.streams.stderr, plan)
        n = len(pending)
        confirm(state, f"Apply these changes to {n} node{'s' if n != 1 else ''}?", yes=False)
    return {o.node.address: o.signature for o in pending}


def _report(state: State, outcomes: Sequence[NodeOutcome], output: Format, check: bool) -> None:
    def table(_wide: bool) -> str:
        _write_plan(state.streams, state.streams.stdout, outcomes)
        return render_table([_row(o) for o in outcomes], COLUMNS, state.streams)

    emit(
        state.streams,
        output,
        [o.to_dict() for o in outcomes],
        table,
        (o.node.address for o in outcomes if o.status in ("changed", "would-change")),
    )
    counts = {s: [o.node.address for o in outcomes if o.status == s] for s in ORDER}
    state.streams.info(_summary(counts, len(outcomes), check))
    for o in outcomes:
        if o.status in ("failed", "unreachable") and output in (Format.table, Format.wide):
            label = state.streams.paint(o.status.upper(), "red", state.streams.stderr)
            state.streams.stderr.write(f"{o.node.address} | {label}: {o.error}\n")
            for line in o.diagnostics.splitlines():
                state.streams.stderr.write(f"{o.node.address} |   {line}\n")
    if counts["unreachable"]:
        raise QuietExit(ExitCode.UNREACHABLE)
    if counts["failed"] or any(o.status == "skipped" and o.profile for o in outcomes):
        raise QuietExit(ExitCode.ERROR)


def _row(o: NodeOutcome) -> dict[str, Any]:
    if o.error:
        detail = o.error
    elif o.status == "changed":
        detail = f"endpoint up after {o.verified_s:.1f} s" if o.verified_s is not None else ""
    elif o.status == "would-change":
        detail = f"would run {len(o.commands)} command(s)" if o.commands else "no restart needed"
    else:
        detail = ""
    return {
        "node": o.node.address,
        "profile": o.profile or "-",
        "status": o.status,
        "files": len(o.changes),
        "restarted": o.restarted,
        "detail": detail,
    }


COLUMNS = [
    Column("NODE", lambda r: r["node"]),
    Column("PROFILE", lambda r: r["profile"]),
    Column("STATUS", lambda r: r["status"], lambda v: COLOURS.get(v)),
    Column("FILES", lambda r: r["files"]),
    Column("RESTARTED", lambda r: r["restarted"]),
    Column("DETAIL", lambda r: r["detail"]),
]


def _write_plan(streams: Streams, stream: TextIO, outcomes: Sequence[NodeOutcome]) -> None:
    """Per node with changes: the files (+ new, ~ changed), the commands, the diffs."""
    for o in outcomes:
        if not o.changes:
            continue
        verb = _verb(o)
        name = streams.paint(o.node.address, "bold", stream)
        stream.write(f"{name} ({o.profile}): {len(o.changes)} file(s) {verb}\n")
        for c in o.changes:
            why = f"{', '.join(c.reasons)}; mode {c.file.mode:04o}"
            stream.write(f"  {SYMBOLS.get(c.action, '?')} {c.file.dest}  ({why})\n")
        for cmd in o.commands:
            stream.write(f"  $ {cmd}\n")
        for c in o.changes:
            text = o.diffs.get(c.file.dest)
            if text:
                stream.write(text if text.endswith("\n") else text + "\n")
    if any(o.changes for o in outcomes):
        stream.write("\n")


def _verb(o: NodeOutcome) -> str:
    if o.status == "would-change":
        return "would change"
    if o.status == "failed":
        return "changed, then rolled back" if o.rolled_back else "to change, not applied"
    return "changed"


def _summary(counts: dict[str, list[str]], total: int, check: bool) -> str:
    parts = []
    for status in ORDER:
        names = counts[status]
        if not names:
            continue
        if status in ("failed", "unreachable", "skipped"):
            shown = ", ".join(names[:5]) + (f", +{len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{len(names)} {status} ({shown})")
        else:
            parts.append(f"{len(names)} {status}")
    head = f"{total} node{'s' if total != 1 else ''}" + (" (check: nothing changed)" if check else "")
    return f"{head}: " + ", ".join(parts)
