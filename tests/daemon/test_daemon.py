"""The placement daemon against lab sites and scripted upstreams, over real HTTP."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, cli_env, run_cli
from tests.daemon.conftest import (
    M8,
    chat,
    pid_alive,
    probed_status,
    set_capacity,
    set_endpoint,
    start_daemon,
)
from tests.daemon.upstream import CHUNKS, Upstream
from tests.fleet.sshd import free_port


def test_nearest_eligible_site_wins_and_sovereignty_holds(daemon) -> None:
    r = daemon.post(chat())
    assert r.status_code == 200, r.text
    assert r.headers["x-grid-site"] == "jc-edge-01"
    assert r.json()["choices"][0]["message"]["content"]
    r = daemon.post(chat(), headers={"x-grid-region": "eu-fr"})
    assert r.headers["x-grid-site"] == "par-edge-02"
    for region in ("eu-de", "eu-fr", "eu-de-sovereign"):
        for i in range(5):
            r = daemon.post(chat(f"q{i}"), headers={"x-grid-region": region})
            assert r.status_code == 200
            assert r.headers["x-grid-site"] in {
                "ber-edge-01",
                "fra-pop-01",
                "muc-co-02",
                "lyo-co-05",
                "par-edge-02",
                "par-pop-01",
            }
    r = daemon.post(chat(), headers={"x-grid-region": "eu-de", "x-grid-jurisdiction": "FR"})
    assert r.headers["x-grid-site"] in {"lyo-co-05", "par-edge-02", "par-pop-01"}


def test_tight_slo_excludes_far_sites_and_no_site_is_503_with_reasons(daemon) -> None:
    route = httpx.get(daemon.url + "/grid/route", params={"model": M8, "slo_ms": "1.5"}).json()
    assert [x["site"] for x in route["ranked"]] == ["jc-edge-01", "nwk-co-03"]
    r = daemon.post(chat(), headers={"x-grid-slo-ms": "1.5", "x-grid-region": "us-central"})
    assert r.status_code == 200 and r.headers["x-grid-site"] in {"chi-co-07"}
    r = daemon.post(chat(), headers={"x-grid-slo-ms": "0.1"})
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["type"] == "no_eligible_site" and "over the 0.1 ms SLO" in " ".join(
        err["reasons"]["jc-edge-01"]
    )
    r = daemon.post(chat(model="no-such-model"))
    assert r.status_code == 503 and "does not serve no-such-model" in r.text


def test_bad_requests(daemon) -> None:
    r = httpx.post(daemon.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]
    r = daemon.post(chat(), headers={"x-grid-region": "mars"})
    assert r.status_code == 400 and "unknown client region" in r.text
    big = {"model": M8, "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    r = httpx.post(daemon.url + "/v1/chat/completions", json=big, timeout=30)
    assert r.status_code == 413


def test_failover_before_the_first_byte(lab, daemon) -> None:
    lab.set_mode("jc-edge-01", "503")
    r = daemon.post(chat())
    assert r.status_code == 200 and r.headers["x-grid-site"] == "nwk-co-03"
    assert re.search(r"^gridctl_failovers_total [1-9]", httpx.get(daemon.url + "/metrics").text, re.M)
    lab.set_mode("nwk-co-03", "hang")
    deadline = time.monotonic() + 15
    status: dict = {}
    while time.monotonic() < deadline:  # the active probe times out on the hung site
        status = {s["site"]: s for s in httpx.get(daemon.url + "/grid/status").json()["sites"]}
        if status["nwk-co-03"]["probe_ok"] is False:
            break
        time.sleep(0.2)
    assert status["nwk-co-03"]["probe_ok"] is False and status["nwk-co-03"]["status"] == "failed"
    assert status["jc-edge-01"]["probe_ok"] is False  # its health route answers 503 too
    r = daemon.post(chat())
    assert r.status_code == 200 and r.headers["x-grid-site"] not in ("jc-edge-01", "nwk-co-03")


def test_streaming_is_byte_for_byte_and_secrets_stay_home(tmp_path: Path, lab) -> None:
    up = Upstream()
    try:
        site = lab.overlay / "sites" / "jc-edge-01.yaml"
        text = site.read_text()
        text = re.sub(r"api_key_env: .*\n", "", text)
        text = re.sub(r"endpoint: .*", f"endpoint: {up.url}\napi_key_env: JC_KEY", text)
        site.write_text(text)
        d = start_daemon(lab.overlay, "--region", "us-east", env=cli_env(JC_KEY="site-secret"))
        try:
            body = chat(stream=True)
            raw = json.dumps(body).encode()
            got = b""
            with httpx.stream(
                "POST",
                d.url + "/v1/chat/completions",
                content=raw,
                headers={
                    "Authorization": "Bearer client-secret",
                    "Connection": "keep-alive",
                    "x-grid-session": "",
                    "Content-Type": "application/json",
                },
            ) as r:
                assert r.status_code == 200 and r.headers["x-grid-site"] == "jc-edge-01"
                assert r.headers["x-upstream"] == "yes"
                for chunk in r.iter_raw():
                    got += chunk
            assert got == b"".join(CHUNKS)
            seen = up.seen[-1]
            assert seen.get("Authorization") == "Bearer site-secret"
            assert "client-secret" not in json.dumps(seen)
            assert up.bodies[-1] == raw  # the body reaches the site unchanged
            assert not any(
                k.lower().startswith("x-grid-") and k.lower() != "x-grid-client-region" for k in seen
            )
        finally:
            d.stop()
    finally:
        up.close()


VICTIM = """
import sys, time
from pathlib import Path
from gridctl.inventory.load import load_inventory
from gridctl.lab.grid import LabThread, LabOptions
from gridctl.lab.site import build_site_specs
import dataclasses
inv = load_inventory(Path(sys.argv[1]))
spec = next(s for s in build_site_specs(inv) if s.name == "jc-edge-01")
with LabThread([dataclasses.replace(spec, port=int(sys.argv[2]))], LabOptions(speed=2.0)):
    print("up", flush=True)
    time.sleep(3600)
