"""``gridctl sim``: replay traffic against the inventory with each placement policy, compare them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from gridctl.cli import complete
from gridctl.cli.common import OutputOpt, state_of
from gridctl.output import Column, Format, Streams, emit, render_table

ALL_POLICIES = "grid,nearest,central,round-robin"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _num(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


POLICY_COLUMNS = [
    Column("POLICY", lambda r: r["policy"]),
    Column("REQUESTS", lambda r: r["requests"]),
    Column("REJECTED", lambda r: r["rejected"]),
    Column("IN-SLO", lambda r: _pct(r["slo_attainment"])),
    Column("P50-MS", lambda r: _ms(r["e2e_ms"]["p50"])),
    Column("P90-MS", lambda r: _ms(r["e2e_ms"]["p90"])),
    Column("P99-MS", lambda r: _ms(r["e2e_ms"]["p99"])),
    Column("P99-BURSTS", lambda r: _ms(r["e2e_p99_in_bursts_ms"])),
    Column("TTFT-P99", lambda r: _ms(r["ttft_ms"]["p99"])),
    Column("TOK/S", lambda r: _num(r["throughput_tok_s"])),
    Column("COST/MTOK", lambda r: _num(r["cost"]["per_million_tokens"], 4)),
]
POLICY_WIDE = [
    Column("TOK/S-BURSTS", lambda r: _num(r["throughput_in_bursts_tok_s"])),
    Column("GOODPUT", lambda r: _num(r["goodput_tok_s"])),
    Column("TTFT-P50", lambda r: _ms(r["ttft_ms"]["p50"])),
    Column("PREFIX-HIT", lambda r: _pct(r["prefix_hit_rate"])),
    Column("BUSY-COST/MTOK", lambda r: _num(r["cost"]["busy_per_million_tokens"], 4)),
    Column("USD", lambda r: _num(r["cost"]["usd"], 2)),
    Column("SITES", lambda r: r["cost"]["sites_used"]),
    Column("PRED-ERR-P50", lambda r: _pct(r["prediction"]["abs_error_p50"]) if r.get("prediction") else "-"),
    Column(
        "FEASIBLE-MISSED",
        lambda r: _pct(r["prediction"]["feasible_missed_share"]) if r.get("prediction") else "-",
    ),
]


def _site_cell(policy: str) -> Callable[[Mapping[str, Any]], str]:
    def cell(row: Mapping[str, Any]) -> str:
        s = row[policy]
        return f"{s['utilization'] * 100:.0f}% ({s['requests']})" if s["requests"] else "-"

    return cell


def _site_rows(result: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Column]]:
    """One row per site serving the model; one column per policy: utilisation (requests)."""
    policies = result["policies"]
    rows: dict[str, dict[str, Any]] = {}
    for p in policies:
        for s in p["sites"]:
            row = rows.setdefault(
                s["site"], {"site": s["site"], "gpus": s["gpus"], "usd_h": s["usd_per_hour"]}
            )
            row[p["policy"]] = s
    used = [r for r in rows.values() if any(r[p["policy"]]["requests"] for p in policies)]
    columns = [
        Column("SITE", lambda r: r["site"]),
        Column("GPUS", lambda r: r["gpus"]),
        Column("USD/H", lambda r: f"{r['usd_h']:.2f}"),
    ]
    for p in policies:
        columns.append(Column(p["policy"].upper(), _site_cell(p["policy"])))
    return used, columns


def _headline(result: dict[str, Any]) -> str:
    sc = result["scenario"]
    what = (
        f"trace {sc['trace']}"
        if sc["trace"]
        else f"profile {sc['profile']} ({sc['source']}), seed {sc['seed']}"
    )
    regions = ", ".join(f"{r} {n}" for r, n in sc["requests_by_region"].items())
    line = (
        f"{what}: {sc['requests']} requests for {sc['model']} over {sc['duration_s']:g} s ({regions}); "
        f"SLO {sc['slo_ms']:g} ms"
    )
    if sc["central"]:
        line += f"; central site {sc['central']}"
    line += "; hidden site speeds on" if sc.get("hidden_speed") else "; sites at the GPU table's speed"
    if sc["bursts"]:
        spans = ", ".join(f"{a:g}-{b:g}" for a, b in sc["bursts"][:4]) + (
            " ..." if len(sc["bursts"]) > 4 else ""
        )
        line += f"; bursts x{sc['burst_factor']:g} at {spans} s"
    return line + "\n"


def _comparison(result: dict[str, Any], wide: bool, streams: Streams) -> str:
    """``sim``'s human view: the scenario, a row per policy, each site's utilisation."""
    cols = [*POLICY_COLUMNS, *POLICY_WIDE] if wide else POLICY_COLUMNS
    text = _headline(result) + render_table(result["policies"], cols, streams)
    rows, site_cols = _site_rows(result)
    if rows:
        text += "\nutilisation of each site (requests served)\n" + render_table(rows, site_cols, streams)
    return text


def sim(
    ctx: typer.Context,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            autocompletion=complete.sim_profiles,
            help="voice-burst, chat or rag, refined by <inventory>/scenarios/NAME.yaml when there is one; "
            "or a scenario file (default: voice-burst).",
        ),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Replay a JSONL trace instead of a profile (format: README)."),
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="Comma-separated: grid, nearest, central, round-robin, grid-no-affinity.",
            autocompletion=complete.sim_policies,
        ),
    ] = ALL_POLICIES,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.001, help="Seconds of traffic (default: the profile's)."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the traffic, the sites' hidden speed and the noise.")
    ] = 1,
    central: Annotated[
        str | None,
        typer.Option(
            "--central",
            help="The central policy's site (default: the scenario's, else the biggest).",
            autocompletion=complete.sites,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model the traffic asks for (default: the most served).",
            autocompletion=complete.models,
        ),
    ] = None,
    sites: Annotated[
        str | None,
        typer.Option(
            "--sites",
            help="Target pattern of the sites the model is deployed on (default: scenario's, else all).",
            autocompletion=complete.site_targets,
        ),
    ] = None,
    scale: Annotated[
        float, typer.Option("--scale", min=0.0, help="Multiply every region's request rate.")
    ] = 1.0,
    slo_ms: Annotated[
        float | None,
        typer.Option("--slo-ms", min=0.1, help="End-to-end SLO (default: the profile's or grid's)."),
    ] = None,
    hidden_speed: Annotated[
        bool,
        typer.Option(
            "--hidden-speed/--no-hidden-speed",
            help="Time each site at its GPU row x a hidden per-site factor in [0.6, 1.4] drawn from the "
            "seed, and a 5% noise per request (placement must learn them); off: exactly the table.",
        ),
    ] = True,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a chart of p99 latency over time, one line per policy: FILE.svg (vector, "
            "the viewer's fonts) or FILE.png.",
        ),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Simulate traffic against the inventory's sites with each placement policy, through the same
    placement engine as the daemon, and compare latency, SLO attainment, throughput and cost.
    Deterministic for a seed. Exit 4 when no policy could place any request."""
    from gridctl.cli.progress import progress
    from gridctl.inventory.state import probe_rtts
    from gridctl.sim.compare import SimOptions, parse_policies, plan_run, run_plan

    state = state_of(ctx)
    policies = parse_policies(policy)
    if plot is not None:
        _check_plot(plot)
    inv = state.load()
    opts = SimOptions(
        profile=profile,
        trace=trace,
        policies=policies,
        duration_s=duration,
        seed=seed,
        central=central,
        model=model,
        sites=sites,
        scale=scale,
        slo_ms=slo_ms,
        hidden_speed=hidden_speed,
    )
    plan = plan_run(inv, probe_rtts(inv.root), opts)
    if plan.profile is not None and plan.profile.source != "built-in":
        state.streams.info(f"profile {plan.profile.name} from {plan.profile.source}")
    with progress(state.streams, len(policies), "simulate") as advance:
        result, series = run_plan(plan, on_policy=lambda _name: advance())
    emit(
        state.streams,
        output,
        result,
        lambda wide: _comparison(result, wide, state.streams),
        (p["policy"] for p in result["policies"]),
    )
    if plot is not None:
        from gridctl.sim.plot import write_chart

        write_chart(plot, result, series)
        state.streams.info(f"wrote {plot}")
    _check_placed(result, plan.model)


def _check_plot(plot: Path) -> None:
    """--plot names an .svg or .png file in a directory that exists."""
    from gridctl.core.errors import UsageError
    from gridctl.sim.plot import chart_format

    try:
        chart_format(plot)
    except ValueError as exc:
        svg = plot.parent / f"{plot.name.split('.')[0] or 'chart'}.svg"
        raise UsageError(str(exc), hint=f"e.g. --plot {svg}") from None
    if not plot.parent.is_dir():
        raise UsageError(
            f"--plot {plot}: no directory {plot.parent}", hint="create it, or write the chart elsewhere"
        )


def _check_placed(result: Mapping[str, Any], model: str) -> None:
    """Exit 4 when no policy could place any request."""
    from gridctl.core.errors import UnreachableError

    if not any(p["completed"] for p in result["policies"]):
        raise UnreachableError(
            f"no policy could place any request for {model}",
            hint="check the model name (--model), the sites it is deployed on (--sites) and the regions' "
            "jurisdictions; `gridctl route test --from REGION -m MODEL` explains one decision",
        )
