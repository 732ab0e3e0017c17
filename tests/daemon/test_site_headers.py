"""What crosses the daemon's HTTP edges: the headers a site sends (what its client may see),
an answer from a site that is not valid HTTP, and the requests the daemon refuses before
routing them (counted by kind in /metrics). A real daemon, real sites over sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.daemon.conftest import FIRST, chat, set_endpoint, start_daemon
from tests.daemon.upstream import RawThreadedSite

ANSWER = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()
# headers the site sets that are not its to say, or that it marks as hop-by-hop
SITE_HEADERS = (
    b"X-Grid-Site: somewhere-else\r\n"
    b"x-grid-slo: met\r\n"
    b"X-Grid-Predicted-Ms: 1\r\n"
    b"Connection: X-Secret, keep-alive\r\n"
    b"X-Secret: internal-route-42\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"X-Upstream: yes\r\n"
    b"X-Request-Id: the-sites-own\r\n"
)


def _answer(path: bytes) -> bytes:
    if path == b"/health":
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    if path == b"/v1/chat/completions":
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + SITE_HEADERS
            + b"Content-Length: %d\r\n\r\n" % len(ANSWER)
            + ANSWER
        )
    if path == b"/v1/completions":  # RFC 9112 section 6.3: an error, though the values agree
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class RawSite(RawThreadedSite):
    """A site that writes its answers byte for byte (keep-alive), on its own loop in a thread;
    it records the path of each request."""

    def __init__(self) -> None:
        self.paths: list[bytes] = []
        self._start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.paths.append(path)
                writer.write(_answer(path))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def site_daemon(lab) -> Iterator[tuple[RawSite, str]]:  # type: ignore[no-untyped-def]
    site = RawSite()
    set_endpoint(lab.overlay, FIRST, site.url)
    d = start_daemon(lab.overlay, "--region", "us-east")
    try:
        yield site, d.url
    finally:
        d.stop()
        site.close()


def test_a_sites_grid_headers_and_connection_named_headers_never_reach_the_client(
    site_daemon: tuple[RawSite, str],
) -> None:
    site, url = site_daemon
    r = httpx.post(url + "/v1/chat/completions", json=chat(), timeout=30)
    assert r.status_code == 200 and r.content == ANSWER and site.paths.count(b"/v1/chat/completions") == 1
    assert r.headers.get_list("x-grid-site") == [FIRST]  # the daemon's word only, not the site's next to it
    assert "met" not in r.headers.get_list("x-grid-slo")
    assert (
        r.headers.get_list("x-grid-predicted-ms") != ["1"]
        and len(r.headers.get_list("x-grid-predicted-ms")) == 1
    )
    assert "x-secret" not in r.headers and "keep-alive" not in r.headers  # named by its Connection header
    assert "X-Secret" not in r.headers.get("connection", "")
    assert r.headers["x-upstream"] == "yes"  # the rest of the site's headers pass
    assert len(ids := r.headers.get_list("x-request-id")) == 1 and ids != ["the-sites-own"]  # the daemon's


def test_a_site_answering_invalid_http_is_failed_over_and_refused_requests_are_counted_by_kind(
    site_daemon: tuple[RawSite, str],
) -> None:
    site, url = site_daemon
    r = httpx.post(url + "/v1/completions", json={"model": chat()["model"], "prompt": "x", "max_tokens": 4})
    assert r.status_code == 200 and r.headers["x-grid-site"] != FIRST  # a protocol error: the next site
    assert b"/v1/completions" in site.paths
    status = httpx.get(url + "/grid/status").json()["sites"]
    assert next(s for s in status if s["site"] == FIRST)["failures"] == 1

    host, port = url.removeprefix("http://").split(":")
    for raw, code in (
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\nX-B: 2\r\n\r\n", b"400"),
        (b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"a: 1\r\n" * 8000 + b"\r\n", b"431"),
    ):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(raw)
            assert s.recv(100).startswith(b"HTTP/1.1 " + code)
    metrics = httpx.get(url + "/metrics").text
    assert "# TYPE gridctl_http_parse_errors_total counter" in metrics
    assert 'gridctl_http_parse_errors_total{kind="invalid_header"} 1\n' in metrics
    assert 'gridctl_http_parse_errors_total{kind="uri_too_long"} 2\n' in metrics
    assert 'gridctl_http_parse_errors_total{kind="too_many_headers"} 1\n' in metrics
