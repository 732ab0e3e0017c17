"""``gridctl exec``: run a command on every matched node over SSH."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from gridctl.cli.common import OutputOpt, State, state_of
from gridctl.core.errors import ExitCode, QuietExit, UnreachableError, UsageError
from gridctl.output import Format, Streams, emit

if TYPE_CHECKING:
    from gridctl.core.inventory.model import Inventory, Node
    from gridctl.fleet.execute import ExecResult

ForksOpt = Annotated[int, typer.Option("--forks", "-f", min=1, max=4096, help="Nodes worked on at once.")]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", "-t", min=0.1, help="Hard deadline per node, in seconds (connect + work)."),
]
AcceptNewOpt = Annotated[
    bool,
    typer.Option("--accept-new", help="Pin unknown host keys on first use (changed keys are still refused)."),
]
FleetTarget = Annotated[
    str, typer.Argument(help="Target pattern (see `gridctl site ls --help`), e.g. 'phl-*'.")
]


def select_fleet(state: State, target: str | None) -> tuple[Inventory, list[Node]]:
    """The inventory and the nodes ``target`` matches; UnreachableError when none does."""
    from gridctl.core.inventory.targets import select_nodes

    inv = state.load()
    nodes = select_nodes(inv, target)
    if not nodes:
        raise UnreachableError(
            f"no nodes match {target!r}" if target else "the inventory has no nodes",
            hint="list them with `gridctl node ls`",
        )
    return inv, nodes


def summary_line(counts: dict[str, list[str]], total: int, noun: str = "node") -> str:
    parts = []
    for status, names in counts.items():
        if not names:
            continue
        shown = ", ".join(names[:5]) + (f", +{len(names) - 5} more" if len(names) > 5 else "")
        parts.append(f"{len(names)} {status}" + ("" if status == "ok" else f" ({shown})"))
    return f"{total} {noun}{'s' if total != 1 else ''}: " + ", ".join(parts)


def exec_command(
    ctx: typer.Context,
    target: FleetTarget,
    command: Annotated[list[str], typer.Argument(help="Command to run, after --.", metavar="-- COMMAND...")],
    forks: ForksOpt = 64,
    timeout: TimeoutOpt = 30.0,
    accept_new: AcceptNewOpt = False,
    tty: Annotated[
        bool,
        typer.Option(
            "--tty",
            help="Give the command a terminal (as ssh -t), for commands that need one; "
            "stderr then arrives merged into stdout.",
        ),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Run a command on every matched node; output prefixed by node name.

    One argument is a shell command line (`-- 'nvidia-smi | head'`); several are
    quoted one by one. The command runs in a process group of its own with stdin
    from /dev/null; at --timeout, on Ctrl-C or when the connection drops, that
    whole group is ended on the node too (TERM, then KILL 2 s later). Exit 0 when
    all succeed, 1 when any command failed, 4 when any node was unreachable.
    """
    from gridctl.fleet.dial import dial_early

    state = state_of(ctx)
    if not command:
        raise UsageError("no command given", hint="e.g. gridctl exec 'phl-*' -- uptime")
    inv, nodes = select_fleet(state, target)
    # connect to the first nodes now; the imports below and the keys overlap with their sshd
    dialer = dial_early(nodes[:forks])
    try:
        from gridctl.cli.progress import progress
        from gridctl.fleet.execute import build_remote_command, run_exec
        from gridctl.fleet.ssh import ssh_options_for

        opts = ssh_options_for(inv.root, accept_new, dict(state.streams.environ), dialer)
        remote = build_remote_command(command)
        with progress(state.streams, len(nodes), "exec") as advance:
            results = run_exec(nodes, remote, opts, forks, timeout, on_done=lambda _r: advance(), tty=tty)
    finally:
        dialer.close()
    emit(
        state.streams,
        output,
        [r.to_dict() for r in results],
        lambda _wide: _print_results(state.streams, results),
        (f"{r.node.site}/{r.node.name}" for r in results if r.status == "ok"),
    )
    _summarize(state.streams, results)


def _summarize(streams: Streams, results: Sequence[ExecResult]) -> None:
    """The summary line on stderr; exit 4 when any node was unreachable, 1 when any failed."""
    counts = {s: [r.node.name for r in results if r.status == s] for s in ("ok", "failed", "unreachable")}
    streams.info(summary_line(counts, len(results)))
    if counts["unreachable"]:
        raise QuietExit(ExitCode.UNREACHABLE)
    if counts["failed"]:
        raise QuietExit(ExitCode.ERROR)


def _print_results(streams: Streams, results: Sequence[ExecResult]) -> str:
    """The human view: each node's stdout and stderr on their own streams, line by line
    prefixed by its name, in node order (so written here, not returned: see ``emit``)."""
    out, err = streams.stdout, streams.stderr
    for r in results:
        _print_prefixed(out, r.node.name, r.stdout)
        _print_prefixed(err, r.node.name, r.stderr)
        if r.error:
            err.write(f"{r.node.name} | {streams.paint(r.status.upper(), 'red', err)}: {r.error}\n")
    return ""


def _print_prefixed(stream: TextIO, name: str, text: str) -> None:
    if not text:
        return
    lines = text.splitlines()
    stream.write("".join(f"{name} | {line}\n" for line in lines))
