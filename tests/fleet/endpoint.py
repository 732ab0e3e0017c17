"""A minimal site endpoint on loopback: /health and /v1/models, with knobs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeEndpoint:
    def __init__(
        self,
        models: tuple[str, ...] = ("llama-3.1-8b-instruct",),
        health_code: int = 200,
        delay_s: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.models, self.health_code, self.delay_s, self.api_key = models, health_code, delay_s, api_key
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Authorization")))
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                if outer.api_key and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    self._send(401, {"error": "unauthorized"})
                elif self.path == "/health":
                    self._send(outer.health_code, {})
                elif self.path == "/v1/models":
                    self._send(
                        200, {"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]}
                    )
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        ThreadingHTTPServer.request_queue_size = 128
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
