"""Endpoint probes over http.client: the same answers, errors and TLS verification as with httpx."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import time
from dataclasses import replace

from gridctl.fleet.http_client import EndpointClient
from gridctl.fleet.probes import probe_endpoint
from gridctl.inventory.load import load_inventory
from tests.conftest import EXAMPLE
from tests.daemon.upstream import RawThreadedSite


class RawAnswer(RawThreadedSite):
    """A loopback site that reads a request's head and sends ``answer`` as raw bytes (a FIN,
    then the rest of the request read: no reset), or with ``answer`` None closes at once."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self._start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.answer is None:  # reads the request, answers nothing
                await reader.read(65536)
                return
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.answer)
            writer.write_eof()
            while await reader.read(65536):
                pass
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def test_https_endpoints_are_verified_against_certifi_and_http_ones_load_no_tls() -> None:
    import certifi

    client = EndpointClient()
    plain = client.connection("http://127.0.0.1:9", 5.0)
    assert not isinstance(plain, http.client.HTTPSConnection) and client._tls is None
    tls = client.connection("https://x.example.net:8443", 5.0)
    assert isinstance(tls, http.client.HTTPSConnection) and (tls.host, tls.port) == ("x.example.net", 8443)
    ctx = client._tls
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    bundle = ssl.create_default_context(cafile=certifi.where()).cert_store_stats()["x509_ca"]
    assert ctx.cert_store_stats()["x509_ca"] == bundle > 0
    assert client.connection("https://y.example.net", 5.0)._context is ctx  # type: ignore[attr-defined]


def test_probe_answers_and_failures_read_as_before() -> None:
    from tests.fleet.endpoint import FakeEndpoint
    from tests.fleet.sshd import FrozenServer, free_port

    site = list(load_inventory(EXAMPLE).sites)[0]
    up, sick, frozen = FakeEndpoint(api_key="k"), FakeEndpoint(health_code=503), FrozenServer()
    client = EndpointClient()
    try:
        env = {"K": "k"}
        keyed = replace(site, endpoint=up.url + "/", api_key_env="K")
        probe = probe_endpoint(client, keyed, env, 5.0)
        assert probe.health_status_code == 200 and probe.models == ("llama-3.1-8b-instruct",)
        assert probe.rtt_ms is not None and probe.error is None
        assert up.requests == [("/health", "Bearer k"), ("/v1/models", "Bearer k")]
        probe = probe_endpoint(client, replace(site, endpoint=sick.url), {}, 5.0)
        assert probe.health_status_code == 503 and probe.error is None
        refused = f"http://127.0.0.1:{free_port()}"
        probe = probe_endpoint(client, replace(site, endpoint=refused), {}, 5.0)
        assert probe.error is not None and probe.error.startswith(f"{refused}/health: cannot connect (")
        hung = f"http://127.0.0.1:{frozen.port}"
        probe = probe_endpoint(client, replace(site, endpoint=hung), {}, 0.5)
        assert probe.error == f"{hung}/health: timed out"
    finally:
        up.close()
        sick.close()
        frozen.close()


def test_endpoint_check_started_early_counts_every_site_once() -> None:
    from gridctl.fleet.healthcheck import EndpointCheck
    from tests.fleet.endpoint import FakeEndpoint

    good, slow = FakeEndpoint(), FakeEndpoint(delay_s=0.5)
    try:
        sites = list(load_inventory(EXAMPLE).sites)[:2]
        sites = [replace(sites[0], endpoint=good.url), replace(sites[1], endpoint=slow.url)]
        check = EndpointCheck(sites, {}, 5.0)
        deadline = time.monotonic() + 5
        while not good.requests or len(good.requests) < 2:  # the fast site is done, the slow one not
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ticks: list[int] = []
        check.watch(lambda: ticks.append(1))  # the one done already is counted at once
        probes = check.result()
        check.close()
        assert [p.health_status_code for p in probes] == [200, 200]
        assert len(ticks) == 2
    finally:
        good.close()
        slow.close()


