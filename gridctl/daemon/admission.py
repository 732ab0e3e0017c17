"""Admission: what a request asks of placement, parsed once, and the bounded wait for room.

One parser for both ways to ask: an inference request's ``x-grid-*`` headers
(:mod:`gridctl.daemon.proxy`) and ``GET /grid/route``'s query (:mod:`gridctl.daemon.server`)
give the same :class:`~gridctl.core.placement.decision.Request` (``parse_placement``); each keeps
its own wording for what is wrong. When every eligible site is full, a request waits in
:class:`RoomQueue` (bounded in length and time) until an attempt ends and frees a slot.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gridctl.core.placement.decision import EMPTY, SLO_MARGIN, Ranking
from gridctl.core.placement.decision import Request as Placement
from gridctl.core.placement.predict import MAX_TOKENS
from gridctl.daemon.openai_api import error_json
from gridctl.net.messages import Response as Answer


def parse_placement(region: str, model: str, jurisdiction: str | None, slo_ms: str | None) -> Placement:
    """What a request asks of placement: its client region, model, jurisdiction (a code or
    group, any case) and SLO in milliseconds (None: the grid's). ValueError when ``slo_ms``
    is given and is not a positive number."""
    slo = float(slo_ms) if slo_ms is not None else None
    if slo is not None and not (math.isfinite(slo) and slo > 0):
        raise ValueError(slo)
    return Placement(region, model, jurisdiction.upper() if jurisdiction else None, slo)


def parse_count(text: str) -> int:
    """A token count from a query string: digits only (no sign, spaces or underscores), bounded."""
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) > MAX_TOKENS:
        raise ValueError(text)
    return int(text)


def refuse_miss(req: Placement, ranking: Ranking, default_slo_ms: float, busy: bool) -> Answer:
    """Strict: 429 with Retry-After when the sites that could meet the SLO are busy; 400 when
    no site could meet it even free (retrying would not help)."""
    slo = req.slo_ms or default_slo_ms
    budget = slo * (1.0 - SLO_MARGIN)
    extra: dict[str, Any] = {"slo_ms": slo}  # the error's JSON fields
    if ranking.sites:
        best, ms = ranking.sites[0], ranking.predicted_ms[0]
        fastest = f"the fastest, {best}, is predicted at {ms:.0f} ms"
        extra.update(site=best, predicted_ms=round(ms, 1))
    else:
        fastest = "every site that could meet it is full"
    within = f"a site must be predicted within {budget:g} ms, the SLO less its {SLO_MARGIN:.0%} margin"
    if busy:
        return error_json(
            429,
            f"no site is predicted to meet the {slo:g} ms SLO for {req.model} from {req.region} "
            f"now ({fastest}; {within}): the sites that could are busy; retry shortly, or send "
            "x-grid-slo-policy: best-effort to be served anyway",
            "rate_limit_exceeded",
            headers=(("retry-after", "1"),),
            code="slo_expected_miss",
            **extra,
        )
    return error_json(
        400,
        f"no site can meet the {slo:g} ms SLO for {req.model} from {req.region}, even idle "
        f"({fastest}; {within}): allow more with x-grid-slo-ms, ask for fewer tokens "
        "(max_tokens), or send x-grid-slo-policy: best-effort to be served anyway",
        "invalid_request_error",
        code="slo_unattainable",
        **extra,
    )


class RoomQueue:
    """Requests waiting for a slot, at most ``limit`` at once; ``queued``: how many now.
    An attempt that ends calls :meth:`release`, which wakes the first of them to decide again."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self, decide: Callable[[], Ranking], deadline: float, feasible: bool = False) -> Ranking:
        """Wait (bounded) until a slot frees and the decision has a site (``feasible``: a site
        predicted to meet the SLO); EMPTY on the deadline or a full queue."""
        if self.queued >= self.limit:
            return EMPTY
        loop = asyncio.get_running_loop()
        self.queued += 1
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return EMPTY
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append(fut)
                woken = False
                try:
                    async with asyncio.timeout(left):
                        await fut
                    woken = True
                except TimeoutError:
                    return EMPTY
                finally:
                    if not fut.done():
                        fut.cancel()
                    elif not woken:
                        # woken, but leaving (timed out or the client hung up) without the slot
                        # it was woken for: pass the wake-up on to the next in the queue
                        self.release()
                ranking = decide()
                if ranking.feasible if feasible else ranking.sites:
                    return ranking
        finally:
            self.queued -= 1

    def release(self) -> None:
        """A request to a site ended: wake one queued request to look for room."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
