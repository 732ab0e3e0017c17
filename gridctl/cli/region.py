"""``gridctl region``: list, show, add, change, remove the client regions of grid.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridctl.cli import complete
from gridctl.cli.common import OutputOpt, YesOpt, confirm, list_valid, show_valid, state_of
from gridctl.cli.site import DryRunOpt, report_outcome
from gridctl.core.errors import UsageError
from gridctl.output import Column, Format

if TYPE_CHECKING:
    from gridctl.core.inventory.model import Inventory

app = typer.Typer(help="Client regions (grid.yaml): list, show, add, change, remove.", no_args_is_help=True)

COLUMNS = [
    Column("NAME", lambda r: r["name"]),
    Column("JURIS", lambda r: r["jurisdiction"]),
    Column("ALLOWED", lambda r: r["allowed_jurisdictions"]),
    Column("SITES", lambda r: len(r["sites"])),
    Column("MEASURED", lambda r: len(r["latency_ms"])),
]
WIDE = [
    Column("LAT", lambda r: r["location"]["lat"]),
    Column("LON", lambda r: r["location"]["lon"]),
    Column("SITE-NAMES", lambda r: r["sites"]),
]


def _rows(inv: Inventory) -> list[dict[str, Any]]:
    from gridctl.core.inventory.export import region_dict

    return [
        dict(region_dict(r), sites=[s.name for s in inv.sites if s.region == r.name])
        for r in inv.grid.regions
    ]


@app.command("ls")
def ls(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """List the client regions: jurisdiction, where their data may go, sites in them."""
    list_valid(
        state_of(ctx), output, _rows, (COLUMNS, WIDE), "No regions (add one with `gridctl region add`)."
    )


def _describe(r: Mapping[str, Any], wide: bool) -> str:
    lines = [
        f"Name:          {r['name']}",
        f"Location:      {r['location']['lat']}, {r['location']['lon']}",
        f"Jurisdiction:  {r['jurisdiction']}",
        f"Allowed:       {', '.join(r['allowed_jurisdictions'])}"
        + (f" ({len(r['allowed'])} countries)" if wide or r["allowed"] != r["allowed_jurisdictions"] else ""),
        f"Sites:         {', '.join(r['sites']) or '-'}",
        "Measured RTT:",
    ]
    lines += [f"  {site:<24} {ms:g} ms" for site, ms in r["latency_ms"].items()] or ["  -"]
    return "\n".join(lines) + "\n"


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Region name.", autocompletion=complete.regions)],
    output: OutputOpt = Format.table,
) -> None:
    """Show one client region in full."""
    from gridctl.inventory.regions import require_region

    def object_of(inv: Inventory) -> dict[str, Any]:
        require_region(inv, name)
        return next(r for r in _rows(inv) if r["name"] == name)

    def found(inv: Inventory) -> bool:
        return inv.region(name) is not None

    show_valid(state_of(ctx), output, f"region '{name}'", found, object_of, _describe)


def _parse_latency(items: list[str]) -> dict[str, float]:
    import math

    out: dict[str, float] = {}
    for item in items:
        site, sep, ms = item.partition("=")
        try:
            value = float(ms)
        except ValueError:
            value = math.nan
        if not sep or not site or not math.isfinite(value) or value < 0:
            raise UsageError(
                f"--latency {item}: expected SITE=MILLISECONDS (a number, 0 or more)",
                hint="e.g. --latency nyc-pop-01=1.8",
            )
        out[site] = value
    return out


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Region name (a DNS label).")],
    lat: Annotated[float, typer.Option(help="Latitude of the region's clients.")],
    lon: Annotated[float, typer.Option(help="Longitude.")],
    jurisdiction: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2 code of the region, e.g. US, NO.")],
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="Jurisdiction (or group: EU, EEA) its data may go to; repeatable [default: its own].",
        ),
    ] = None,
    latency: Annotated[
        list[str] | None, typer.Option("--latency", help="Measured RTT SITE=MS; repeatable.")
    ] = None,
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Add a client region. Re-running with the same values changes nothing."""
    from gridctl.inventory.regions import RegionSpec, add_region

    state = state_of(ctx)
    allowed = tuple(c.strip() for a in allow or [] for c in a.split(",") if c.strip()) or None
    spec = RegionSpec(name, lat, lon, jurisdiction, allowed, _parse_latency(latency) if latency else None)
    report_outcome(state, add_region(state.root, spec, dry_run), output)


@app.command("set")
def set_(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Region name.", autocompletion=complete.regions)],
    assignments: Annotated[
        list[str],
        typer.Argument(
            help="KEY=VALUE to set, KEY- to remove: location.lat, location.lon, jurisdiction, "
            "allowed_jurisdictions=EU,CH, latency_ms.SITE=2.5, latency_ms.SITE-.",
            metavar="KEY=VALUE...",
        ),
    ],
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Change fields of a client region, keeping grid.yaml's comments and order."""
    from gridctl.inventory.regions import set_region

    state = state_of(ctx)
    report_outcome(state, set_region(state.root, name, assignments, dry_run), output)


@app.command("rm")
def rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Region name.", autocompletion=complete.regions)],
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Remove a client region and its probe state (refused while sites are in it; asks first)."""
    from gridctl.inventory.regions import remove_region

    state = state_of(ctx)
    preview = remove_region(state.root, name, dry_run=True)
    if dry_run:
        report_outcome(state, preview, output)
        return
    confirm(state, f"Remove region {name}?", yes)
    report_outcome(state, remove_region(state.root, name), output)
