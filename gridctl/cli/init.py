"""``gridctl init``: write a commented starter inventory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gridctl.cli.common import state_of
from gridctl.core.errors import ConflictError


def init(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Where to create the inventory.")] = Path("inventory"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the files it would write; write nothing.")
    ] = False,
) -> None:
    """Create a commented starter inventory in DIR (default ./inventory)."""
    from gridctl.core.inventory.starter import FILES
    from gridctl.inventory.atomic import write_atomic

    state = state_of(ctx)
    if directory.exists() and any(directory.iterdir()):
        raise ConflictError(
            f"{directory} already exists and is not empty; nothing was written",
            hint="choose a new directory, e.g. `gridctl init ./my-grid`",
        )
    if dry_run:
        for rel, text in FILES.items():
            state.streams.out(f"would write {directory / rel} ({len(text.splitlines())} lines)")
        state.streams.info("dry run: nothing written")
        return
    for rel, text in FILES.items():
        write_atomic(directory / rel, text)
    state.streams.out(f"created inventory {directory}")
    state.streams.info(
        f"next: edit {directory}/grid.yaml and {directory}/sites/, "
        f"then `gridctl -i {directory} inventory validate`"
    )
