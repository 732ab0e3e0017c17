"""Entry point and the single error boundary of gridctl.

``main`` -> ``run(argv, streams)``: parse with Typer, run the command, and turn
every outcome into an exit code from ``errors.ExitCode``. ``error:``/``hint:``
lines go to stderr; a traceback only with ``--debug``.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from gridctl import __version__
from gridctl.cli.common import State
from gridctl.core.errors import ExitCode, GridctlError, InventoryError, QuietExit
from gridctl.output import Streams

# Every command, in the order `gridctl --help` lists them: name -> (module, attribute),
# a command function or a Typer group. A command's module is imported, and turned into a
# click command, only when that command is run (or a help page lists it), so `gridctl
# exec` loads neither the daemon nor the simulator and builds no other command's
# options: together ~35 ms of every run's start-up.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("gridctl.cli.init", "init"),
    "exec": ("gridctl.cli.fleet", "exec_command"),
    "health": ("gridctl.cli.health", "health"),
    "gpu": ("gridctl.cli.health", "gpu"),
    "sim": ("gridctl.cli.sim", "sim"),
    "demo": ("gridctl.cli.demo", "demo"),
    "site": ("gridctl.cli.site", "app"),
    "node": ("gridctl.cli.node", "app"),
    "region": ("gridctl.cli.region", "app"),
    "inventory": ("gridctl.cli.inventory", "app"),
    "lab": ("gridctl.cli.lab", "app"),
    "route": ("gridctl.cli.route", "app"),
    "daemon": ("gridctl.cli.daemon", "app"),
    "completion": ("gridctl.cli.completion_script", "completion"),
}


class _FiniteFloat(click.types.FloatParamType):
    """A float option that refuses NaN and infinities (click takes ``nan``, ``inf``: a NaN
    passes every ``min=``, and would reach the JSON output or turn a check off)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return _finite(super().convert(value, param, ctx), value, self, param, ctx)


class _FiniteFloatRange(click.FloatRange):
    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return _finite(super().convert(value, param, ctx), value, self, param, ctx)


def _finite(
    number: Any,
    value: Any,
    kind: click.ParamType[Any, Any],
    param: click.Parameter | None,
    ctx: click.Context | None,
) -> Any:
    if isinstance(number, float) and not math.isfinite(number):
        kind.fail(f"{value!r} is not a finite number.", param, ctx)
    return number


def finite_floats(command: click.Command) -> click.Command:
    """Every float option and argument of ``command`` and its subcommands made finite-only."""
    for p in command.params:
        t = p.type
        if type(t) is click.FloatRange:
            p.type = _FiniteFloatRange(t.min, t.max, t.min_open, t.max_open, t.clamp)
        elif type(t) is click.types.FloatParamType:
            p.type = _FiniteFloat()
    for sub in getattr(command, "commands", {}).values():
        finite_floats(sub)
    return command


def load_command(name: str) -> click.Command:
    """The click command for ``name`` in COMMANDS, as ``app.add_typer`` / ``app.command`` make it,
    its float inputs finite-only."""
    import importlib

    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        command: click.Command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return finite_floats(command)


# click >= 8.4 raises NoSuchCommand, with close names ("Did you mean 'exec'?"); older
# click a plain UsageError without them (then nothing to catch: an empty tuple).
_NoSuchCommand: Any = getattr(click.exceptions, "NoSuchCommand", None)
_NO_SUCH_COMMAND: tuple[type[click.UsageError], ...] = (_NoSuchCommand,) if _NoSuchCommand else ()


class LazyGroup(TyperGroup):
    """The root group: lists every command of COMMANDS, loads each on first use."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except _NO_SUCH_COMMAND as exc:
            # click suggests close names from self.commands: only the commands loaded so far
            name = getattr(exc, "command_name", args[0])
            raise _NoSuchCommand(name, possibilities=list(COMMANDS), ctx=ctx) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = load_command(cmd_name)
        return self.commands.get(cmd_name)


app = typer.Typer(
    name="gridctl",
    help="Operate an AI grid: GPU inference sites, their nodes, routing and placement, as one platform.",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gridctl {__version__}")
        # an eager option's callback stops the parse only through click's own Exit (as
        # --help does); click returns its code from ``main``. Commands end with QuietExit.
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
    state = ctx.obj if isinstance(ctx.obj, State) else State()
    state.inventory_option, state.templates, state.debug = inventory, templates, debug
    ctx.obj = state


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


_GLOBAL_VALUED = ("-i", "--inventory", "--templates")  # the root's options that take a value
_GLOBAL_FLAGS = ("--debug",)


def hoist_globals(argv: list[str]) -> list[str]:
    """The root's options moved ahead of the command, wherever they stand before ``--``, so
    ``gridctl site ls -i DIR --debug`` reads as ``gridctl -i DIR --debug site ls`` (as kubectl
    takes ``-n`` anywhere). No command has an option of these names; after ``--`` is the
    remote command's (``exec``), left alone. ``-iDIR`` is taken before the command only
    (after it, ``-inf`` may be a number)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _GLOBAL_VALUED:
            if i + 1 == len(argv):
                raise click.UsageError(f"Option '{arg}' requires an argument.")
            front += argv[i : i + 2]
            i += 2
            continue
        if arg in _GLOBAL_FLAGS or arg.startswith(("--inventory=", "--templates=")):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def run(argv: list[str], streams: Streams | None = None) -> int:
    """Run gridctl with ``argv`` (without the program name); return the exit code."""
    streams = streams or Streams()
    debug = "--debug" in argv or bool(streams.environ.get("GRIDCTL_DEBUG"))
    command = typer.main.get_command(app)
    try:
        argv = hoist_globals(argv)
        rv = command.main(args=argv, prog_name="gridctl", standalone_mode=False, obj=State(streams=streams))
        if rv == ExitCode.INTERRUPTED:  # Typer turns KeyboardInterrupt into Exit(130), returned here
            streams.stderr.write("\ninterrupted\n")
        return rv if isinstance(rv, int) else ExitCode.OK
    except QuietExit as exc:  # the command has reported everything; only its exit code is left
        return exc.code
    except GridctlError as exc:
        if debug:
            traceback.print_exc(file=streams.stderr)
        report(streams, exc)
        return exc.exit_code
    except typer.Exit as exc:  # click's Exit (--help, --version) raised outside a command's main
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        streams.stderr.write("\ninterrupted\n")
        return ExitCode.INTERRUPTED
    except _CLICK_ERRORS as exc:  # click's usage errors and friends, said as gridctl says errors
        format_message = getattr(exc, "format_message", None)
        message = format_message() if format_message is not None else str(exc)
        ctx = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx is not None else "gridctl"
        report(streams, GridctlError(message, hint=f"see `{path} --help`"))
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
