"""Streaming load client for bench/daemon_bench.py: raw asyncio sockets, keep-alive, one process.

Each of CONC connections loops for DURATION seconds: POST a streaming chat request, time the
first token event (TTFT: request written -> first ``data: {`` byte) and the whole stream
(-> ``data: [DONE]`` and the chunked terminator). Prints one JSON object.

    python bench/daemon/stream_client.py HOST:PORT --conc 32 --duration 4 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

BODY = json.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "hello"}], "stream": True}
).encode()


async def worker(
    host: str,
    port: int,
    end: float,
    ttfts: list[float],
    totals: list[float],
    errors: list[str],
    sites: set[str],
) -> None:
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Accept: text/event-stream\r\nAuthorization: Bearer sk-bench-master-key-0123456789abcdef\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port, len(BODY), BODY)
    )
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            writer.write(req)
            buf = b""
            first = None
            head_end = -1
            while True:
                data = await reader.read(65536)
                if not data:
                    errors.append("connection closed")
                    return
                buf += data
                if head_end < 0:
                    head_end = buf.find(b"\r\n\r\n")
                    if head_end >= 0:
                        head = buf[:head_end].decode("latin-1")
                        if not head.startswith("HTTP/1.1 200"):
                            errors.append(head.split("\r\n", 1)[0])
                            return
                        for line in head.split("\r\n")[1:]:
                            k, _, v = line.partition(":")
                            if k.lower() == "x-grid-site":
                                sites.add(v.strip())
                if first is None and b"data: {" in buf[head_end:] if head_end >= 0 else False:
                    first = time.perf_counter()
                if b"data: [DONE]" in buf and buf.endswith(b"\r\n0\r\n\r\n"):
                    break
            t1 = time.perf_counter()
            if first is None:
                errors.append("no token event")
                return
            ttfts.append(first - t0)
            totals.append(t1 - t0)
    finally:
        writer.close()


async def run(target: str, conc: int, duration: float) -> dict:
    host, _, port = target.rpartition(":")
    ttfts: list[float] = []
    totals: list[float] = []
    errors: list[str] = []
    sites: set[str] = set()
    # warm-up: one request per connection is not counted
    t0 = time.perf_counter()
    end = t0 + duration
    await asyncio.gather(*(worker(host, int(port), end, ttfts, totals, errors, sites) for _ in range(conc)))
    wall = time.perf_counter() - t0
    return {
        "requests": len(totals),
        "rps": len(totals) / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1000 if ttfts else None,
        "ttft_p90_ms": statistics.quantiles(ttfts, n=10)[8] * 1000 if len(ttfts) > 10 else None,
        "total_p50_ms": statistics.median(totals) * 1000 if totals else None,
        "errors": errors[:5],
        "error_count": len(errors),
        "sites": sorted(sites),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--uvloop", action="store_true")
    a = ap.parse_args()
    if a.uvloop:
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(run(a.target, a.conc, a.duration))))


if __name__ == "__main__":
    main()
