"""Server micro-benchmark: one HTTP server per process answering every POST with a small JSON
body (after reading the request body), for bench/daemon_bench.py to load with wrk.

    python bench/daemon/server_micro.py PORT --server gridctl|aiohttp|uvicorn [--uvloop]

gridctl: gridctl/net/server.py (the daemon's server); aiohttp: aiohttp.web with one route;
uvicorn: uvicorn with httptools and a bare ASGI app (no framework).
"""

from __future__ import annotations

import argparse
import asyncio

BODY = b'{"id":"x","object":"chat.completion","choices":[]}'


async def serve_gridctl(port: int) -> None:
    from gridctl.net.messages import Request, Response, ServerConfig
    from gridctl.net.server import HttpServer

    async def handler(req: Request) -> Response:
        return Response(200, BODY, "application/json")

    server = HttpServer(handler, ServerConfig(port=port))  # type: ignore[arg-type]
    await server.start()
    await asyncio.Event().wait()


async def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def asgi_app(scope: dict, receive: object, send: object) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()  # type: ignore[operator]
        more = msg.get("more_body", False)
    await send(  # type: ignore[operator]
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": BODY})  # type: ignore[operator]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--server", choices=["gridctl", "aiohttp", "uvicorn"], required=True)
    ap.add_argument("--uvloop", action="store_true")
    a = ap.parse_args()
    if a.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            asgi_app,
            host="127.0.0.1",
            port=a.port,
            loop="uvloop" if a.uvloop else "asyncio",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
        )
        return
    if a.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve_gridctl(a.port) if a.server == "gridctl" else serve_aiohttp(a.port))


if __name__ == "__main__":
    main()
