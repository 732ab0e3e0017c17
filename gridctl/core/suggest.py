"""Did-you-mean, said one way for every enumerated value and name a user types.

Pure: a value and the choices in, a hint's text out. ``difflib`` ranks by similarity; the
cut-off keeps far-fetched suggestions out ("nosuch" suggests nothing, and the hint lists
the choices instead, as many as fit on a line).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.6  # difflib's default: below it a suggestion misleads more than it helps
LISTED = 8  # choices listed in a hint when none is close


def closest(value: str, choices: Iterable[str], n: int = 1, cutoff: float = CUTOFF) -> list[str]:
    """The ``n`` choices nearest to ``value`` (case-insensitive), best first; none far off."""
    pool = list(dict.fromkeys(choices))
    lowered = {c.lower(): c for c in pool}
    found = difflib.get_close_matches(value.lower(), list(lowered), n=n, cutoff=cutoff)
    return [lowered[f] for f in found]


def did_you_mean(value: str, choices: Iterable[str], what: str = "choose one of") -> str:
    """``did you mean 'x'?`` when a choice is close, else ``choose one of: a, b, c`` (the first
    LISTED of them, and how many there are in all)."""
    pool = list(dict.fromkeys(choices))
    near = closest(value, pool)
    if near:
        return f"did you mean '{near[0]}'?"
    if not pool:
        return f"there is nothing to {what.split()[0]} from" if what != "choose one of" else "there is none"
    shown = ", ".join(pool[:LISTED])
    more = f", ... ({len(pool)} in all)" if len(pool) > LISTED else ""
    return f"{what}: {shown}{more}"
