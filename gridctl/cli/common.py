"""What every command shares: the run state, option types, and confirmation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridctl.core.errors import UsageError
from gridctl.output import Column, Format, Streams, render_list, render_object

if TYPE_CHECKING:
    from gridctl.core.inventory.model import Inventory
    from gridctl.inventory.load import Loaded


@dataclass
class State:
    inventory_option: str | None = None
    templates: str | None = None
    debug: bool = False
    streams: Streams = field(default_factory=Streams)

    @property
    def root(self) -> Path:
        from gridctl.inventory.load import resolve_root

        return resolve_root(self.inventory_option, self.streams.environ)

    @property
    def templates_dir(self) -> Path:
        from gridctl.templating import resolve_templates_dir

        return resolve_templates_dir(self.templates, self.root)

    def load(self) -> Inventory:
        """For commands that need all of it: the inventory, or InventoryError (exit 5)."""
        from gridctl.inventory.load import load_inventory

        return load_inventory(self.root)

    def load_valid(self) -> tuple[Inventory, Loaded]:
        """For read commands: the valid part of the inventory, and the ``Loaded`` with its
        problems; the command prints what is valid, then calls :func:`finish_read`.
        grid.yaml too broken to build is reported at once (there is nothing valid to show)."""
        from gridctl.core.errors import InventoryError
        from gridctl.inventory.load import load_partial

        loaded = load_partial(self.root)
        if loaded.inventory is None:
            raise InventoryError(list(loaded.problems), str(self.root))
        return loaded.inventory, loaded


def finish_read(state: State, loaded: Loaded, missing: str | None = None) -> None:
    """After a read command printed the valid items: exit 5 with the problems on stderr
    when there are any (the output left the broken files out). ``missing``: what the
    command looked for and did not find among the valid files ("site 'x'")."""
    if not loaded.problems:
        return
    from gridctl.core.errors import InventoryError

    broken = ", ".join(sorted(loaded.broken))
    head = (
        f"no {missing} among the valid files; it may be in {broken}"
        if missing
        else f"the output leaves out {broken}"
    )
    raise InventoryError(
        list(loaded.problems),
        str(state.root),
        hint=f"{head}; fix the lines above, then run `gridctl inventory validate`",
    )


def list_valid(
    state: State,
    output: Format,
    rows_of: Callable[[Inventory], list[dict[str, Any]]],
    columns: tuple[Sequence[Column], Sequence[Column]],
    empty: str,
    name: Callable[[Mapping[str, Any]], str] = lambda r: str(r["name"]),
) -> None:
    """``site ls``, ``region ls``, ``node ls``: the rows of the valid part of the inventory
    in the -o format (``columns``: the table's and the wide ones), ``empty`` on stderr when a
    table has no rows, then :func:`finish_read`."""
    inv, loaded = state.load_valid()
    rows = rows_of(inv)
    state.streams.stdout.write(render_list(output, rows, columns[0], columns[1], state.streams, name))
    if not rows and output in (Format.table, Format.wide):
        state.streams.info(empty)
    finish_read(state, loaded)


def show_valid(
    state: State,
    output: Format,
    what: str,
    found: Callable[[Inventory], bool],
    object_of: Callable[[Inventory], Mapping[str, Any]],
    describe: Callable[[Mapping[str, Any], bool], str],
) -> None:
    """``site show``, ``region show``: one object in the -o format. Not ``found`` among the
    valid files while some are broken: exit 5 (``what`` may be in them); else ``object_of``
    raises the not-found error."""
    inv, loaded = state.load_valid()
    if not found(inv) and loaded.problems:
        finish_read(state, loaded, what)
    state.streams.stdout.write(render_object(output, object_of(inv), describe))
    finish_read(state, loaded)


def state_of(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


OutputOpt = Annotated[
    Format,
    typer.Option(
        "--output", "-o", help="Output format: table, wide, json, yaml or name.", case_sensitive=False
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def confirm(state: State, question: str, yes: bool) -> None:
    """Ask on a terminal; without one, require --yes. Declining exits 1 with nothing changed."""
    if yes:
        return
    if not state.streams.interactive:
        raise UsageError(
            f"{question.rstrip('?')}: refusing without --yes (no terminal to ask on)",
            hint="add --yes to confirm",
        )
    if not typer.confirm(question, default=False, err=True):
        from gridctl.core.errors import GridctlError

        raise GridctlError("aborted; nothing was changed")
