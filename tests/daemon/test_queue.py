"""The daemon's wait for room (Proxy._wait_for_room) as plain asyncio: a wake-up is never lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace

from gridctl.core.placement.decision import EMPTY, Ranking
from gridctl.daemon.proxy import Proxy


def make_proxy(room: dict[str, int]) -> tuple[Proxy, Callable[[], Ranking]]:
    config = SimpleNamespace(queue_max=10)
    proxy = Proxy(lambda: None, None, None, config, {})  # type: ignore[arg-type, return-value]

    def decide() -> Ranking:
        return Ranking(("site",), 1, (100.0,)) if room["free"] > 0 else EMPTY

    return proxy, decide


def test_a_woken_request_whose_client_hangs_up_passes_the_wake_up_on() -> None:
    async def main() -> tuple[tuple[str, ...], float, bool]:
        room = {"free": 0}
        proxy, decide = make_proxy(room)
        start = time.monotonic()
        gone = asyncio.create_task(proxy._wait_for_room(decide, start + 5))
        other = asyncio.create_task(proxy._wait_for_room(decide, start + 5))
        await asyncio.sleep(0.05)
        assert proxy.queued == 2
        room["free"] = 1  # a request ended: one slot
        proxy._release()  # wakes the first waiter...
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
        proxy, decide = make_proxy({"free": 0})
        ranking = await proxy._wait_for_room(decide, time.monotonic() + 0.1)
        return ranking.sites, proxy.queued

    assert asyncio.run(main()) == ((), 0)
