"""``gridctl inventory``: validate, show and export the whole inventory."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from gridctl.cli.common import OutputOpt, State, finish_read, state
from gridctl.core.inventory.model import Inventory
from gridctl.output import Column, Format, dump_json, dump_yaml, render_table

app = typer.Typer(help="The inventory as a whole: validate, show, export.", no_args_is_help=True)


@app.command("validate")
def validate(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """Check every file; list every problem as file:line: path: message (exit 5 when invalid)."""
    from gridctl.core.errors import InventoryError

    st = state(ctx)
    try:
        inv = st.load()
    except InventoryError as exc:
        if output in (Format.json, Format.yaml):
            problems = [
                {"file": p.file, "line": p.line, "path": p.path, "message": p.message} for p in exc.problems
            ]
            data = {"valid": False, "problems": problems}
            st.streams.stdout.write(dump_json(data) if output is Format.json else dump_yaml(data))
        raise
    from gridctl.core.placement.perf import gpu_warnings

    nodes = sum(len(s.nodes) for s in inv.sites)
    warnings = gpu_warnings(inv)
    for w in warnings:
        st.streams.warn(w)
    if output in (Format.json, Format.yaml):
        data = {
            "valid": True,
            "problems": [],
            "warnings": warnings,
            "sites": len(inv.sites),
            "nodes": nodes,
            "regions": len(inv.grid.regions),
        }
        st.streams.stdout.write(dump_json(data) if output is Format.json else dump_yaml(data))
    else:
        st.streams.out(
            f"inventory {inv.root} is valid: grid {inv.grid.name}, {len(inv.grid.regions)} regions, "
            f"{len(inv.sites)} sites, {nodes} nodes"
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
    st = state(ctx)
    loaded = st.load_valid()
    _show(st, loaded.inventory, output)
    finish_read(st, loaded)


def _show(st: State, inv: Inventory, output: Format) -> None:
    from gridctl.core.inventory.export import inventory_dict

    data = inventory_dict(inv)
    if output is Format.json:
        st.streams.stdout.write(dump_json(data))
        return
    if output is Format.yaml:
        st.streams.stdout.write(dump_yaml(data))
        return
    if output is Format.name:
        st.streams.stdout.write("".join(s.name + "\n" for s in inv.sites))
        return
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
    st.streams.stdout.write("\n".join(lines) + "\n" + render_table(regions, REGION_COLUMNS, st.streams))


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

    st = state(ctx)
    inv = st.load()
    if format is ExportFormat.json:
        st.streams.stdout.write(dump_json(inventory_dict(inv)))
    else:
        st.streams.stdout.write(
            f"# Ansible inventory exported by gridctl from {inv.root}; regenerate, do not edit.\n"
            + dump_yaml(build_ansible_inventory(inv))
        )
