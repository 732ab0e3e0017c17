"""``gridctl health`` (nodes over SSH, sites over HTTP) and ``gridctl gpu`` (NVML, on a node)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridctl.cli.common import OutputOpt, State, state_of
from gridctl.cli.fleet import AcceptNewOpt, ForksOpt, TimeoutOpt, summary_line
from gridctl.core.errors import QuietExit
from gridctl.output import Column, Format, Streams, emit, render, table_or_empty

if TYPE_CHECKING:
    from gridctl.core.health import Health
    from gridctl.core.inventory.model import Inventory, Node, Site
    from gridctl.fleet.healthcheck import EndpointCheck
    from gridctl.fleet.ssh import SshOptions

STATUS_COLOURS = {
    "ok": "green",
    "degraded": "yellow",
    "failed": "red",
    "unreachable": "red",
    "unknown": "blue",
}


def _colour(status: Any) -> str | None:
    return STATUS_COLOURS.get(str(status))


def _detail(row: Mapping[str, Any]) -> str:
    r = row["readings"]
    if row["kind"] == "site":
        ep = r.get("endpoint") or {}
        rtt = ep.get("rtt_ms")
        models = ep.get("models")
        parts = [f"rtt {rtt:.0f} ms" if isinstance(rtt, int | float) else "no answer"]
        if models is not None:
            parts.append(f"{len(models)} models")
        return ", ".join(parts)
    gpus = r.get("gpus") or []
    if not gpus:
        return r.get("smi_error") or "-"
    names = Counter(g.get("name") for g in gpus)
    temps = [g["temperature_c"] for g in gpus if isinstance(g.get("temperature_c"), int | float)]
    text = ", ".join(f"{n}x {name}" for name, n in names.items())
    return text + (f", max {max(temps):.0f}C" if temps else "")


COLUMNS = [
    Column("TARGET", lambda r: f"{r['site']}/{r['node']}" if r["node"] else r["site"]),
    Column("KIND", lambda r: r["kind"]),
    Column("STATUS", lambda r: r["status"], _colour),
    Column("DETAIL", _detail),
    Column("REASONS", lambda r: "; ".join(r["reasons"]) or "-"),
]

WIDE = [
    Column("SECONDS", lambda r: f"{r['seconds']:.2f}"),
    Column("NOTES", lambda r: "; ".join(r["notes"]) or "-"),
]


def render_rows(output: Format, rows: list[dict[str, Any]], streams: Streams) -> str:
    return render(
        output,
        rows,
        lambda wide: table_or_empty(rows, COLUMNS, WIDE, wide, streams),
        (f"{r['site']}/{r['node']}" if r["node"] else r["site"] for r in rows),
    )


def _summary(rows: Sequence[dict[str, Any]]) -> str:
    order = ("ok", "degraded", "failed", "unknown", "unreachable")
    counts = {
        s: [f"{r['site']}/{r['node']}" if r["node"] else r["site"] for r in rows if r["status"] == s]
        for s in order
    }
    nodes = sum(1 for r in rows if r["kind"] == "node")
    return summary_line(counts, len(rows), noun="target") + f" ({nodes} nodes, {len(rows) - nodes} sites)"


def health(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Argument(help="Target pattern; default: the whole grid.")] = None,
    forks: ForksOpt = 64,
    timeout: TimeoutOpt = 30.0,
    accept_new: AcceptNewOpt = False,
    nodes_only: Annotated[
        bool, typer.Option("--nodes-only", help="Check nodes, not site endpoints.")
    ] = False,
    sites_only: Annotated[
        bool, typer.Option("--sites-only", help="Check site endpoints, not nodes.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Check again every --interval seconds.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=1.0, help="Seconds between --watch rounds.")
    ] = 10.0,
    output: OutputOpt = Format.table,
) -> None:
    """Health of GPU nodes (nvidia-smi and kernel XIDs over SSH) and site endpoints.

    Exit 0 when all ok, 3 when any degraded, failed or unknown, 4 when any unreachable.
    Results are saved so `site ls` shows each site's last health.
    """
    from gridctl.fleet.dial import dial_early

    state = state_of(ctx)
    inv = state.load()
    nodes, sites = _targets(inv, target, nodes_only=nodes_only, sites_only=sites_only)
    # connect to the first nodes now; the imports below and the keys overlap with their sshd
    dialer = dial_early(nodes[:forks])
    endpoints = None
    try:
        from gridctl.fleet.healthcheck import EndpointCheck
        from gridctl.fleet.ssh import ssh_options_for

        endpoints = EndpointCheck(sites, state.streams.environ, timeout)  # probed meanwhile
        opts = ssh_options_for(inv.root, accept_new, dict(state.streams.environ), dialer)
        _rounds(
            state, inv, nodes, sites, opts, forks, timeout, output, interval if watch else None, endpoints
        )
    finally:
        if endpoints is not None:
            endpoints.close()
        dialer.close()


def _targets(
    inv: Inventory, target: str | None, *, nodes_only: bool, sites_only: bool
) -> tuple[list[Node], list[Site]]:
    """The nodes and site endpoints to check; UnreachableError when there are none."""
    from gridctl.core.inventory.targets import select_nodes, select_sites

    nodes = [] if sites_only else select_nodes(inv, target)
    sites = [] if nodes_only else select_sites(inv, target)
    if target and "/" in target:
        sites = []  # SITE/NODE targets name nodes only
    if not nodes and not sites:
        from gridctl.core.errors import UnreachableError

        raise UnreachableError(f"nothing to check for {target!r}", hint="list targets with `gridctl node ls`")
    return nodes, sites


def _rounds(
    state: State,
    inv: Inventory,
    nodes: Sequence[Node],
    sites: Sequence[Site],
    opts: SshOptions,
    forks: int,
    timeout: float,
    output: Format,
    interval: float | None,  # --watch: seconds between rounds
    endpoints: EndpointCheck,  # the first round's site probes, already started
) -> None:
    from gridctl.cli.progress import progress
    from gridctl.core.health import Status, exit_code_for
    from gridctl.fleet.healthcheck import check_health, now_iso, record_health

    watch = interval is not None
    tty = _tty(state.streams)
    first: EndpointCheck | None = endpoints
    while True:
        with progress(state.streams, len(nodes) + len(sites), "health") as advance:
            environ = state.streams.environ
            rows = check_health(
                inv, nodes, sites, opts, environ, forks, timeout, on_done=advance, endpoints=first
            )
        first = None
        checked_at = now_iso()
        record_health(inv, rows, checked_at)
        data = [r.to_dict(checked_at) for r in rows]
        text = render_rows(output, data, state.streams)
        if watch and tty:
            state.streams.stdout.write("\x1b[H\x1b[J")  # redraw in place
        if watch:
            state.streams.stdout.write(f"# {checked_at}\n")
        state.streams.stdout.write(text)
        state.streams.stdout.flush()
        state.streams.info(_summary(data))
        if interval is None:
            break
        time.sleep(interval)
    code = exit_code_for(Status(r.status) for r in rows)
    if code:
        raise QuietExit(code)


def _tty(streams: Streams) -> bool:
    try:
        return streams.stdout.isatty()
    except (AttributeError, ValueError):
        return False


GPU_COLUMNS = [
    Column("GPU", lambda g: g["index"]),
    Column("NAME", lambda g: g["name"]),
    Column("TEMP", lambda g: g.get("temperature_c")),
    Column("MEM-USED-MIB", lambda g: g.get("memory_used_mib")),
    Column("UTIL%", lambda g: g.get("utilization_pct")),
    Column("POWER-W", lambda g: g.get("power_draw_w")),
    Column("ECC-UNCORR", lambda g: g.get("ecc_uncorrected_volatile")),
]


def _gpu_row(health: Health, raw: dict[str, Any]) -> dict[str, Any]:
    """This machine as one row of ``health -o json``, with NVML's raw readings beside it."""
    import socket

    from gridctl.fleet.healthcheck import now_iso

    readings = {k: v for k, v in health.to_dict().items() if k not in ("status", "reasons", "notes")}
    return {
        "kind": "node",
        "site": None,
        "node": socket.gethostname(),
        "status": health.status.value,
        "reasons": list(health.reasons),
        "notes": list(health.notes),
        "checked_at": now_iso(),
        "readings": readings,
        "nvml": raw,
    }


