"""Progress on stderr for work over many targets: a rich bar on a terminal, nothing otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from gridctl.output import Streams


@contextlib.contextmanager
def progress(streams: Streams, total: int, label: str) -> Iterator[Callable[[], None]]:
    """Yields ``advance()``; draws only when stderr is a terminal (and there is work)."""
    if total < 2 or not _tty(streams):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=streams.stderr, no_color="NO_COLOR" in streams.environ)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def _tty(streams: Streams) -> bool:
    try:
        return streams.stderr.isatty()
    except (AttributeError, ValueError):
        return False
