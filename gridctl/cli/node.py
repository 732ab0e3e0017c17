"""``gridctl node``: list, add and remove the GPU nodes of sites."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridctl.cli import complete
from gridctl.cli.common import OutputOpt, State, YesOpt, confirm, list_valid, state_of
from gridctl.cli.site import DryRunOpt, ModelOpt, TargetArg, report_outcome
from gridctl.core.errors import UsageError
from gridctl.output import Column, Format, Streams

if TYPE_CHECKING:
    from gridctl.fleet.trust import HostKeyReport

app = typer.Typer(
    help="GPU nodes of the sites: list, add, remove, pin host keys (trust), provision.", no_args_is_help=True
)


def _gpus(r: Mapping[str, Any]) -> str:
    return f"{r['gpus']['count']}x {r['gpus']['model']}" if r["gpus"] else "-"


COLUMNS = [
    Column("SITE", lambda r: r["site"]),
    Column("NAME", lambda r: r["name"]),
    Column("HOST", lambda r: r["host"]),
    Column("PORT", lambda r: r["port"]),
    Column("GPUS", _gpus),
]
WIDE = [
    Column("USER", lambda r: r["user"]),
    Column("KEY", lambda r: r["key"] or "(agent)"),
]


@app.command("ls")
def ls(
    ctx: typer.Context, target: TargetArg = None, model: ModelOpt = None, output: OutputOpt = Format.table
) -> None:
    """List nodes; targets as for sites, plus SITE/NODE and node names."""
    from gridctl.core.inventory.export import node_dict
    from gridctl.core.inventory.targets import select_nodes

    list_valid(
        state_of(ctx),
        output,
        lambda inv: [node_dict(n) for n in select_nodes(inv, target, model)],
        (COLUMNS, WIDE),
        "No nodes match.",
        name=lambda r: f"{r['site']}/{r['name']}",
    )


def _parse_gpus(text: str) -> tuple[str, int]:
    model, sep, count = text.rpartition(":")
    try:
        n = int(count)
    except ValueError:
        n = 0
    if not sep or not model or n <= 0:
        raise UsageError(
            f"--gpus {text}: expected MODEL:COUNT", hint="e.g. --gpus H100:8 or --gpus 'RTX PRO 6000:4'"
        )
    return model, n


@app.command("add")
def add(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site the node belongs to.", autocompletion=complete.sites)],
    name: Annotated[str, typer.Argument(help="Node name (a DNS label, unique across the grid).")],
    host: Annotated[str, typer.Option(help="Host name or IP address to reach it over SSH.")],
    port: Annotated[int | None, typer.Option(help="SSH port [default: grid default, else 22].")] = None,
    user: Annotated[str | None, typer.Option(help="SSH user [default: grid default].")] = None,
    key: Annotated[
        str | None, typer.Option(help="Private key file [default: grid default, else the SSH agent].")
    ] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs as MODEL:COUNT, e.g. H100:8.")] = None,
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Add a node to a site. Re-running with the same values changes nothing."""
    from gridctl.inventory.edit import NodeSpec, add_node

    state = state_of(ctx)
    model, count = _parse_gpus(gpus) if gpus else (None, None)
    spec = NodeSpec(name=name, host=host, port=port, user=user, key=key, gpu_model=model, gpu_count=count)
    report_outcome(state, add_node(state.root, site, spec, dry_run), output)


