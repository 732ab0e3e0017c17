"""``gridctl site``: list, show, add, set, remove, drain sites."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridctl.cli import complete
from gridctl.cli.common import OutputOpt, State, YesOpt, confirm, list_valid, show_valid, state_of
from gridctl.core.errors import UsageError
from gridctl.inventory.edit import Outcome
from gridctl.output import Column, Format

if TYPE_CHECKING:
    from gridctl.core.inventory.model import Inventory

app = typer.Typer(help="Sites of the grid: list, show, add, change, drain, remove.", no_args_is_help=True)

TargetArg = Annotated[
    str | None,
    typer.Argument(
        help="Target pattern: glob, 'a,b', '!x', region:R, kind:K, jurisdiction:CC, label:k=v.",
        autocompletion=complete.site_targets,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Only sites serving this model (glob).", autocompletion=complete.models
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show the change (a diff of each file) and write nothing.")
]


def _models(r: Mapping[str, Any]) -> str:
    return ",".join(m["name"] for m in r["models"]) or "-"


COLUMNS = [
    Column("NAME", lambda r: r["name"]),
    Column("KIND", lambda r: r["kind"]),
    Column("REGION", lambda r: r["region"]),
    Column("JURIS", lambda r: r["jurisdiction"]),
    Column("NODES", lambda r: len(r["nodes"])),
    Column("GPUS", lambda r: r["gpus"]),
    Column("MODELS", lambda r: len(r["models"])),
    Column(
        "STATE",
        lambda r: "drained" if r["drain"] else "active",
        lambda v: "yellow" if v == "drained" else None,
    ),
    Column(
        "HEALTH",
        lambda r: r["health"]["status"] if r["health"] else "-",
        lambda v: {"ok": "green", "degraded": "yellow", "failed": "red", "unreachable": "red"}.get(v),
    ),
]
WIDE = [
    Column("$/GPU-H", lambda r: f"{r['cost_per_gpu_hour']:.2f}"),
    Column("LAT", lambda r: r["location"]["lat"]),
    Column("LON", lambda r: r["location"]["lon"]),
    Column("ENDPOINT", lambda r: r["endpoint"]),
    Column("MODEL-NAMES", _models),
    Column("LABELS", lambda r: r["labels"]),
    Column("CHECKED", lambda r: r["health"]["checked_at"] if r["health"] else "-"),
]


@app.command("ls")
def ls(
    ctx: typer.Context, target: TargetArg = None, model: ModelOpt = None, output: OutputOpt = Format.table
) -> None:
    """List sites, optionally filtered by a target pattern and a model."""
    from gridctl.core.inventory.export import site_dict
    from gridctl.core.inventory.targets import select_sites
    from gridctl.inventory.state import load_health

    def rows_of(inv: Inventory) -> list[dict[str, Any]]:
        health = load_health(inv.root)["sites"]
        return [site_dict(s, health.get(s.name)) for s in select_sites(inv, target, model)]

    list_valid(state_of(ctx), output, rows_of, (COLUMNS, WIDE), "No sites match.")


def _health_text(health: Mapping[str, Any] | None) -> str:
    if not health:
        return "never checked (run `gridctl health`)"
    reasons = "".join(f"\n               - {x}" for x in health.get("reasons", []))
    return f"{health['status']} (checked {health['checked_at']}){reasons}"


def _describe(r: Mapping[str, Any], wide: bool) -> str:
    lines = [
        f"Name:          {r['name']}",
        f"Kind:          {r['kind']}",
        f"Region:        {r['region']}",
        f"Jurisdiction:  {r['jurisdiction']}",
        f"Location:      {r['location']['lat']}, {r['location']['lon']}",
        f"Endpoint:      {r['endpoint']}",
        f"API key env:   {r['api_key_env'] or '-'}",
        f"Cost:          {r['cost_per_gpu_hour']:.2f} per GPU-hour",
        f"State:         {'drained' if r['drain'] else 'active'}",
        "Health:        " + _health_text(r["health"]),
        f"Labels:        {', '.join(f'{k}={v}' for k, v in r['labels'].items()) or '-'}",
        f"File:          {r['file']}",
        "Models:",
    ]
    lines += [f"  {m['name']:<32} capacity {m['capacity']}" for m in r["models"]] or ["  -"]
    lines.append("Nodes:")
    for n in r["nodes"]:
        gpus = f"{n['gpus']['count']}x {n['gpus']['model']}" if n["gpus"] else "no GPUs"
        user = f"{n['user']}@" if n["user"] else ""
        extra = f"  key {n['key']}" if wide and n["key"] else ""
        lines.append(f"  {n['name']:<24} {user}{n['host']}:{n['port']}  {gpus}{extra}")
    if not r["nodes"]:
        lines.append("  -")
    return "\n".join(lines) + "\n"


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name.", autocompletion=complete.sites)],
    output: OutputOpt = Format.table,
) -> None:
    """Show one site in full."""
    from gridctl.core.inventory.export import site_dict
    from gridctl.inventory.edit import require_site
    from gridctl.inventory.state import load_health

    def object_of(inv: Inventory) -> dict[str, Any]:
        site = require_site(inv, name)
        return site_dict(site, load_health(inv.root)["sites"].get(name))

    def found(inv: Inventory) -> bool:
        return inv.site(name) is not None

    show_valid(state_of(ctx), output, f"site '{name}'", found, object_of, _describe)


def _parse_models(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, cap = item.partition("=")
        if sep:
            try:
                out[name] = int(cap)
            except ValueError:
                raise UsageError(
                    f"--model {item}: capacity must be an integer",
                    hint="e.g. --model llama-3.1-8b-instruct=64",
                ) from None
        else:
            out[name] = DEFAULT_CAPACITY
    return out


def _parse_labels(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item}: expected KEY=VALUE", hint="e.g. --label tier=metro")
        out[key] = value
    return out


DEFAULT_CAPACITY = 16


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name (a DNS label).")],
    kind: Annotated[str, typer.Option(help="regional-pop, central-office, edge or cloud.")],
    region: Annotated[
        str,
        typer.Option(
            help="Client region the site sits in (from grid.yaml).", autocompletion=complete.regions
        ),
    ],
    jurisdiction: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2 code, e.g. US, DE.")],
    lat: Annotated[float, typer.Option(help="Latitude.")],
    lon: Annotated[float, typer.Option(help="Longitude.")],
    endpoint: Annotated[str, typer.Option(help="Base URL of the site's OpenAI-compatible server.")],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help=f"Model served, NAME or NAME=CAPACITY (default capacity {DEFAULT_CAPACITY}); repeatable.",
        ),
    ] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="Label KEY=VALUE; repeatable.")] = None,
    cost_per_gpu_hour: Annotated[float | None, typer.Option(help="Cost per GPU-hour.")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the site's API key.")
    ] = None,
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Add a site. Re-running with the same values changes nothing; different values are refused."""
    from gridctl.inventory.edit import SiteSpec, add_site

    state = state_of(ctx)
    spec = SiteSpec(
        name=name,
        kind=kind,
        region=region,
        jurisdiction=jurisdiction,
        lat=lat,
        lon=lon,
        endpoint=endpoint,
        models=_parse_models(model) if model else None,
        labels=_parse_labels(label) if label else None,
        cost_per_gpu_hour=cost_per_gpu_hour,
        api_key_env=api_key_env,
    )
    report_outcome(state, add_site(state.root, spec, dry_run), output)


