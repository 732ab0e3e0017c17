"""The one exception tree of gridctl and the exit-code table (docs/ARCHITECTURE.md).

Every error a user can see is a :class:`GridctlError`: it carries a message
(what went wrong and where), an optional hint (what to do next) and the exit
code the CLI returns for it. The CLI entry point is the only place that turns
these into ``error: ...`` / ``hint: ...`` lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes for runbooks. The single source of this table."""

    OK = 0
    ERROR = 1
    USAGE = 2
    UNHEALTHY = 3  # ran, but something is unhealthy or degraded
    UNREACHABLE = 4  # some targets unreachable, or no eligible site
    INVALID_INVENTORY = 5
    INTERRUPTED = 130


class GridctlError(Exception):
    """Base of every error gridctl reports to a user."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(GridctlError):
    """Bad command-line usage: a flag, argument or value that cannot work."""

    exit_code = ExitCode.USAGE


class NotFoundError(GridctlError):
    """A named site, node, region or file does not exist."""


class ConflictError(GridctlError):
    """The request conflicts with what is already there (no silent overwrite)."""


class LockError(GridctlError):
    """The inventory lock could not be taken in time."""


class UnreachableError(GridctlError):
    """Targets could not be reached, or no site is eligible."""

    exit_code = ExitCode.UNREACHABLE


class QuietExit(GridctlError):
    """The command has already said everything (its result, its warnings, its summary): end
    with exit ``code`` and no ``error:`` line. How a command that ran to the end reports a
    verdict such as 3 (unhealthy) or 4 (unreachable); the CLI entry point returns ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exit {code}")
        self.code = code


@dataclass(frozen=True, order=True)
class Problem:
    """One validation problem, located in a file of the inventory."""

    file: str  # relative to the inventory root, e.g. "sites/phl-co-12.yaml"
    line: int  # 1-based; 0 when the problem concerns the whole file
    path: str  # dotted path inside the document, e.g. "nodes[1].gpus.count"; "" for the file
    message: str
    # other files the problem names (a duplicate's first occurrence): it belongs to them too
    also: tuple[str, ...] = field(default=(), compare=False)

    @property
    def files(self) -> tuple[str, ...]:
        return (self.file, *self.also)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class InventoryError(GridctlError):
    """The inventory is invalid. Carries every problem found, not just the first."""

    exit_code = ExitCode.INVALID_INVENTORY

    def __init__(
        self, problems: list[Problem], root: str, hint: str | None = None, refused: bool = False
    ) -> None:
        self.problems = sorted(problems)
        n = len(self.problems)
        count = f"{n} problem{'s' if n != 1 else ''}"
        head = (
            f"change refused: it would leave inventory {root} invalid ({count})"
            if refused
            else f"inventory {root} is invalid ({count})"
        )
        super().__init__(
            head,
            hint or "fix the lines above, then run `gridctl inventory validate`",
        )
