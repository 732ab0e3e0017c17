"""Entry point and the single error boundary of gridctl.

``main`` -> ``run(argv, streams)``: parse with Typer, run the command, and turn
every outcome into an exit code from ``errors.ExitCode``. ``error:``/``hint:``
lines go to stderr; a traceback only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from gridctl import __version__
from gridctl.cli import daemon as daemon_cmd
from gridctl.cli import demo as demo_cmd
from gridctl.cli import fleet as fleet_cmd
from gridctl.cli import health as health_cmd
from gridctl.cli import init as init_cmd
from gridctl.cli import inventory as inventory_cmd
from gridctl.cli import lab as lab_cmd
from gridctl.cli import node as node_cmd
from gridctl.cli import route as route_cmd
from gridctl.cli import sim as sim_cmd
from gridctl.cli import site as site_cmd
from gridctl.cli.common import State
from gridctl.errors import ExitCode, GridctlError, InventoryError
from gridctl.output import Streams

app = typer.Typer(
    name="gridctl",
    help="Operate an AI grid: GPU inference sites, their nodes, routing and placement, as one platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(site_cmd.app, name="site")
app.add_typer(node_cmd.app, name="node")
app.add_typer(inventory_cmd.app, name="inventory")
app.add_typer(lab_cmd.app, name="lab")
app.add_typer(route_cmd.app, name="route")
app.add_typer(daemon_cmd.app, name="daemon")
app.command("init")(init_cmd.init)
app.command("exec")(fleet_cmd.exec_command)
app.command("health")(health_cmd.health)
app.command("gpu")(health_cmd.gpu)
app.command("sim")(sim_cmd.sim)
app.command("demo")(demo_cmd.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gridctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    inventory: Annotated[
        str | None,
        typer.Option(
            "--inventory", "-i", help="Inventory directory (env GRIDCTL_INVENTORY, default ./inventory)."
        ),
    ] = None,
    templates: Annotated[
        str | None,
        typer.Option("--templates", help="Templates directory to use instead of the built-in ones."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    st = ctx.obj if isinstance(ctx.obj, State) else State()
    st.inventory_option, st.templates, st.debug = inventory, templates, debug
    ctx.obj = st


def _click_errors() -> tuple[type[BaseException], ...]:
    """Usage errors come from click: the click package (Typer < 0.20) or Typer's own copy."""
    kinds: list[type[BaseException]] = []
    try:
        from click.exceptions import ClickException

        kinds.append(ClickException)
    except ImportError:
        pass
    typer_kind = getattr(typer, "TyperException", None)
    if isinstance(typer_kind, type):
        kinds.append(typer_kind)
    return tuple(kinds)


_CLICK_ERRORS = _click_errors()


def report(streams: Streams, exc: GridctlError) -> None:
    err = streams.stderr
    if isinstance(exc, InventoryError):
        for problem in exc.problems:
            err.write(f"{problem}\n")
    err.write(streams.paint("error:", "red", err) + f" {exc.message}\n")
    if exc.hint:
        err.write(streams.paint("hint:", "blue", err) + f" {exc.hint}\n")


def run(argv: list[str], streams: Streams | None = None) -> int:
    """Run gridctl with ``argv`` (without the program name); return the exit code."""
    streams = streams or Streams()
    debug = "--debug" in argv or bool(streams.environ.get("GRIDCTL_DEBUG"))
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="gridctl", standalone_mode=False, obj=State(streams=streams))
        if rv == ExitCode.INTERRUPTED:  # Typer turns KeyboardInterrupt into Exit(130), returned here
            streams.stderr.write("\ninterrupted\n")
        return rv if isinstance(rv, int) else ExitCode.OK
    except GridctlError as exc:
        if debug:
            traceback.print_exc(file=streams.stderr)
        report(streams, exc)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        streams.stderr.write("\ninterrupted\n")
        return ExitCode.INTERRUPTED
    except _CLICK_ERRORS as exc:  # click's usage errors and friends
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=streams.stderr)
        else:
            streams.stderr.write(f"error: {exc}\n")
        return int(getattr(exc, "exit_code", ExitCode.USAGE))
    except BrokenPipeError:
        # stdout closed early (`| head`): stop quietly, as Python's docs advise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.ERROR
    except Exception as exc:  # the one boundary: a bug, reported without secrets or locals
        if debug:
            traceback.print_exc(file=streams.stderr)
        report(
            streams,
            GridctlError(
                f"unexpected {type(exc).__name__}: {exc}",
                hint="this is a bug in gridctl; rerun with --debug and report the traceback",
            ),
        )
        return ExitCode.ERROR


def main() -> None:
    sys.exit(run(sys.argv[1:]))