def report_outcome(state: State, outcome: Outcome, output: Format = Format.table) -> None:
    """How every write reports: ``site/NAME configured (...)`` and what went with it; under
    ``--dry-run`` the diff of each file first. ``-o json|yaml``: :meth:`Outcome.to_dict`."""
    from gridctl.output import emit

    for note in outcome.notes:
        state.streams.warn(note)
    if outcome.existing and outcome.changed:
        n = len(outcome.existing)
        done = "would be written" if outcome.dry_run else "written"
        state.streams.warn(
            f"inventory {state.root} has {n} problem{'s' if n != 1 else ''} in files this change does not "
            f"touch ({done} anyway); fix them soon:"
        )
        for problem in outcome.existing:
            state.streams.stderr.write(f"  {problem}\n")
    emit(
        state.streams,
        output,
        outcome.to_dict(),
        lambda _wide: _outcome_text(outcome),
        [f"{outcome.kind}/{outcome.name}"],
    )


def _outcome_text(outcome: Outcome) -> str:
    """A write's human view: under --dry-run each file's diff, then what was done."""
    text = "".join(f.diff for f in outcome.files) if outcome.dry_run else ""
    text += f"{outcome.kind}/{outcome.name} {outcome.action}"
    if outcome.details:
        text += f" ({'; '.join(outcome.details)})"
    if outcome.dry_run:
        text += " (dry run: nothing written)"
    text += "\n"
    for item in outcome.removed:
        text += f"  {'would remove' if outcome.dry_run else 'removed'} {item}\n"
    return text


@app.command("set")
def set_(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name.", autocompletion=complete.sites)],
    assignments: Annotated[
        list[str],
        typer.Argument(
            help="KEY=VALUE to set, KEY- to remove. Any field by dotted path: drain=true, "
            "labels.K=V, models.M.capacity=64, nodes.N.gpus.count=8, provision.profile=vllm.",
            metavar="KEY=VALUE...",
        ),
    ],
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Change fields of a site, keeping the file's comments and order.

    Values are typed by the schema: jurisdiction=NO stays the text NO (written quoted),
    a number field refuses text. No YAML quoting needed."""
    from gridctl.inventory.edit import set_site

    state = state_of(ctx)
    report_outcome(state, set_site(state.root, name, assignments, dry_run), output)


@app.command("rm")
def rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name.", autocompletion=complete.sites)],
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Remove a site: its file, its latency_ms entries in grid.yaml, its nodes' pinned host
    keys and its .state (asks first; --yes when not on a terminal)."""
    from gridctl.inventory.edit import remove_site, require_site

    state = state_of(ctx)
    preview = remove_site(state.root, name, dry_run=True)
    if dry_run:
        report_outcome(state, preview, output)
        return
    site = require_site(state.load_valid()[0], name)
    nodes = f"{len(site.nodes)} node{'s' if len(site.nodes) != 1 else ''}"
    refs = len(preview.removed)
    also = f"; and {refs} reference{'s' if refs != 1 else ''} to it" if refs else ""
    confirm(state, f"Remove site {name} ({nodes}, {site.file}{also})?", yes)
    report_outcome(state, remove_site(state.root, name), output)


@app.command("drain")
def drain(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name.", autocompletion=complete.sites)],
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Take a site out of routing (drain: true)."""
    from gridctl.inventory.edit import set_drain

    state = state_of(ctx)
    report_outcome(state, set_drain(state.root, name, True, dry_run), output)


@app.command("undrain")
def undrain(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name.", autocompletion=complete.sites)],
    dry_run: DryRunOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Put a drained site back into routing (drain: false)."""
    from gridctl.inventory.edit import set_drain

    state = state_of(ctx)
    report_outcome(state, set_drain(state.root, name, False, dry_run), output)
