"""A small, fast HTTP/1.1 server on asyncio: one ``asyncio.Protocol`` per connection.

Generic, with no knowledge of what it serves: a handler takes a :class:`Request`
and returns a :class:`Response` (sent with Content-Length) or a
:class:`StreamingResponse` (sent chunk by chunk with chunked transfer encoding,
as Server-Sent Events need). Requests are parsed by llhttp (``httptools``, Node.js's
parser), one parser per connection, every leniency off. What it does:

- keep-alive by default (HTTP/1.1), ``Connection: close`` and HTTP/1.0 honoured;
  pipelined requests answered in order; an idle connection closed after
  ``keepalive_s`` (one that has sent nothing since it was accepted after ``head_timeout_s``);
- request bodies by Content-Length or chunked; bodies over ``max_body`` get 413
  before the body is read; heads over ``max_head``, with more than ``max_headers``
  header lines or a header over ``max_header_line`` get 431, a target over
  ``max_target`` 414; malformed requests get 400 (an unsupported version 505, a
  transfer coding other than chunked 501); the connection is then closed after the
  client has read the answer (the rest of its upload is discarded, not reset). Each
  refusal is counted by kind in ``HttpServer.parse_errors``;
- ``Expect: 100-continue`` answered, once every response before that request's is complete;
- back-pressure: a stream waits while the transport's buffer is full; reading
  pauses while too many pipelined requests are queued;
- deadlines: a head must be whole within ``head_timeout_s`` of its first byte, a body may
  not fall silent for ``body_timeout_s`` (either: 408, then closed); a client that reads
  nothing while a response waits to be written for ``send_timeout_s`` is aborted (its
  handler cancelled, so what it held is freed);
- at most ``max_connections`` at once: one more is answered 503 and closed, and beyond
  ``max_connections`` + its eighth it is closed at once (a file-descriptor flood must not
  take the process to its limit, where nobody is served);
- a handler or stream raising :class:`DropConnection` closes the connection
  mid-response (for simulated failures); a client that goes away cancels
  its handler (so a queued or hung request frees its resources);
- TLS when ``ServerConfig.tls`` is given (the handshake bounded by ``head_timeout_s``; a
  :class:`gridctl.net.tls.RotatingContext` lets its certificates change while it serves);
- ``stop()`` stops accepting, lets in-flight responses finish within a grace
  period, then aborts what is left.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from gridctl.net.connection import Connection
from gridctl.net.messages import (
    Handler,
    ServerConfig,
)

_TLS_SHUTDOWN_S = 1.0


class HttpServer:
    """``await start()``, ``port``, ``await stop()``; or ``async with HttpServer(...)``.
    ``parse_errors``: requests refused before a handler saw them, by kind (``invalid_header``,
    ``invalid_chunk``, ``head_too_large``, ``uri_too_long``, ``body_too_large``, ...)."""

    def __init__(self, handler: Handler, config: ServerConfig | None = None) -> None:
        self.handler = handler
        self.config = config or ServerConfig()
        self.connections: set[Connection] = set()
        self.stopping = False
        self.parse_errors: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        c = self.config
        self._server = await loop.create_server(
            lambda: Connection(self),
            c.host,
            c.port,
            backlog=c.backlog,
            reuse_address=True,
            reuse_port=c.reuse_port or None,
            ssl=c.tls,
            # a handshake that does not finish is a slowloris too; a closing connection waits this
            # long for the client's close_notify (a kept-alive client that reads nothing never sends
            # it, and would hold a drain for the transport's default of 30 s)
            ssl_handshake_timeout=c.head_timeout_s if c.tls is not None else None,
            ssl_shutdown_timeout=_TLS_SHUTDOWN_S if c.tls is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls is not None else "http"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def stop(self, grace: float = 2.0) -> int:
        """Stop accepting; finish in-flight responses within ``grace`` seconds; abort the rest.
        Returns how many connections were aborted while answering."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        busy = sum(not conn.idle for conn in self.connections)
        tasks = [conn.task for conn in self.connections if conn.task is not None]
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)
        if tasks:  # let the cancelled handlers run their cleanup (accounting) before returning
            await asyncio.wait(tasks, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        return busy

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
