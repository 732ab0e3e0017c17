"""A scripted OpenAI-like site for byte-level checks: fixed chunks, recorded headers."""

from __future__ import annotations

import asyncio
import re
import ssl
import threading

from aiohttp import web

CHUNKS = [
    b'data: {"id":"x","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n',
    b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"h\xc3\xa9"}}]}\n\n',
    b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"llo"}}]}\n\n',
    b": keep-alive comment\n\n",
    b'data: {"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
]


class _ThreadedSite:
    """An aiohttp app on its own event loop in a thread, on a free loopback port; subclasses
    add their routes in ``_routes``."""

    tls: ssl.SSLContext | None = None

    def _start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        self._routes(app)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.tls)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class RawThreadedSite:
    """A raw asyncio stream server (bytes written as the test says, malformed ones included) on
    its own event loop in a thread, on a free loopback port; subclasses answer in ``_serve``.
    ``close()`` stops it and cancels the connections still being served."""

    def _start(self) -> None:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Upstream(_ThreadedSite):
    def __init__(self, gap_s: float = 0.02, tls: ssl.SSLContext | None = None) -> None:
        self.gap_s = gap_s
        self.tls = tls
        self.seen: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self._start()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        self.bodies.append(await request.read())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Upstream": "yes"})
        await resp.prepare(request)
        for chunk in CHUNKS:
            await resp.write(chunk)
            await asyncio.sleep(self.gap_s)
        await resp.write_eof()
        return resp

    async def _cut(self, request: web.Request) -> web.StreamResponse:
        """A plain JSON answer, chunked, broken off half-way (the connection reset)."""
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"id":"x","choices":[{"text":"half an ans')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def _no_content(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        await request.read()
        return web.Response(status=204, headers={"X-Upstream": "yes"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "llama-3.1-8b-instruct"}]})

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._cut)
        app.router.add_post("/v1/embeddings", self._no_content)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)


class TimedUpstream(_ThreadedSite):
    """An OpenAI-like site whose timing the test sets: the first token after ``first_ms``,
    then one token every ``interval_ms`` (streamed as vLLM does: the role with the first
    token; no usage event, so the daemon counts tokens), or the whole answer after
    ``first_ms + interval_ms * (max_tokens - 1)`` with ``usage`` when not streamed."""

    def __init__(self, first_ms: float, interval_ms: float, model: str = "llama-3.1-8b-instruct") -> None:
        self.first_ms, self.interval_ms, self.model = first_ms, interval_ms, model
        self.requests = 0
        self._start()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        import json

        body = json.loads(await request.read())
        self.requests += 1
        n = int(body.get("max_tokens") or 16)
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def until(ms: float) -> None:
            await asyncio.sleep(max(0.0, start + ms / 1000.0 - loop.time()))

        head = '{"id":"t","object":"chat.completion.chunk","model":' + json.dumps(self.model) + ',"choices":['

        if not body.get("stream"):
            await until(self.first_ms + self.interval_ms * (n - 1))
            usage = {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": 4 + n}
            message = {"role": "assistant", "content": "x" * n}
            return web.json_response(
                {
                    "id": "t",
                    "object": "chat.completion",
                    "model": self.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await until(self.first_ms + self.interval_ms * i)
            token = head + '{"index":0,"delta":{"content":"x"},"finish_reason":null}]}'
            if i == 0:
                role = head + '{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'
                await resp.write(f"data: {role}\n\ndata: {token}\n\n".encode())
            else:
                await resp.write(f"data: {token}\n\n".encode())
        final = head + '{"index":0,"delta":{},"finish_reason":"length"}]}'
        await resp.write(f"data: {final}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)


MODES = ("silent", "head-only", "1xx-flood", "huge", "huge-chunked", "firehose", "trailers", "broken")


class HostileSite(RawThreadedSite):
    """A raw HTTP site on a free loopback port, in a thread: its health route answers 200; each
    POST gets ``mode``: ``silent`` (read, never answered), ``head-only`` (an SSE head, then
    nothing), ``1xx-flood`` (103 heads, up to 100,000), ``huge`` (Content-Length 1.5 GB and zeros
    as fast as it may send them), ``huge-chunked`` (the same as a chunked JSON answer, no
    Content-Length), ``broken`` (a JSON answer whose Content-Length says 1,000 bytes: 10 come,
    then the connection closes), ``firehose`` (an SSE stream of 64 KiB events, up to 20,000),
    ``trailers`` (a chunked JSON answer whose last chunk is followed by trailer lines without
    end, up to 1,000,000).
    ``sent`` counts the bytes it wrote after heads; ``open`` the POSTs not finished."""

    def __init__(self, mode: str) -> None:
        assert mode in MODES
        self.mode = mode
        self.sent = 0
        self.posts = 0
        self.open = 0
        self._start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                if not head.startswith(b"POST"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    await writer.drain()
                    continue
                self.posts += 1
                self.open += 1
                try:
                    await self._answer(writer)
                finally:
                    self.open -= 1
                return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "head-only":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
        if mode in ("silent", "head-only"):
            await writer.drain()
            await asyncio.sleep(60)
        elif mode == "1xx-flood":
            for _ in range(100_000):
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                await writer.drain()
        elif mode == "huge":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1500000000\r\n\r\n"
            )
            piece = bytes(1 << 20)
            for _ in range(1430):
                writer.write(piece)
                self.sent += len(piece)
                await writer.drain()
        elif mode == "huge-chunked":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            piece = bytes(1 << 20)
            for _ in range(1430):
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                self.sent += len(piece)
                await writer.drain()
        elif mode == "broken":
            writer.write(
                b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id":"x",'
            )
            self.sent += 10
            await writer.drain()
        elif mode == "firehose":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            event = b"data: " + b"x" * 65536 + b"\n\n"
            for _ in range(20_000):
                writer.write(b"%x\r\n%b\r\n" % (len(event), event))
                self.sent += len(event)
                await writer.drain()
        elif mode == "trailers":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\n{}\r\n0\r\n"
            )
            for i in range(1_000_000):
                line = b"X-Trailer-%d: %b\r\n" % (i, b"t" * 64)
                writer.write(line)
                self.sent += len(line)
                await writer.drain()
