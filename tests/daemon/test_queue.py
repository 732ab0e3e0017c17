"""The daemon's wait for room (admission.RoomQueue) as plain asyncio: a wake-up is never lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gridctl.core.placement.decision import EMPTY, Ranking
from gridctl.daemon.admission import RoomQueue


def make_queue(room: dict[str, int]) -> tuple[RoomQueue, Callable[[], Ranking]]:
    queue = RoomQueue(10)

    def decide() -> Ranking:
        return Ranking(("site",), 1, (100.0,)) if room["free"] > 0 else EMPTY

    return queue, decide


def test_a_woken_request_whose_client_hangs_up_passes_the_wake_up_on() -> None:
    async def main() -> tuple[tuple[str, ...], float, bool]:
        room = {"free": 0}
        queue, decide = make_queue(room)
        start = time.monotonic()
        gone = asyncio.create_task(queue.wait(decide, start + 5))
        other = asyncio.create_task(queue.wait(decide, start + 5))
        await asyncio.sleep(0.05)
        assert queue.queued == 2
        room["free"] = 1  # a request ended: one slot
        queue.release()  # wakes the first waiter...
        gone.cancel()  # ...whose client hangs up before it runs
        try:
            await gone
            cancelled = False
        except asyncio.CancelledError:
            cancelled = True
        ranking = await other  # must get the slot now, not wait out its deadline
        return ranking.sites, time.monotonic() - start, cancelled

    sites, took, cancelled = asyncio.run(main())
    assert cancelled  # the hang-up is not swallowed
    assert sites == ("site",) and took < 4  # the other got the wake-up, well before its 5 s deadline


def test_waiters_time_out_empty_and_leave_the_queue() -> None:
    async def main() -> tuple[tuple[str, ...], int]:
        queue, decide = make_queue({"free": 0})
        ranking = await queue.wait(decide, time.monotonic() + 0.1)
        return ranking.sites, queue.queued

    assert asyncio.run(main()) == ((), 0)
