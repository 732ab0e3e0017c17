"""A scripted OpenAI-like site for byte-level checks: fixed chunks, recorded headers."""

from __future__ import annotations

import asyncio
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


class Upstream:
    def __init__(self, gap_s: float = 0.02, tls: ssl.SSLContext | None = None) -> None:
        self.gap_s = gap_s
        self.tls = tls
        self.seen: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

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

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "llama-3.1-8b-instruct"}]})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._cut)
        app.router.add_post("/v1/embeddings", self._no_content)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
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
