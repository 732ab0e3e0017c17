"""``gridctl lab``: up, status, fail, down: simulated inference sites on loopback."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from gridctl.cli import complete
from gridctl.cli.common import OutputOpt, State, state_of
from gridctl.core.errors import UsageError
from gridctl.lab.truth import DEFAULT_SEED
from gridctl.output import Column, Format, emit, table_or_empty

app = typer.Typer(
    help="The lab grid: simulated OpenAI-compatible sites on loopback, and an inventory pointing at them.",
    no_args_is_help=True,
)


class FailMode(str, Enum):
    ok = "ok"
    unavailable = "503"
    hang = "hang"
    drop = "drop"
    slow = "slow"


@app.command("up")
def up(
    ctx: typer.Context,
    sites: Annotated[
        int | None, typer.Option("--sites", help="Start N synthetic sites instead of one per inventory site.")
    ] = None,
    from_region: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Client region of requests that do not name one (header x-grid-client-region); "
            "default: the first region of grid.yaml.",
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            "--speed", envvar="GRIDCTL_LAB_SPEED", help="Time scale: 10 runs every delay ten times faster."
        ),
    ] = 1.0,
    port_base: Annotated[
        int | None, typer.Option("--port-base", help="Site i listens on PORT_BASE+i (default: free ports).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for every site to answer.")
    ] = 60.0,
    hidden_speed: Annotated[
        str,
        typer.Option(
            "--hidden-speed",
            metavar="SEED|off",
            help="Each site's true speed is its GPU row times a hidden factor in 0.6-1.4 drawn from "
            "SEED and the site's name, with 5% noise per request (what placement must learn); "
            "off: the GPU table's timing exactly.",
        ),
    ] = str(DEFAULT_SEED),
) -> None:
    """Start the lab in the background; print the overlay inventory to use with -i."""
    from gridctl.lab.service import UpOptions, start_lab

    state = state_of(ctx)
    seed = _hidden_speed(hidden_speed)
    opts = UpOptions(
        sites=sites,
        region=from_region,
        speed=speed,
        port_base=port_base,
        timeout_s=timeout,
        hidden_speed=seed,
    )
    result = start_lab(state.root, opts, state.streams.info)
    state.streams.out(str(result.overlay))
    if not result.already:
        _hint_next(state, result.overlay)


def _hidden_speed(text: str) -> int | None:
    """--hidden-speed: a seed, or None for off."""
    from gridctl.lab.service import parse_hidden_speed

    try:
        return parse_hidden_speed(text)
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. --hidden-speed 7, or --hidden-speed off") from None


def _hint_next(state: State, overlay: Path) -> None:
    """A hint on stderr: how to use the lab just started, and how to stop it."""
    lab = f"gridctl {inventory_flag(state.root, state.streams.environ)}lab"
    state.streams.info(
        state.streams.paint("hint:", "blue", state.streams.stderr)
        + f" gridctl -i {shlex.quote(str(overlay))} site ls; {lab} status; {lab} down"
    )


def inventory_flag(root: Path, environ: Mapping[str, str]) -> str:
    """``-i DIR `` (absolute, quoted) for a hint's command line, or "" when the
    command would find the same inventory without it (./inventory, $GRIDCTL_INVENTORY)."""
    from gridctl.inventory.load import resolve_root

    root = root.resolve()
    if resolve_root(None, environ).resolve() == root:
        return ""
    return f"-i {shlex.quote(str(root))} "


def _models(r: Mapping[str, Any]) -> str:
    return ",".join(r["models"]) or "-"


def _serving(r: Mapping[str, Any]) -> str:
    """How the site serves its models: "2x L4 (2 replicas)", once per distinct way."""
    ways = []
    for m in r["serving"]:
        way = f"{m['gpus']}x {m['gpu']} ({m['replicas']} replica{'s' if m['replicas'] != 1 else ''})"
        if way not in ways:
            ways.append(way)
    return "; ".join(ways) or "-"


COLUMNS = [
    Column("SITE", lambda r: r["name"]),
    Column("URL", lambda r: r["url"]),
    Column("MODELS", _models),
    Column("SERVED", lambda r: r["served"]),
    Column("IN-FLIGHT", lambda r: r["in_flight"]),
    Column("WAITING", lambda r: r["waiting"]),
    Column("MODE", lambda r: r["mode"], lambda v: None if v == "ok" else "yellow"),
]
WIDE = [
    Column("GPUS", _serving),
    Column("TRUE-SPEED", lambda r: f"x{r['speed_factor']:.2f}"),
    Column("REQUESTS", lambda r: r["requests"]),
    Column("FAILED", lambda r: r["failed"]),
    Column("RUNNING", lambda r: r["running"]),
    Column("PREFIX-HITS", lambda r: f"{r['prefix_cache']['hits']}/{r['prefix_cache']['queries']}"),
    Column("KV", lambda r: f"{r['kv_cache_usage'] * 100:.1f}%"),
]


@app.command("status")
def status(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """The lab's process and each site: URL, models, requests served, in flight, waiting, failure mode.
    Exits 4 when the lab is not running."""
    from gridctl.lab.service import fetch_lab_status

    state = state_of(ctx)
    data = fetch_lab_status(state.root)
    emit(
        state.streams,
        output,
        data,
        lambda wide: _headline(data) + table_or_empty(data["sites"], COLUMNS, WIDE, wide, state.streams),
        (str(s["name"]) for s in data["sites"]),
    )


def _headline(data: dict[str, Any]) -> str:
    synthetic = f", {data['synthetic']} synthetic sites" if data["synthetic"] else ""
    seed = data.get("hidden_speed")
    hidden = "off" if seed is None else f"seed {seed}"
    return (
        f"Lab pid {data['pid']}, up {data['uptime_s']:g}s, client region {data['from']}, "
        f"speed {data['speed']:g}, hidden speed {hidden}{synthetic}\nOverlay: {data['overlay']}\n"
    )


@app.command("fail")
def fail(
    ctx: typer.Context,
    site: Annotated[
        str, typer.Argument(help="Lab site name, or a glob such as 'fra-*'.", autocompletion=complete.sites)
    ],
    mode: Annotated[
        FailMode,
        typer.Argument(
            help="ok, 503 (every route answers 503), hang (never answer), drop (cut streams midway), "
            "slow (add --delay-ms to TTFT)."
        ),
    ],
    delay_ms: Annotated[
        float | None, typer.Option("--delay-ms", help="For slow: milliseconds added to TTFT (default 1000).")
    ] = None,
) -> None:
    """Make lab sites fail on demand, or recover (mode ok)."""
    from gridctl.lab.service import run_lab_fail

    state = state_of(ctx)
    for change in run_lab_fail(state.root, site, mode.value, delay_ms):
        state.streams.out(f"lab/{change['site']} mode {change['mode']} (was {change['previous']})")


@app.command("down")
def down(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds after SIGTERM before SIGKILL.")] = 10.0,
) -> None:
    """Stop everything `lab up` started and remove its files. Nothing running is fine."""
    from gridctl.lab.service import stop_lab

    state = state_of(ctx)
    result = stop_lab(state.root, timeout)
    if result.pid is None:
        stranger = (
            f" (its recorded pid {result.stranger} is now another process, left alone)"
            if result.stranger is not None
            else ""
        )
        state.streams.info(
            "the lab was not running"
            + stranger
            + (f"; removed its leftover state {result.dir}" if result.removed else "")
        )
        return
    how = " with SIGKILL" if result.killed else ""
    state.streams.out(f"lab stopped (pid {result.pid}{how}); removed {result.dir}")
