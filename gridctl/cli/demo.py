"""``gridctl demo``: lab grid + daemon + a burst from two regions + a short simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gridctl.cli.common import OutputOpt, State, state_of
from gridctl.output import Column, Format, Streams, emit, render_table

SENT_COLUMNS = [
    Column("FROM", lambda r: r["region"]),
    Column("SITE", lambda r: r["site"]),
    Column("HTTP", lambda r: r["status"]),
    Column("TTFT-MS", lambda r: "-" if r["ttft_ms"] is None else f"{r['ttft_ms']:.0f}"),
    Column("TOTAL-MS", lambda r: f"{r['total_ms']:.0f}"),
    Column("WHY", lambda r: r["why"]),
]
SIM_COLUMNS = [
    Column("POLICY", lambda r: r["policy"]),
    Column("REQUESTS", lambda r: r["requests"]),
    Column("IN-SLO", lambda r: f"{r['slo_attainment'] * 100:.1f}%"),
    Column("P99-MS", lambda r: f"{r['e2e_ms']['p99']:.0f}" if r["e2e_ms"]["p99"] is not None else "-"),
    Column("P99-BURSTS", lambda r: f"{r['e2e_p99_in_bursts_ms']:.0f}" if r["e2e_p99_in_bursts_ms"] else "-"),
    Column("TOK/S", lambda r: f"{r['throughput_tok_s']:,.0f}"),
    Column("COST/MTOK", lambda r: f"{r['cost']['per_million_tokens']:.4f}"),
]


def demo(
    ctx: typer.Context,
    per_region: Annotated[
        int, typer.Option(min=1, max=50, help="Requests from each of the two regions.")
    ] = 6,
    speed: Annotated[float, typer.Option(min=0.1, help="Lab speed factor (1: real time).")] = 1.0,
    sim_seconds: Annotated[
        float, typer.Option(min=5.0, help="Simulated seconds of the comparison (bursts come every minute).")
    ] = 60.0,
    output: OutputOpt = Format.table,
) -> None:
    """Run the grid on this machine: lab sites for the example inventory and the placement
    daemon, a burst of real requests from New York and Frankfurt (where each went and why),
    then a short simulation of grid vs central placement. Stops everything it started."""
    from gridctl.demo import REGIONS, running_grid, send_burst, short_simulation

    state = state_of(ctx)
    source = _source(state)
    info = state.streams.info
    info(f"demo: starting lab sites for {source} and the placement daemon (Ctrl-C stops everything)")
    with running_grid(source, state.streams.environ, speed) as (_overlay, url):
        info(f"demo: daemon at {url}; sending {per_region} requests from each of {', '.join(REGIONS)}")
        sent = send_burst(url, per_region)
    rows: list[dict[str, Any]] = [vars(s) for s in sent]
    info(f"demo: lab and daemon stopped; simulating {sim_seconds:g} s of bursty voice traffic")
    sim = short_simulation(source, sim_seconds)  # the original inventory: its scenario, its latencies
    result = {"requests": rows, "simulation": sim}
    emit(state.streams, output, result, lambda _wide: _report(rows, sim, source, state.streams))
    _check_requests(rows)


def _source(state: State) -> Path:
    """The inventory the demo runs: the one given (-i, GRIDCTL_INVENTORY) or found in the
    current directory, else the built-in example."""
    from gridctl.templating import builtin_example_inventory

    if state.inventory_option or state.streams.environ.get("GRIDCTL_INVENTORY"):
        return state.root
    return state.root if (state.root / "grid.yaml").is_file() else builtin_example_inventory()


def _report(rows: list[dict[str, Any]], sim: dict[str, Any], source: Path, streams: Streams) -> str:
    """The human view: where each request went and why, then the simulation's comparison."""
    from gridctl.cli.lab import inventory_flag

    scen = sim["scenario"]
    g = f"gridctl {inventory_flag(source, streams.environ)}"
    return (
        "Requests through the placement daemon (EU data stays in the EU):\n"
        + render_table(sorted(rows, key=lambda r: (r["region"], r["site"])), SENT_COLUMNS, streams)
        + "(predicted: the site's time for one request as the daemon saw it before the burst; here "
        "the lab, the daemon and every client share one process, which adds its own delay: in "
        "separate processes the prediction is within a few percent, bench/README.md)\n"
        f"\nSimulation: {scen['requests']} requests, {scen['duration_s']:g} s of {scen['profile']} "
        f"({scen['slo_ms']:g} ms SLO), grid vs one central cluster ({scen['central']}):\n"
        + render_table(sim["policies"], SIM_COLUMNS, streams)
        + f"\nNext: {g}lab up, {g}daemon run, {g}sim --plot sim.svg (see README)\n"
    )


def _check_requests(rows: list[dict[str, Any]]) -> None:
    failed = [r for r in rows if r["status"] != 200]
    if failed:
        from gridctl.core.errors import GridctlError

        raise GridctlError(
            f"{len(failed)} demo requests failed", hint="rerun with --debug and check the lab log"
        )
