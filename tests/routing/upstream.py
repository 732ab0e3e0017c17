"""A stand-in inference site on loopback, for routing tests through real nginx and HAProxy.

OpenAI-like: ``POST /v1/chat/completions`` answers with a body naming the site
(non-streaming JSON, or SSE chunks ending with ``data: [DONE]`` when the body
asks for ``"stream": true``); ``GET /health``. Every request is recorded
(path, Host header, body). A streaming request with the header ``x-test-hold:
ID`` sends its first chunk, then waits until the test calls ``release(ID)``
before sending the rest, and records each step: the test proves a
proxy did not buffer by receiving the first chunk while the site still holds
the rest, with no timing involved.

``fault`` makes the site misbehave on chat completions (health checks still
pass, as a site whose model server alone is broken): ``"503"`` answers 503
with an OpenAI error body, ``"drop"`` closes the connection without answering,
``"hang"`` reads the request and never answers (until ``stop()`` or
``HOLD_TIMEOUT_S``). Each request's ``x-test-id`` header is recorded, and so is
every id the site answered with a 200 head (``answered``), so a test counts
which site answered what, and whether any request was answered twice.

``stop()`` closes the listening socket and every open connection (a stopped
site refuses connections); ``start()`` serves again on the same port.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLD_TIMEOUT_S = 10.0  # a hold the test never releases ends by itself


@dataclass
class Hold:
    release: threading.Event = field(default_factory=threading.Event)
    resumed: threading.Event = field(default_factory=threading.Event)  # set before the rest is sent
    released_by_test: bool = False


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    host: str | None
    body: dict[str, Any]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, family: int) -> None:
        self.address_family = family
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(request)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out whole, at once
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.open_lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a proxy closing a connection mid-answer is part of the tests, not news

    def drop_connections(self) -> None:
        with self.open_lock:
            conns = list(self.open)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed
                conn.shutdown(socket.SHUT_RDWR)


class Upstream:
    """One site: ``name`` is what its answers say; ``url`` its endpoint."""

    def __init__(
        self,
        name: str,
        addresses: Sequence[str] = ("127.0.0.1",),
        tls: ssl.SSLContext | None = None,
        url_host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.addresses = tuple(addresses)
        self.tls = tls
        self.requests: list[Seen] = []
        self.holds: dict[str, Hold] = {}
        self.sni: list[str | None] = []
        self.fault: str | None = None  # None, "503", "drop", "hang"
        self.answered: list[str] = []  # x-test-id of each request answered with a 200 head
        self._unhang = threading.Event()
        self._lock = threading.Lock()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.port = 0
        if tls is not None:
            tls.sni_callback = self._on_sni
        self.start()
        self.url = f"{'https' if tls else 'http'}://{url_host}:{self.port}"

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._unhang.clear()
        attempts = 1 if self.port else 20  # a restart keeps its port; a first start finds one
        for attempt in range(attempts):
            try:
                self._bind_all()
                break
            except OSError:  # free on one address, taken on another: try another port
                self._close_servers()
                if attempt == attempts - 1:
                    raise
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, args=(0.05,), daemon=True, name=f"site-{self.name}"
            )
            thread.start()
            self._threads.append(thread)

    def _bind_all(self) -> None:
        port = self.port
        for addr in self.addresses:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            server = _Server((addr, port), self._handler(), family)
            if self.tls is not None:
                server.socket = self.tls.wrap_socket(server.socket, server_side=True)
            self._servers.append(server)
            port = server.server_address[1]
        self.port = port

    def stop(self) -> None:
        """Refuse connections from now on, and cut the open ones."""
        self._unhang.set()
        for server in self._servers:
            server.shutdown()
        self._close_servers()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def _close_servers(self) -> None:
        for server in self._servers:
            server.server_close()
            server.drop_connections()
        self._servers = []

    # -- what the test sees ----------------------------------------------------------------

    def hold(self, hold_id: str) -> Hold:
        with self._lock:
            return self.holds.setdefault(hold_id, Hold())

    def release(self, hold_id: str) -> None:
        hold = self.hold(hold_id)
        hold.released_by_test = True
        hold.release.set()

    def completions(self) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0].endswith("/chat/completions")]

    def _on_sni(self, sock: Any, server_name: str | None, ctx: Any) -> None:
        self.sni.append(server_name)

    # -- the protocol ----------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                site._record(self, {})
                if self.path.endswith("/health"):
                    self._json(200, {"status": "ok", "site": site.name})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                body = self._read_body()
                site._record(self, body)
                if not self.path.split("?")[0].endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                elif site.fault == "503":
                    error = {"message": f"{site.name} is overloaded", "type": "server_error"}
                    self._json(503, {"error": {**error, "param": None, "code": None}})
                elif site.fault in ("drop", "hang"):
                    if site.fault == "hang":
                        site._unhang.wait(HOLD_TIMEOUT_S)
                    self.close_connection = True  # and nothing written: the peer sees a close
                    return
                elif body.get("stream"):
                    self._stream(body)
                else:
                    self._json(
                        200,
                        {
                            "object": "chat.completion",
                            "model": body.get("model"),
                            "site": site.name,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": f"hi from {site.name}"},
                                }
                            ],
                        },
                    )

            def _read_body(self) -> dict[str, Any]:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        data += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return json.loads(data) if data else {}

            def _stream(self, body: dict[str, Any]) -> None:
                site._answered(self)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("x-grid-site", site.name)
                self.end_headers()
                words = [f"hi from {site.name}", " and", " more", " words"]
                hold_id = self.headers.get("x-test-hold")
                for i, word in enumerate(words):
                    event = {"object": "chat.completion.chunk", "site": site.name, "index": i}
                    event["choices"] = [{"index": 0, "delta": {"content": word}}]
                    self._chunk(f"data: {json.dumps(event)}\n\n")
                    if i == 0 and hold_id:
                        hold = site.hold(hold_id)
                        hold.release.wait(HOLD_TIMEOUT_S)
                        hold.resumed.set()
                self._chunk("data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _chunk(self, text: str) -> None:
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _json(self, code: int, payload: dict[str, Any]) -> None:
                if code == 200:
                    site._answered(self)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-grid-site", site.name)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        return Handler

    def _answered(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            if rid := handler.headers.get("x-test-id"):
                self.answered.append(rid)

    def _record(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(Seen(handler.command, handler.path, handler.headers.get("Host"), body))
