"""`gridctl completion bash|zsh|fish`: the script that hooks gridctl's completion into a shell.

Its own command module, so the commands whose arguments complete (gridctl.cli.complete)
do not count as loading another command."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the shell's completion script: e.g. `source <(gridctl completion bash)` in ~/.bashrc,
    `gridctl completion fish > ~/.config/fish/completions/gridctl.fish`."""
    from typer._completion_shared import get_completion_script

    script = get_completion_script(prog_name="gridctl", complete_var="_GRIDCTL_COMPLETE", shell=shell.value)
    typer.echo(script.strip())
