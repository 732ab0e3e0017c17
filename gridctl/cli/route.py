"""``gridctl route``: explain a placement decision, measure round trips, render routing tables."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridctl.cli import complete
from gridctl.cli.common import OutputOpt, state_of
from gridctl.cli.route_view import explanation, verdict
from gridctl.core.errors import ExitCode, QuietExit, UsageError
from gridctl.core.placement.decision import DEFAULT_SHAPE
from gridctl.core.placement.predict import DEFAULT_OUTPUT_TOKENS, MAX_TOKENS
from gridctl.output import Column, Format, Streams, emit, render_table

if TYPE_CHECKING:
    from gridctl.core.inventory.model import Inventory
    from gridctl.core.placement.engine import Planner
    from gridctl.core.placement.predict import Shape

app = typer.Typer(
    help="Routing: explain decisions, probe round trips, render data-plane configs.", no_args_is_help=True
)

FromOpt = Annotated[
    str,
    typer.Option(
        "--from", help="Client region the request comes from (grid.yaml).", autocompletion=complete.regions
    ),
]


def _region_check(planner: Planner, region: str) -> None:
    if region not in planner.regions:  # a typo in --from: a usage error, as any bad argument
        from gridctl.core.suggest import did_you_mean

        raise UsageError(
            f"--from {region}: no client region named '{region}'",
            hint=did_you_mean(region, sorted(planner.regions), "regions"),
        )


@app.command("test")
def test(
    ctx: typer.Context,
    region: FromOpt,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model the request asks for [default: the --body's model].",
            autocompletion=complete.models,
        ),
    ] = None,
    prompt_tokens: Annotated[
        int | None,
        typer.Option(
            "--prompt-tokens",
            min=1,
            max=MAX_TOKENS,
            help=f"Prompt tokens of the request [default: {DEFAULT_SHAPE.prompt_tokens}; with --body: its "
            "prompt at 4 characters a token].",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            min=1,
            max=MAX_TOKENS,
            help=f"Output tokens of the request [default: {DEFAULT_SHAPE.output_tokens}; with --body: its "
            f"max_tokens / max_completion_tokens, else {DEFAULT_OUTPUT_TOKENS} as the daemon assumes "
            "before it has seen the model answer].",
        ),
    ] = None,
    body: Annotated[
        Path | None,
        typer.Option(
            "--body",
            metavar="FILE",
            help="A real OpenAI request body (JSON, '-' for stdin) to take the shape and model from; "
            "--prompt-tokens / --max-tokens override its parts.",
        ),
    ] = None,
    jurisdiction: Annotated[
        str | None, typer.Option(help="Keep the data in this jurisdiction too (code or group such as EU).")
    ] = None,
    slo_ms: Annotated[
        float | None, typer.Option("--slo-ms", min=0.1, help="Latency SLO [default: grid's].")
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Send a real small streaming request to the top site.")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Explain where a request would go: each eligible site's predicted end-to-end latency
    (round trip + queue + prefill + decode on its own GPUs) against the SLO less its margin, and
    its cost per 1k tokens; sites predicted within the SLO first, cheapest first, then the others,
    fastest first; then every excluded site with its reasons.

    Exit 4 when no site is eligible; exit 3 (a warning on stderr) when sites are eligible but
    none is predicted to meet the SLO: the request would go to the fastest and is expected to miss."""
    from gridctl.core.placement.decision import Request, decision_dict
    from gridctl.routing import build_shape, live_completion, load_planner, read_body, recorded_live

    state = state_of(ctx)
    parsed = read_body(body, state.streams.stdin) if body is not None else None
    model = _requested_model(model, parsed, state.streams)
    shape = build_shape(prompt_tokens, max_tokens, parsed)
    inv = state.load()
    planner = load_planner(inv)
    _region_check(planner, region)
    _model_check(inv, model)
    jurisdiction = _jurisdiction(jurisdiction)
    if slo_ms is not None and not math.isfinite(slo_ms):
        raise UsageError(f"--slo-ms {slo_ms}: must be a finite number of milliseconds")
    decision = planner.explain(Request(region, model, jurisdiction, slo_ms), shape, recorded_live(inv))
    result: dict[str, Any] = {**decision_dict(decision, planner.sites), "live": None}
    if live and decision.best is not None:
        result["live"] = live_completion(
            planner.sites[decision.best.site], model, region, state.streams.environ, decision.best.prediction
        ).to_dict()
    emit(
        state.streams,
        output,
        result,
        lambda wide: explanation(result, decision, jurisdiction, wide, state.streams),
        (r["site"] for r in result["ranked"]),
    )
    verdict(state.streams, decision, result)


