"""``gridctl node``: list, add and remove the GPU nodes of sites."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from gridctl.cli.common import OutputOpt, YesOpt, confirm, state
from gridctl.cli.site import ModelOpt, TargetArg, report_outcome
from gridctl.errors import UsageError
from gridctl.output import Column, Format, render_list

app = typer.Typer(help="GPU nodes of the sites: list, add, remove.", no_args_is_help=True)


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
    from gridctl.inventory.export import node_dict
    from gridctl.inventory.targets import select_nodes

    st = state(ctx)
    rows = [node_dict(n) for n in select_nodes(st.load(), target, model)]
    st.streams.stdout.write(
        render_list(output, rows, COLUMNS, WIDE, st.streams, name=lambda r: f"{r['site']}/{r['name']}")
    )
    if not rows and output in (Format.table, Format.wide):
        st.streams.info("No nodes match.")


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
    site: Annotated[str, typer.Argument(help="Site the node belongs to.")],
    name: Annotated[str, typer.Argument(help="Node name (a DNS label, unique across the grid).")],
    host: Annotated[str, typer.Option(help="Host name or IP address to reach it over SSH.")],
    port: Annotated[int | None, typer.Option(help="SSH port [default: grid default, else 22].")] = None,
    user: Annotated[str | None, typer.Option(help="SSH user [default: grid default].")] = None,
    key: Annotated[
        str | None, typer.Option(help="Private key file [default: grid default, else the SSH agent].")
    ] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs as MODEL:COUNT, e.g. H100:8.")] = None,
) -> None:
    """Add a node to a site. Re-running with the same values changes nothing."""
    from gridctl.inventory.edit import NodeSpec, add_node

    st = state(ctx)
    model, count = _parse_gpus(gpus) if gpus else (None, None)
    spec = NodeSpec(name=name, host=host, port=port, user=user, key=key, gpu_model=model, gpu_count=count)
    report_outcome(st, add_node(st.root, site, spec))


@app.command("rm")
def rm(
    ctx: typer.Context,
    site: Annotated[str, typer.Argument(help="Site of the node.")],
    name: Annotated[str, typer.Argument(help="Node name.")],
    yes: YesOpt = False,
) -> None:
    """Remove a node from its site (asks first; --yes when not on a terminal)."""
    from gridctl.inventory.edit import remove_node

    st = state(ctx)
    confirm(st, f"Remove node {site}/{name}?", yes)
    report_outcome(st, remove_node(st.root, site, name))
