"""``gridctl inventory``: validate, show and export the whole inventory."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from gridctl.cli.common import OutputOpt, State, finish_read, state_of
from gridctl.core.inventory.model import Inventory
from gridctl.output import Column, Format, Streams, dump_json, dump_yaml, emit, render_table

app = typer.Typer(help="The inventory as a whole: validate, show, export.", no_args_is_help=True)


@app.command("validate")
def validate(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """Check every file; list every problem as file:line: path: message (exit 5 when invalid)."""
    from gridctl.core.errors import InventoryError

    state = state_of(ctx)
    try:
        inv = state.load()
    except InventoryError as exc:
        problems = [
            {"file": p.file, "line": p.line, "path": p.path, "message": p.message} for p in exc.problems
        ]
        # the problems themselves go to stderr with the error; -o json|yaml has them on stdout too
        emit(state.streams, output, {"valid": False, "problems": problems}, lambda _wide: "")
        raise
    from gridctl.core.placement.perf import gpu_warnings

    nodes = sum(len(s.nodes) for s in inv.sites)
    warnings = gpu_warnings(inv)
    for w in warnings:
        state.streams.warn(w)
    data = {
        "valid": True,
        "problems": [],
        "warnings": warnings,
        "sites": len(inv.sites),
        "nodes": nodes,
        "regions": len(inv.grid.regions),
    }
    emit(
        state.streams,
        output,
        data,
        lambda _wide: (
            f"inventory {inv.root} is valid: grid {inv.grid.name}, {len(inv.grid.regions)} regions, "
            f"{len(inv.sites)} sites, {nodes} nodes\n"
        ),
    )


REGION_COLUMNS = [
    Column("REGION", lambda r: r["name"]),
    Column("JURIS", lambda r: r["jurisdiction"]),
    Column("DATA-MAY-GO-TO", lambda r: r["allowed_jurisdictions"]),
    Column("LAT", lambda r: r["location"]["lat"]),
    Column("LON", lambda r: r["location"]["lon"]),
    Column("SITES", lambda r: r["sites"]),
]


@app.command("show")
def show(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """Show the grid: defaults, client regions and a summary of sites (the valid ones, with the
    problems on stderr and exit 5 when some file is broken)."""
    state = state_of(ctx)
    inv, loaded = state.load_valid()
    _show(state, inv, output)
    finish_read(state, loaded)


def _show(state: State, inv: Inventory, output: Format) -> None:
    from gridctl.core.inventory.export import inventory_dict

    data = inventory_dict(inv)
    emit(
        state.streams,
        output,
        data,
        lambda _wide: _summary(inv, data, state.streams),
        (s.name for s in inv.sites),
    )


def _summary(inv: Inventory, data: dict[str, Any], streams: Streams) -> str:
    g = data["grid"]
    d = g["defaults"]
    w = d["weights"]
    lines = [
        f"Grid:      {g['name']}  ({inv.root})",
        f"SSH:       user {d['ssh']['user'] or '(local user)'}, port {d['ssh']['port']}, "
        f"key {d['ssh']['key'] or '(agent)'}",
        f"SLO:       {d['slo_ms']:g} ms",
        f"Weights:   latency {w['latency']:g}, cost {w['cost']:g}, headroom {w['headroom']:g}",
        f"Sites:     {len(inv.sites)} ({sum(1 for s in inv.sites if s.drain)} drained), "
        f"{sum(len(s.nodes) for s in inv.sites)} nodes, {sum(s.gpu_count for s in inv.sites)} GPUs",
        "",
    ]
    regions = [dict(r, sites=sum(1 for s in inv.sites if s.region == r["name"])) for r in g["regions"]]
    return "\n".join(lines) + "\n" + render_table(regions, REGION_COLUMNS, streams)


class ExportFormat(str, Enum):
    json = "json"
    ansible = "ansible"


@app.command("export")
def export(
    ctx: typer.Context,
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format", "-f", help="json: the whole inventory; ansible: a YAML inventory for ansible."
        ),
    ] = ExportFormat.json,
) -> None:
    """Export the inventory for other tools (Ansible, scripts)."""
    from gridctl.core.inventory.export import build_ansible_inventory, inventory_dict

    state = state_of(ctx)
    inv = state.load()
    if format is ExportFormat.json:
        state.streams.stdout.write(dump_json(inventory_dict(inv)))
    else:
        state.streams.stdout.write(
            f"# Ansible inventory exported by gridctl from {inv.root}; regenerate, do not edit.\n"
            + dump_yaml(build_ansible_inventory(inv))
        )