def _gpu_report(health: Health, readings: Mapping[str, Any], streams: Streams) -> str:
    """``gpu``'s human view: a row per GPU, the verdict and its reasons."""
    status = streams.paint(health.status.value, _colour(health.status.value) or "bold")
    text = table_or_empty(list(readings["gpus"]), GPU_COLUMNS, (), False, streams) + f"status: {status}\n"
    return text + "".join(f"  - {reason}\n" for reason in health.reasons)


def gpu(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option("--expect-model", help="GPU model the node should have, e.g. H100.")
    ] = None,
    count: Annotated[
        int | None, typer.Option("--expect-count", min=1, help="How many GPUs it should have.")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Health of this machine's GPUs through NVML (run it on a node): same checks as `health`.

    Exit 0 when ok, 3 when degraded, failed or unknown, 4 when there is no NVIDIA driver.
    """
    from gridctl.core.errors import UnreachableError
    from gridctl.core.health import classify_node, exit_code_for, readings_from_nvml
    from gridctl.fleet.nvml import read_nvml

    state = state_of(ctx)
    raw = read_nvml()
    if raw.get("error"):
        raise UnreachableError(
            f"no NVIDIA GPU reachable here: {raw['error']}",
            hint="run `gridctl gpu` on a GPU node with the NVIDIA driver loaded; "
            "from elsewhere use `gridctl health`",
        )
    health: Health = classify_node(readings_from_nvml(raw), model, count)
    row = _gpu_row(health, raw)
    emit(state.streams, output, row, lambda _wide: _gpu_report(health, row["readings"], state.streams))
    code = exit_code_for([health.status])
    if code:
        raise QuietExit(code)