@app.command("set")
def set_(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site of the node.", autocompletion=complete.sites)],
    name: Annotated[str, typer.Argument(help="Node name.", autocompletion=complete.nodes)],
    assignments: Annotated[
        list[str],
        typer.Argument(
            help="KEY=VALUE to set, KEY- to remove: host, port, user, key, jump, gpus.model, "
            "gpus.count, provision.profile, ... (any node key of the schema).",
            metavar="KEY=VALUE...",
        ),
    ],
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Change fields of a node, keeping the file's comments and order.

    A new host or port drops the node's pinned host key (and says so): pin the new
    one with `gridctl node trust SITE/NODE` before the next contact."""
    from gridctl.inventory.edit import set_node

    state = state_of(ctx)
    report_outcome(state, set_node(state.root, site, name, assignments, dry_run), output)


@app.command("rm")
def rm(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site of the node.", autocompletion=complete.sites)],
    name: Annotated[str, typer.Argument(help="Node name.", autocompletion=complete.nodes)],
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Remove a node from its site, with its pinned host key and its .state (asks first;
    --yes when not on a terminal)."""
    from gridctl.inventory.edit import remove_node

    state = state_of(ctx)
    preview = remove_node(state.root, site, name, dry_run=True)
    if dry_run:
        report_outcome(state, preview, output)
        return
    confirm(state, f"Remove node {site}/{name}?", yes)
    report_outcome(state, remove_node(state.root, site, name), output)


TRUST_COLUMNS = [
    Column("NODE", lambda r: f"{r['site']}/{r['node']}"),
    Column("ADDRESS", lambda r: f"{r['host']}:{r['port']}"),
    Column("KEY", lambda r: r["key_type"]),
    Column("FINGERPRINT", lambda r: r["fingerprint"]),
    Column(
        "STATE",
        lambda r: r["verdict"],
        lambda v: {"changed": "red", "unreachable": "red", "new": "yellow"}.get(v),
    ),
]


@app.command("trust")
def trust(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="Target pattern of nodes whose host keys to pin.", autocompletion=complete.node_targets
        ),
    ],
    yes: YesOpt = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Also re-pin keys that CHANGED (after you checked why).")
    ] = False,
    forks: Annotated[int, typer.Option("--forks", "-f", min=1, help="Nodes worked on at once.")] = 64,
    timeout: Annotated[float, typer.Option("--timeout", "-t", min=0.1, help="Seconds per node.")] = 10.0,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Fetch and show the keys, say what would be pinned, pin nothing."),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Fetch nodes' SSH host keys, show their SHA256 fingerprints, and pin them in known_hosts.

    Asks before pinning (or --yes). A key that differs from the pinned one is only
    replaced with --replace. Exit 4 when a node could not be reached.
    """
    from gridctl.core.errors import ConflictError, ExitCode, QuietExit
    from gridctl.core.inventory.targets import select_nodes
    from gridctl.fleet.ssh import ssh_options_for
    from gridctl.fleet.trust import fetch_host_keys
    from gridctl.output import emit, render_table

    state = state_of(ctx)
    inv = state.load()
    nodes = select_nodes(inv, target)
    if not nodes:
        raise UsageError(f"no nodes match {target!r}", hint="list them with `gridctl node ls`")
    opts = ssh_options_for(inv.root, False, dict(state.streams.environ))
    reports = fetch_host_keys(nodes, opts, forks, timeout)
    rows = [r.to_dict() for r in reports]
    emit(state.streams, output, rows, lambda _wide: render_table(rows, TRUST_COLUMNS, state.streams))
    _warn_keys(state.streams, reports)
    changed = [r for r in reports if r.verdict == "changed"]
    _pin(state, inv.root, reports, replace=replace, dry_run=dry_run, yes=yes)
    if changed and not replace:
        raise ConflictError(
            f"{len(changed)} host key{'s' if len(changed) != 1 else ''} changed and left as pinned",
            hint="find out why; if the nodes were reinstalled, run again with --replace",
        )
    if any(r.verdict == "unreachable" for r in reports):
        raise QuietExit(ExitCode.UNREACHABLE)


def _warn_keys(streams: Streams, reports: Sequence[HostKeyReport]) -> None:
    """A warning per node whose key changed or that did not answer."""
    for r in reports:
        if r.verdict == "changed":
            streams.warn(
                f"HOST KEY CHANGED for {r.node.address}: pinned {', '.join(r.pinned)}, now {r.fingerprint}"
            )
        elif r.verdict == "unreachable":
            streams.warn(f"{r.node.address}: {r.error}")


def _pin(
    state: State, root: Path, reports: Sequence[HostKeyReport], *, replace: bool, dry_run: bool, yes: bool
) -> None:
    """Pin the new keys (and with ``replace`` the changed ones) in known_hosts, after asking;
    under ``dry_run`` only say how many would be."""
    from gridctl.fleet.hostkeys import pin_keys

    new = [r for r in reports if r.verdict == "new"]
    changed = [r for r in reports if r.verdict == "changed"]
    to_pin = new + (changed if replace else [])
    if not to_pin:
        state.streams.info("nothing to pin")
        return
    keys = f"{len(to_pin)} host key{'s' if len(to_pin) != 1 else ''}"
    if dry_run:
        state.streams.info(f"would pin {keys} in {root}/known_hosts (dry run: nothing written)")
        return
    confirm(state, f"Pin {keys} in {root}/known_hosts?", yes)
    added = pin_keys(root, [(r.node.host, r.node.port, r.key) for r in new if r.key is not None])
    if replace and changed:
        added += pin_keys(root, [(r.node.host, r.node.port, r.key) for r in changed if r.key], replace=True)
    state.streams.info(f"pinned {added} host key{'s' if added != 1 else ''}")


from gridctl.cli.provision import provision  # noqa: E402  (its own module; registered here)

app.command("provision")(provision)