def _requested_model(model: str | None, body: Mapping[str, Any] | None, streams: Streams) -> str:
    """--model, else the body's model; a warning when both are given and differ."""
    if model is None:
        model = body.get("model") if body is not None else None
        if not isinstance(model, str) or not model:
            raise UsageError(
                "--model is required (or a --body with a 'model')",
                hint="e.g. gridctl route test --from us-east --model llama-3.1-8b-instruct",
            )
    elif body is not None and body.get("model") not in (None, model):
        streams.warn(f"--model {model} decides; the body asks for {body.get('model')!r}")
    return model


def _model_check(inv: Inventory, model: str) -> None:
    models = sorted({m.name for s in inv.sites for m in s.models})
    if model not in models:  # a typo, not a placement problem: no SLO or capacity would help
        from gridctl.core.suggest import did_you_mean

        raise UsageError(
            f"--model {model}: no site in the inventory serves it", hint=did_you_mean(model, models, "models")
        )


def _jurisdiction(given: str | None) -> str | None:
    """--jurisdiction upper-cased, refused unless an ISO 3166-1 code or a group."""
    from gridctl.core.inventory.jurisdictions import GROUPS, is_code

    if given is None:
        return None
    code = given.upper()
    if not (is_code(code) or code in GROUPS):
        raise UsageError(
            f"--jurisdiction {code}: not an ISO 3166-1 alpha-2 code or group (EU, EEA)",
            hint="e.g. --jurisdiction DE, or --jurisdiction EU for any EU member state",
        )
    return code


PROBE_COLUMNS = [
    Column("SITE", lambda r: r["site"]),
    Column("RTT-MS", lambda r: f"{r['rtt_ms']:.2f}" if r["rtt_ms"] is not None else "-"),
    Column("SAMPLES", lambda r: ",".join(f"{s:.1f}" for s in r["samples"]) or "-"),
    Column("ERROR", lambda r: r["error"] or "-"),
]


@app.command("probe")
def probe(
    ctx: typer.Context,
    region: FromOpt,
    target: Annotated[
        str | None,
        typer.Argument(help="Target pattern of sites [default: all].", autocompletion=complete.site_targets),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, max=100, help="Requests per site; the median is kept.")] = 5,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 5.0,
    output: OutputOpt = Format.table,
) -> None:
    """Measure the round trip from here to each site's endpoint, as seen from REGION, and
    save it for the latency model. Exit 4 when a site did not answer."""
    from gridctl.cli.progress import progress
    from gridctl.core.inventory.targets import select_sites
    from gridctl.fleet.healthcheck import now_iso
    from gridctl.inventory.state import write_probes
    from gridctl.routing import load_planner, measure_rtt

    state = state_of(ctx)
    inv = state.load()
    _region_check(load_planner(inv, use_probes=False), region)
    sites = select_sites(inv, target)
    with progress(state.streams, len(sites), "probe") as advance:
        results = measure_rtt(sites, region, state.streams.environ, samples, timeout, on_done=advance)
    at = now_iso()
    rows = [r.to_dict(at) for r in results]
    write_probes(inv.root, region, {r["site"]: r for r in rows if r["rtt_ms"] is not None})
    emit(
        state.streams,
        output,
        rows,
        lambda _wide: render_table(rows, PROBE_COLUMNS, state.streams),
        (r["site"] for r in rows),
    )
    failed = [r["site"] for r in rows if r["rtt_ms"] is None]
    state.streams.info(
        f"saved {len(rows) - len(failed)} round trips from {region}"
        + (f"; no answer from {', '.join(failed)}" if failed else "")
    )
    if failed:
        raise QuietExit(ExitCode.UNREACHABLE)