"""


def test_site_killed_during_a_load_run(tmp_path: Path, lab) -> None:
    from tests.conftest import EXAMPLE

    port = free_port()
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, str(EXAMPLE), str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )
    assert victim.stdout is not None and victim.stdout.readline().strip() == "up"
    site = lab.overlay / "sites" / "jc-edge-01.yaml"
    site.write_text(re.sub(r"endpoint: .*", f"endpoint: http://127.0.0.1:{port}", site.read_text()))
    d = start_daemon(lab.overlay, "--region", "us-east")
    streams: list[tuple[str, bytes]] = []

    def stream_one() -> None:
        data = b""
        with httpx.stream(
            "POST", d.url + "/v1/chat/completions", json=chat(stream=True, max_tokens=200), timeout=60
        ) as r:
            name = r.headers.get("x-grid-site", "")
            for chunk in r.iter_raw():
                data += chunk
        streams.append((name, data))

    try:
        threads = [threading.Thread(target=stream_one) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # streams are running on the victim
        victim.kill()
        victim.wait()
        after = [d.post(chat(f"after {i}")) for i in range(10)]  # requests that had not started
        for t in threads:
            t.join(60)
        assert all(r.status_code == 200 for r in after), [r.text for r in after]
        assert all(r.headers["x-grid-site"] != "jc-edge-01" for r in after)
        cut = [data for name, data in streams if name == "jc-edge-01"]
        assert cut, "the streams should have started on the victim"
        for data in cut:
            assert b"[DONE]" not in data
            assert b'"type": "upstream_cut"' in data and data.rstrip().endswith(b"}")
    finally:
        if victim.poll() is None:
            victim.kill()
        d.stop()


def test_affinity_follows_the_prefix_until_the_site_is_busy(lab) -> None:
    set_capacity(lab.overlay, "chi-co-07", 3)
    d = start_daemon(lab.overlay, "--region", "us-east")
    try:
        prefix = "You are the grid's voice agent. " * 40  # ~1.3 KB shared system prompt
        r = d.post(chat(prefix + "first"), headers={"x-grid-region": "us-central"})
        assert r.headers["x-grid-site"] == "chi-co-07"
        # from us-east, jc-edge-01 ranks first, but chi-co-07 probably holds the prefix
        for i in range(3):
            r = d.post(chat(prefix + f"again {i}"))
            assert r.headers["x-grid-site"] == "chi-co-07", i
        assert d.post(chat("no shared prefix")).headers["x-grid-site"] == "jc-edge-01"
        # keep chi-co-07 busy: affinity must not pile onto a saturated site
        lab.set_mode("chi-co-07", "slow", delay_ms=100_000)  # / speed 50: 2 s before the first token
        held = []
        for _ in range(3):
            held.append(httpx.Client(timeout=60))
        blockers = [
            threading.Thread(
                target=lambda c=c: c.post(
                    d.url + "/v1/chat/completions",
                    json=chat(prefix + "hold", max_tokens=400),
                    headers={"x-grid-region": "us-central"},
                )
            )
            for c in held
        ]
        for t in blockers:
            t.start()
        time.sleep(0.5)
        r = d.post(chat(prefix + "while busy"))
        assert r.headers["x-grid-site"] != "chi-co-07"
        for t in blockers:
            t.join(60)
    finally:
        d.stop()


def test_session_key_sticks_to_one_site(daemon) -> None:
    sites = {
        daemon.post(chat(f"turn {i}"), headers={"x-grid-session": "call-42"}).headers["x-grid-site"]
        for i in range(6)
    }
    assert len(sites) == 1
    others = {
        daemon.post(chat("x"), headers={"x-grid-session": f"call-{i}"}).headers["x-grid-site"]
        for i in range(30)
    }
    assert len(others) > 1  # rendezvous hashing spreads sessions


def test_429_when_every_site_is_full(lab) -> None:
    for name in (
        "jc-edge-01",
        "nwk-co-03",
        "phl-co-12",
        "nyc-pop-01",
        "phl-pop-01",
        "chi-co-07",
        "cloud-use1",
        "chi-pop-01",
    ):
        set_capacity(lab.overlay, name, 1)
    lab.set_mode("*", "slow", delay_ms=100_000)  # / speed 50: every answer takes 2 s
    d = start_daemon(lab.overlay, "--region", "us-east", "--queue-timeout", "0.3")
    try:
        results: list[httpx.Response] = []

        def one(i: int) -> None:
            results.append(d.post(chat(f"load {i}", max_tokens=300), timeout=60))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) >= 8 and 429 in codes, codes
        shed = next(r for r in results if r.status_code == 429)
        assert shed.headers["Retry-After"] == "1" and shed.json()["error"]["type"] == "rate_limit_exceeded"
        assert 'gridctl_shed_total{reason="all-sites-full"}' in httpx.get(d.url + "/metrics").text
    finally:
        d.stop()


def test_reload_on_sighup_and_on_change_keeps_in_flight_requests(lab) -> None:
    d = start_daemon(lab.overlay, "--region", "us-east")
    try:
        slow: list[httpx.Response] = []
        t = threading.Thread(target=lambda: slow.append(d.post(chat("slow", max_tokens=300), timeout=60)))
        t.start()
        time.sleep(0.3)
        site = lab.overlay / "sites" / "jc-edge-01.yaml"
        site.write_text(site.read_text().replace("drain: false", "drain: true"))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and d.post(chat("probe")).headers["x-grid-site"] == "jc-edge-01":
            time.sleep(0.1)
        assert d.post(chat("after")).headers["x-grid-site"] == "nwk-co-03"
        t.join(60)
        assert slow and slow[0].status_code == 200 and slow[0].headers["x-grid-site"] == "jc-edge-01"
        # an inventory change without a signal is picked up too
        site.write_text(site.read_text().replace("drain: true", "drain: false"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and d.post(chat("p")).headers["x-grid-site"] != "jc-edge-01":
            time.sleep(0.2)
        assert d.post(chat("back")).headers["x-grid-site"] == "jc-edge-01"
        # a broken inventory is refused and the running one kept
        site.write_text(site.read_text().replace("kind: edge", "kind: edgy"))
        time.sleep(3)
        assert d.post(chat("still")).status_code == 200
    finally:
        rc, err = d.stop()
    assert "reloaded inventory (SIGHUP)" in err and "reload (inventory changed) failed" in err


def test_sigterm_drains_in_flight_then_exits_0(lab) -> None:
    d = start_daemon(lab.overlay, "--region", "us-east")
    slow: list[httpx.Response] = []
    t = threading.Thread(target=lambda: slow.append(d.post(chat("slow", max_tokens=400), timeout=60)))
    t.start()
    time.sleep(0.4)
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        httpx.get(d.url + "/healthz", timeout=2)
        refused = False
    except httpx.HTTPError:
        refused = True
    t.join(60)
    rc, err = d.stop()
    assert rc == 0 and refused
    assert slow and slow[0].status_code == 200 and slow[0].json()["usage"]["completion_tokens"] == 400
    assert not pid_alive(d.proc.pid)


def test_off_loopback_needs_a_token_and_the_token_is_checked(lab) -> None:
    r = run_cli("daemon", "run", "--listen", "0.0.0.0:0", inventory=lab.overlay)
    assert (
        r.rc == 2
        and "refusing to listen on 0.0.0.0 without a token" in r.err
        and "GRIDCTL_DAEMON_TOKEN" in r.err
    )
    d = start_daemon(lab.overlay, "--region", "us-east", env=cli_env(GRIDCTL_DAEMON_TOKEN="t0ken"))
    try:
        assert d.post(chat()).status_code == 401
        assert d.post(chat(), headers={"Authorization": "Bearer t0ken"}).status_code == 200
        assert httpx.get(d.url + "/healthz").status_code == 200
        r = run_cli(
            "daemon",
            "status",
            "--url",
            d.url,
            "-o",
            "json",
            inventory=lab.overlay,
            env=cli_env(GRIDCTL_DAEMON_TOKEN="t0ken\n"),  # as $(cat file) or an EnvironmentFile may leave it
        )
        assert r.rc == 0, r
        assert {s["site"] for s in json.loads(r.out)["sites"]} >= {"jc-edge-01", "fra-pop-01"}
    finally:
        d.stop()


def test_models_status_metrics_and_cli(daemon) -> None:
    models = httpx.get(daemon.url + "/v1/models").json()
    assert {m["id"] for m in models["data"]} == {
        "llama-3.1-8b-instruct",
        "llama-3.1-70b-instruct",
        "parakeet-tdt-0.6b-v2",
    }
    daemon.post(chat())
    text = httpx.get(daemon.url + "/metrics").text
    for name in (
        "gridctl_requests_total",
        "gridctl_request_duration_seconds_bucket",
        "gridctl_in_flight",
        "gridctl_site_up",
        "gridctl_failovers_total",
        "gridctl_time_to_first_byte_seconds_count",
    ):
        assert name in text
    assert 'gridctl_requests_total{site="jc-edge-01",status="200"} 1' in text
    r = run_cli("daemon", "status", "--url", daemon.url, inventory=daemon.inventory)
    assert r.rc in (0, 3) and r.out.splitlines()[1].split()[:2] == ["SITE", "STATUS"]
    r = run_cli("daemon", "status", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.rc == 4 and "no daemon answers" in r.err


def test_unit_renders(inv) -> None:
    r = run_cli("daemon", "unit", "--region", "us-east", inventory=inv)
    assert (
        r.rc == 0
        and "ExecStart=" in r.out
        and "--region us-east" in r.out
        and "ExecReload=/bin/kill -HUP" in r.out
    )


def test_clients_hanging_up_do_not_count_against_the_site(daemon) -> None:
    import socket

    body = json.dumps(chat(stream=True, max_tokens=300)).encode()
    host, port = daemon.url.removeprefix("http://").split(":")
    for _ in range(4):  # read the first bytes of a stream, then hang up
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert s.recv(200).startswith(b"HTTP/1.1 200")
    plain = json.dumps(chat(max_tokens=300)).encode()
    for _ in range(3):  # hang up while the daemon still waits for the site's answer
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(plain)}\r\n\r\n".encode()
                + plain
            )
            time.sleep(0.1)
    time.sleep(1.0)
    sites = httpx.get(daemon.url + "/grid/status").json()["sites"]
    site = next(s for s in sites if s["site"] == "jc-edge-01")
    assert site["breaker"] == "closed" and site["failures"] == 0 and site["status"] == "ok"
    assert site["requests"] == 7
    assert all(s["in_flight"] == 0 for s in sites)  # every abandoned attempt gave its slot back
    r = daemon.post(chat())
    assert r.status_code == 200 and r.headers["x-grid-site"] == "jc-edge-01"
    assert 'status="client-gone"' in httpx.get(daemon.url + "/metrics").text


def test_a_site_cutting_a_plain_answer_cuts_the_client_too(lab) -> None:
    """A non-stream body the site breaks off must not reach the client as a short body that looks whole."""
    up = Upstream()
    try:
        set_endpoint(lab.overlay, "jc-edge-01", up.url)
        d = start_daemon(lab.overlay, "--region", "us-east")
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.post(d.url + "/v1/completions", json={"model": M8, "prompt": "x"}, timeout=10)
            status = httpx.get(d.url + "/grid/status").json()["sites"]
            jc = next(s for s in status if s["site"] == "jc-edge-01")
            assert jc["failures"] == 1 and jc["in_flight"] == 0
            assert "gridctl_stream_cuts_total 1" in httpx.get(d.url + "/metrics").text
        finally:
            d.stop()
    finally:
        up.close()


def test_https_sites_are_verified_against_the_system_trust_store(tmp_path: Path, lab) -> None:
    """A site behind TLS: reached when its CA is trusted (SSL_CERT_FILE, as for a private CA),
    refused when it is not, and then the request fails over; no byte of it reaches the site."""
    from tests.routing.tls import make_ca, server_context

    ca = make_ca(tmp_path)
    up = Upstream(tls=server_context(ca, tmp_path))
    try:
        set_endpoint(lab.overlay, "jc-edge-01", up.url)
        trusted = start_daemon(lab.overlay, "--region", "us-east", env=cli_env(SSL_CERT_FILE=str(ca.cert)))
        try:
            with httpx.stream("POST", trusted.url + "/v1/chat/completions", json=chat(stream=True)) as r:
                assert r.status_code == 200 and r.headers["x-grid-site"] == "jc-edge-01"
                assert b"".join(r.iter_raw()) == b"".join(CHUNKS)
        finally:
            trusted.stop()
        assert len(up.seen) == 1
        env = cli_env()
        env.pop("SSL_CERT_FILE", None)
        untrusted = start_daemon(lab.overlay, "--region", "us-east", env=env)
        try:
            r = untrusted.post(chat())
            assert r.status_code == 200 and r.headers["x-grid-site"] != "jc-edge-01"
            jc = probed_status(untrusted, "jc-edge-01")  # the request may have come before the first probe
            assert jc["probe_ok"] is False and jc["status"] == "failed"
            assert "certificate is not trusted" in jc["probe_error"], jc
            assert "SSL_CERT_FILE" in jc["probe_error"]
        finally:
            untrusted.stop()
        assert len(up.seen) == 1  # the untrusted daemon never sent it a request
    finally:
        up.close()


def _answer(sock, buf: bytearray) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    """One Content-Length (or bodiless) answer from a raw socket: (head, body)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, bytes(buf)
        buf += data
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).lower()
    del buf[: end + 4]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(buf) < length:
        buf += sock.recv(65536)
    body = bytes(buf[:length])
    del buf[:length]
    return head, body