def test_route_probe_and_live_failures_read_as_they_did_on_httpx() -> None:

    from gridctl.routing import live_completion, measure_rtt
    from tests.fleet.sshd import FrozenServer, free_port

    closing = RawAnswer(None)
    site = list(load_inventory(EXAMPLE).sites)[0]
    frozen = FrozenServer()
    expected = {
        f"http://127.0.0.1:{free_port()}": "ConnectError: [Errno 111] Connection refused",
        f"http://127.0.0.1:{frozen.port}": "ReadTimeout: timed out",
        closing.url: ("RemoteProtocolError: Server disconnected without sending a response."),
    }
    try:
        for url, error in expected.items():
            (probe,) = measure_rtt([replace(site, endpoint=url)], "us-east", {}, samples=1, timeout=0.5)
            assert probe.error == error and probe.rtt_ms is None, (url, probe)
            live = live_completion(replace(site, endpoint=url), "m", "us-east", {}, timeout=0.5)
            if error.startswith("ReadTimeout"):
                assert live.error is not None and live.error.startswith(
                    f"site {site.name} sent nothing for 0.5 s"
                )
            else:
                assert live.error == error, (url, live)
    finally:
        frozen.close()
        closing.close()


def test_route_probe_and_live_say_a_site_closed_before_the_end_of_its_answer_as_httpx_did() -> None:
    """An answer cut before the end its framing announced (a chunked stream without its last
    chunk, a body shorter than its Content-Length) is the site's failure, not a stream that
    ended without [DONE] (issue 16: http.client's readline takes a cut chunked stream for its
    end)."""

    from gridctl.routing import live_completion, measure_rtt

    event = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    answers = {
        "chunked": chunked + b"%x\r\n" % len(event) + event + b"\r\n",
        "length": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 100\r\n\r\n"
        + event,
    }
    sites = {kind: RawAnswer(answer) for kind, answer in answers.items()}
    site = list(load_inventory(EXAMPLE).sites)[0]
    cut = "RemoteProtocolError: peer closed connection without sending complete message body"
    expected = {
        "chunked": f"{cut} (incomplete chunked read)",
        "length": f"{cut} (received {len(event)} bytes, expected 100)",
    }
    try:
        for kind, error in expected.items():
            url = sites[kind].url
            live = live_completion(replace(site, endpoint=url), "m", "us-east", {}, timeout=2.0)
            assert (live.ok, live.status_code, live.error, live.text) == (False, None, error, "hi"), live
            assert live.ttft_ms is not None and live.total_ms is None
            (probe,) = measure_rtt([replace(site, endpoint=url)], "us-east", {}, samples=1, timeout=2.0)
            assert probe.error == error and probe.rtt_ms is None, (kind, probe)
    finally:
        for raw in sites.values():
            raw.close()


def test_route_probe_and_live_say_an_answer_that_is_not_http_as_httpx_did() -> None:
    """A status line that is not HTTP's reads as httpx (h11) wrote it (issue 16)."""

    from gridctl.routing import live_completion, measure_rtt

    raw = RawAnswer(b"HELLO THERE\r\n\r\n")
    site = replace(list(load_inventory(EXAMPLE).sites)[0], endpoint=raw.url)
    error = "RemoteProtocolError: illegal status line: bytearray(b'HELLO THERE')"
    try:
        (probe,) = measure_rtt([site], "us-east", {}, samples=1, timeout=2.0)
        assert probe.error == error, probe
        live = live_completion(site, "m", "us-east", {}, timeout=2.0)
        assert live.error == error, live
    finally:
        raw.close()


def test_route_probe_and_live_offer_http_1_1_by_alpn_as_httpx_did(tmp_path) -> None:
    """httpx (httpcore) set ALPN http/1.1 on every TLS context it connected with, the site's
    own included; a server that selects by ALPN sees the same ClientHello (issue 16)."""
    import socket
    import threading

    from gridctl.core.inventory.model import TlsFiles
    from gridctl.routing import live_completion, measure_rtt
    from tests.routing.tls import make_ca, server_context

    ca = make_ca(tmp_path)
    ctx = server_context(ca, tmp_path, "127.0.0.1")
    ctx.set_alpn_protocols(["http/1.1"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    offered: list[str | None] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    offered.append(conn.selected_alpn_protocol())
                    while conn.recv(65536):
                        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                continue

    threading.Thread(target=serve, daemon=True).start()
    site = replace(
        list(load_inventory(EXAMPLE).sites)[0],
        endpoint=f"https://127.0.0.1:{listener.getsockname()[1]}",
        tls=TlsFiles(ca=str(ca.cert)),
    )
    try:
        (probe,) = measure_rtt([site], "us-east", {}, samples=1, timeout=2.0)
        assert probe.error is None, probe
        live = live_completion(site, "m", "us-east", {}, timeout=2.0)
        assert live.status_code == 404, live
        assert offered == ["http/1.1", "http/1.1"]
    finally:
        listener.close()