@app.command("render")
def render(
    ctx: typer.Context,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="With --out: list the files and whether each changes; write nothing."),
    ] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="json, yaml, nginx, haproxy or envoy.",
            autocompletion=complete.route_formats,
        ),
    ] = "json",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write files into this directory (else stdout).")
    ] = None,
    primaries: Annotated[int, typer.Option(min=1, help="Primary sites per route.")] = 2,
    backups: Annotated[int, typer.Option(min=0, help="Backup sites per route.")] = 2,
    listen: Annotated[str, typer.Option(help="HOST:PORT the data plane listens on.")] = "127.0.0.1:8080",
    runtime_dir: Annotated[str, typer.Option(help="nginx: pid file, temp files, per-site sockets.")] = (
        "/run/gridctl-routing"
    ),
    log_dir: Annotated[str, typer.Option(help="nginx: log directory.")] = "/var/log/gridctl-routing",
    ca_file: Annotated[str, typer.Option(help="CA bundle to verify https sites.")] = (
        "/etc/ssl/certs/ca-certificates.crt"
    ),
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Do not verify https sites (labs only).")
    ] = False,
    prompt_tokens: Annotated[
        int,
        typer.Option(
            "--prompt-tokens",
            min=1,
            max=MAX_TOKENS,
            help="Prompt tokens of the request shape the weights are computed for.",
        ),
    ] = DEFAULT_SHAPE.prompt_tokens,
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens",
            min=1,
            max=MAX_TOKENS,
            help="Output tokens of the request shape the weights are computed for.",
        ),
    ] = DEFAULT_SHAPE.output_tokens,
    read_timeout: Annotated[
        int | None,
        typer.Option(
            "--read-timeout",
            min=1,
            max=86400,
            metavar="SECONDS",
            help="Every data plane: how long to wait for a site's first byte before trying the next "
            "site, and the longest silence within an answer [default: 4 x the SLO, at least 2 s; "
            "raise it for long answers that are not streamed].",
        ),
    ] = None,
    admin_port: Annotated[
        int, typer.Option("--admin-port", min=1, max=65535, help="Envoy: its admin interface's port.")
    ] = 9901,
    haproxy_buffer_kb: Annotated[
        int,
        typer.Option(
            "--haproxy-buffer-kb",
            min=16,
            max=1024,
            metavar="KB",
            help="HAProxy: its buffer, the longest request (a long chat) it can send again after "
            "a site answered 503 or timed out; each request in flight holds a few of them.",
        ),
    ] = 128,
    resolver: Annotated[
        list[str] | None,
        typer.Option(
            "--resolver",
            metavar="ADDRESS",
            help="nginx: a nameserver to resolve site names with at run time (repeat for more) "
            "[default: the nameservers of /etc/resolv.conf].",
        ),
    ] = None,
    nginx_version: Annotated[
        str,
        typer.Option(
            "--nginx-version",
            help="nginx: the version the config is for; from 1.27.3 site names are resolved in "
            "upstreams, keeping connections to them alive.",
        ),
    ] = "1.22.1",
) -> None:
    """Render routing tables for every client region and model: the table itself
    (json, yaml) or complete data-plane configs (nginx, haproxy, envoy).

    Per route, the primaries are the sites predicted to meet the SLO for requests of
    --prompt-tokens / --max-tokens, cheapest first (the daemon's decision), weighted by how many
    such requests each can run at once within the SLO; backups follow in the decision's order.
    A route where no site meets the SLO gets the fastest sites as primaries, with a warning on
    stderr (the exit code stays 0)."""
    from gridctl.core.placement.predict import Shape
    from gridctl.core.placement.table import build_routing_table
    from gridctl.daemon.config import parse_listen
    from gridctl.inventory.state import health_by_site
    from gridctl.placement.render import render_routing
    from gridctl.placement.view import RenderOptions, parse_nginx_version
    from gridctl.routing import load_planner

    state = state_of(ctx)
    inv = state.load()
    host, port = parse_listen(listen)
    options = RenderOptions(
        listen_host=host,
        listen_port=port,
        runtime_dir=runtime_dir,
        log_dir=log_dir,
        ca_file=ca_file,
        tls_verify=not insecure,
        read_timeout_s=read_timeout,
        admin_port=admin_port,
        haproxy_buffer_kb=haproxy_buffer_kb,
        resolvers=_resolvers(resolver, fmt),
        nginx_version=parse_nginx_version(nginx_version),
    )
    shape = Shape(prompt_tokens, max_tokens, "given")
    table = build_routing_table(load_planner(inv), health_by_site(inv.root), primaries, backups, shape)
    files = render_routing(table, fmt, state.templates_dir, options)
    _warn_missed_slo(state.streams, table, shape)
    if out_dir is None:
        for text in files.values():
            state.streams.stdout.write(text)
    elif dry_run:
        _check_out_dir(out_dir, files)
        _show_changes(state.streams, out_dir, files)
    else:
        _check_out_dir(out_dir, files)
        _write_files(state.streams, out_dir, files)


