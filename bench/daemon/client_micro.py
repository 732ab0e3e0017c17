"""Upstream-client micro-benchmark: gridctl's own pool (gridctl/net/client.py, the daemon's),
aiohttp.ClientSession and httpx.AsyncClient, one per process.

CONC tasks loop for DURATION seconds posting a chat request to the fake site and reading the
whole answer (streaming: iterating the raw chunks, as a proxy relays them). Prints JSON with
requests/s and this process's CPU time per request (time.process_time over the run).

    python bench/daemon/client_micro.py URL --lib gridctl|aiohttp|httpx [--stream] [--conc 32] [--duration 4] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def body(stream: bool) -> bytes:
    return json.dumps(
        {"model": "bench-model", "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    ).encode()


async def run_aiohttp(url: str, stream: bool, conc: int, end: float) -> int:
    import aiohttp

    data = body(stream)
    done = 0
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as s:

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 200, r.status
                    if stream:
                        async for _ in r.content.iter_any():
                            pass
                    else:
                        await r.read()
                done += 1

        await asyncio.gather(*(loop() for _ in range(conc)))
    return done


async def run_gridctl(url: str, stream: bool, conc: int, end: float) -> int:
    from gridctl.net.client import Pool

    data = body(stream)
    done = 0
    pool = Pool()
    headers = [("content-type", "application/json")]

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < end:
            r = await pool.request("POST", url, headers, data)
            assert r.status == 200, r.status
            if stream:
                async for _ in r.chunks():
                    pass
            else:
                await r.read()
            done += 1

    await asyncio.gather(*(loop() for _ in range(conc)))
    pool.close()
    return done


async def run_httpx(url: str, stream: bool, conc: int, end: float) -> int:
    import httpx

    data = body(stream)
    done = 0
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30) as c:

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with c.stream(
                    "POST", url, content=data, headers={"Content-Type": "application/json"}
                ) as r:
                    assert r.status_code == 200, r.status_code
                    async for _ in r.aiter_raw():
                        pass
                done += 1

        await asyncio.gather(*(loop() for _ in range(conc)))
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--lib", choices=["gridctl", "aiohttp", "httpx"], required=True)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--uvloop", action="store_true")
    a = ap.parse_args()
    if a.uvloop:
        import uvloop

        uvloop.install()
    fn = {"gridctl": run_gridctl, "aiohttp": run_aiohttp, "httpx": run_httpx}[a.lib]
    # warm-up: open the connections, import everything
    asyncio.run(fn(a.url, a.stream, a.conc, time.perf_counter() + 0.3))
    c0, t0 = time.process_time(), time.perf_counter()
    n = asyncio.run(fn(a.url, a.stream, a.conc, t0 + a.duration))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    print(
        json.dumps(
            {
                "lib": a.lib,
                "stream": a.stream,
                "requests": n,
                "rps": n / wall,
                "cpu_ms_per_req": cpu / n * 1000 if n else None,
                "cpu_util": cpu / wall,
            }
        )
    )


if __name__ == "__main__":
    main()