def test_a_site_s_204_keeps_the_client_connection_usable_and_smuggled_headers_are_refused(lab) -> None:
    import socket

    up = Upstream()
    try:
        set_endpoint(lab.overlay, "jc-edge-01", up.url)
        d = start_daemon(lab.overlay, "--region", "us-east")
        try:
            host, port = d.url.removeprefix("http://").split(":")
            body = json.dumps({"model": M8, "input": "x"}).encode()
            request = (
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            with socket.create_connection((host, int(port)), timeout=10) as s:
                buf = bytearray()
                s.sendall(request)
                head, got = _answer(s, buf)
                assert head.startswith(b"http/1.1 204") and got == b""
                assert b"x-grid-site: jc-edge-01" in head and b"x-upstream: yes" in head
                assert b"content-length" not in head and b"transfer-encoding" not in head
                s.sendall(request)  # the same connection: nothing stray was left on it
                head, _ = _answer(s, buf)
                assert head.startswith(b"http/1.1 204") and not buf
            assert len(up.seen) == 2
            # a bare LF inside a header would smuggle headers (or a request) past the daemon
            smuggle = request.replace(
                b"Host: x\r\n", b"Host: x\r\nX-Foo: a\nAuthorization: Bearer stolen\r\n"
            )
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(smuggle)
                head, got = _answer(s, bytearray())
                assert head.startswith(b"http/1.1 400") and b"control character" in got
            assert len(up.seen) == 2  # the site never saw it
        finally:
            d.stop()
    finally:
        up.close()


def test_a_site_whose_api_key_has_a_control_character_is_out_and_its_key_never_shown(lab) -> None:
    site = lab.overlay / "sites" / "jc-edge-01.yaml"
    text = re.sub(r"api_key_env: .*\n", "", site.read_text())
    site.write_text(re.sub(r"(endpoint: .*)", r"\1\napi_key_env: JC_KEY", text))
    d = start_daemon(lab.overlay, "--region", "us-east", env=cli_env(JC_KEY="sk-se\rcret"))
    try:
        jc = probed_status(d, "jc-edge-01")
        assert jc["status"] == "failed" and "JC_KEY" in jc["probe_error"]
        assert "control character" in jc["probe_error"]
        r = d.post(chat())
        assert r.status_code == 200 and r.headers["x-grid-site"] != "jc-edge-01"
        status = httpx.get(d.url + "/grid/status").text
    finally:
        _, err = d.stop()
    assert "se\rcret" not in err and "sk-se" not in status