def _resolvers(given: list[str] | None, fmt: str) -> tuple[str, ...]:
    """nginx's nameservers: those given, else /etc/resolv.conf's (none when unreadable)."""
    from gridctl.placement.view import RenderOptions, parse_nameservers

    if given:
        return tuple(given)
    if fmt != "nginx":
        return RenderOptions.resolvers
    try:
        return parse_nameservers(Path("/etc/resolv.conf").read_text(errors="replace"))
    except OSError:
        return ()


def _warn_missed_slo(streams: Streams, table: Mapping[str, Any], shape: Shape) -> None:
    """A warning naming the routes where no site is predicted to meet the SLO."""
    missing = [f"{r['region']}/{r['model']}" for r in table["routes"] if r["primary"] and not r["meets_slo"]]
    if not missing:
        return
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    routes = "1 route has" if len(missing) == 1 else f"{len(missing)} routes have"
    streams.warn(
        f"{routes} no site predicted to meet the {table['slo_ms']:g} ms SLO for "
        f"{shape.prompt_tokens} prompt + {shape.output_tokens} output tokens; their primaries are the "
        f"fastest sites: {', '.join(missing[:5])}{more}"
    )


def _check_out_dir(out_dir: Path, files: Mapping[str, str]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(
            f"--out {out_dir}: not a directory",
            hint=f"--out names a directory to write {', '.join(files)} into (it is created when missing)",
        )


def _show_changes(streams: Streams, out_dir: Path, files: Mapping[str, str]) -> None:
    """--dry-run: each file and whether writing it would change it."""
    for name, text in files.items():
        path = out_dir / name
        try:
            same = path.read_text(encoding="utf-8") == text
            what = "unchanged" if same else "changed"
        except OSError:
            what = "new"
        streams.out(f"{path} ({what})")
    streams.info("dry run: nothing written")


def _write_files(streams: Streams, out_dir: Path, files: Mapping[str, str]) -> None:
    from gridctl.inventory.atomic import write_atomic

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            write_atomic(out_dir / name, text)
            streams.out(str(out_dir / name))
    except OSError as exc:
        raise UsageError(
            f"cannot write into --out {out_dir}: {exc.strerror or exc}",
            hint="give a directory you can write to",
        ) from None
