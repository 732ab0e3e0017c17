"""The daemon's wait for room (Proxy._wait_for_room) as plain asyncio: a wake-up is never lost."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from gridctl.daemon.proxy import Proxy


def make_proxy(room: dict[str, int]) -> Proxy:
    state = SimpleNamespace(order=lambda req, hashes, session, now: ["site"] if room["free"] > 0 else [])
    daemon = SimpleNamespace(config=SimpleNamespace(queue_max=10), state=state)
    return Proxy(daemon, None)  # type: ignore[arg-type]


def test_a_woken_request_whose_client_hangs_up_passes_the_wake_up_on() -> None:
    async def main() -> tuple[list[str], float, bool]:
        room = {"free": 0}
        proxy = make_proxy(room)
        start = time.monotonic()
        gone = asyncio.create_task(proxy._wait_for_room(None, [], None, start + 5))  # type: ignore[arg-type]
        other = asyncio.create_task(proxy._wait_for_room(None, [], None, start + 5))  # type: ignore[arg-type]
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
        order = await other  # must get the slot now, not wait out its deadline
        return order, time.monotonic() - start, cancelled

    order, took, cancelled = asyncio.run(main())
    assert cancelled  # the hang-up is not swallowed
    assert order == ["site"] and took < 4  # the other got the wake-up, well before its 5 s deadline


def test_waiters_time_out_empty_and_leave_the_queue() -> None:
    async def main() -> tuple[list[str], int]:
        proxy = make_proxy({"free": 0})
        order = await proxy._wait_for_room(None, [], None, time.monotonic() + 0.1)  # type: ignore[arg-type]
        return order, proxy.queued

    assert asyncio.run(main()) == ([], 0)
