"""A fast fake OpenAI site for bench/daemon_bench.py: one process, raw asyncio, keep-alive.

POST /v1/chat/completions (and any other POST): streaming answers with SSE chunks in
OpenAI's format, the first token after TTFT ms and the rest 1 ms apart, then
``data: [DONE]``; non-streaming answers after the same total time with a JSON body.
GET /health answers 200; anything else 404 (so the daemon stops asking for /metrics).

    python bench/daemon/fake_site.py PORT [--ttft-ms 5] [--tokens 20] [--gap-ms 1] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _token_event(i: int, last: bool) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": "stop" if last else None}
        ],
    }
    return _chunk(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")


class Site(asyncio.Protocol):
    ttft = 0.005
    gap = 0.001
    tokens = 20
    events: list[bytes] = []
    full_body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        self.buf = b""
        self.tail: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            lines = self.buf[:i].split(b"\r\n")
            cl = 0
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    cl = int(v)
            if len(self.buf) < i + 4 + cl:
                return
            body = self.buf[i + 4 : i + 4 + cl]
            self.buf = self.buf[i + 4 + cl :]
            method, path = lines[0].split(b" ")[:2]
            self.tail = asyncio.ensure_future(self.answer(self.tail, method, path, body))

    async def answer(self, prev: asyncio.Task[None] | None, method: bytes, path: bytes, body: bytes) -> None:
        if prev is not None:  # pipelined: answer in order
            await prev
        t = self.t
        if method == b"GET":
            if path == b"/health":
                payload = b'{"status":"ok"}'
                t.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(payload), payload)
                )
            else:
                t.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        stream = b'"stream":true' in body.replace(b" ", b"")
        if not stream:
            await asyncio.sleep(self.ttft + self.gap * (self.tokens - 1))
            if not t.is_closing():
                t.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(self.full_body), self.full_body)
                )
            return
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await asyncio.sleep(self.ttft)
        for n, event in enumerate(self.events):
            if t.is_closing():
                return
            if n:
                await asyncio.sleep(self.gap)
            t.write(event)
        if not t.is_closing():
            t.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def configure(ttft_ms: float, tokens: int, gap_ms: float) -> None:
    Site.ttft, Site.gap, Site.tokens = ttft_ms / 1000, gap_ms / 1000, tokens
    Site.events = [_token_event(i, i == tokens - 1) for i in range(tokens)]
    Site.full_body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(f"tok{i} " for i in range(tokens))},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
        },
        separators=(",", ":"),
    ).encode()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Site, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake site on 127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--ttft-ms", type=float, default=5.0)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--gap-ms", type=float, default=1.0)
    ap.add_argument("--uvloop", action="store_true")
    a = ap.parse_args()
    configure(a.ttft_ms, a.tokens, a.gap_ms)
    if a.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve(a.port))


if __name__ == "__main__":
    main()
