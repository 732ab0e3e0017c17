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

from tests.conftest import REPO, cli_env, run_cli
from tests.daemon.conftest import (
    FIRST,
    M8,
    SECOND,
    DaemonProc,
    chat,
    pid_alive,
    probed_status,
    route_sites,
    set_capacity,
    set_endpoint,
    start_daemon,
)
from tests.daemon.upstream import CHUNKS, Upstream
from tests.fleet.sshd import free_port


def test_cheapest_feasible_site_wins_and_sovereignty_holds(daemon) -> None:
    assert route_sites(daemon)[:2] == [FIRST, SECOND]
    r = daemon.post(chat())
    assert r.status_code == 200, r.text
    assert r.headers["x-grid-site"] == FIRST  # not jc-edge-01: its L4s make it dearer per request
    assert int(r.headers["x-grid-predicted-ms"]) > 0 and "x-grid-slo" not in r.headers
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
    params = {"model": M8, "slo_ms": "1.5", "prompt_tokens": "3", "max_tokens": "8"}
    route = httpx.get(daemon.url + "/grid/route", params=params).json()
    # only the sites within 1.5 ms of round trip are candidates, none predicted to meet it: fastest first
    assert [x["site"] for x in route["ranked"]] == ["nwk-co-03", "jc-edge-01"]
    assert not route["expected_to_meet_slo"] and not any(x["feasible"] for x in route["ranked"])
    assert route["request"]["max_tokens"] == 8 and route["ranked"][0]["predicted_ms"] > 1.5
    r = daemon.post(chat(), headers={"x-grid-slo-ms": "1.5", "x-grid-region": "us-central"})
    assert r.status_code == 200 and r.headers["x-grid-site"] in {"chi-co-07"}
    assert r.headers["x-grid-slo"] == "expected-miss"
    r = daemon.post(chat(), headers={"x-grid-slo-ms": "0.1"})
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["type"] == "no_eligible_site" and "over the 0.1 ms SLO" in " ".join(
        err["reasons"]["jc-edge-01"]
    )
    assert r.headers["retry-after"] == "1" and err["code"] == "no_eligible_site"
    r = daemon.post(chat(model="no-such-model"))  # not a model of the grid: 404, not 503
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_bad_requests(daemon) -> None:
    r = httpx.post(daemon.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]
    r = daemon.post(chat(), headers={"x-grid-region": "mars"})
    assert r.status_code == 400 and "unknown client region" in r.text
    for bad in ("fast", "0", "-5", "nan"):
        r = daemon.post(chat(), headers={"x-grid-slo-ms": bad})
        assert r.status_code == 400 and "x-grid-slo-ms must be a positive number" in r.text
    r = httpx.get(daemon.url + "/grid/route", params={"model": M8, "max_tokens": "many"})
    assert r.status_code == 400 and "max_tokens" in r.text
    big = {"model": M8, "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    r = httpx.post(daemon.url + "/v1/chat/completions", json=big, timeout=30)
    assert r.status_code == 413


def test_failover_before_the_first_byte(lab, daemon) -> None:
    lab.set_mode(FIRST, "503")
    r = daemon.post(chat())
    assert r.status_code == 200 and r.headers["x-grid-site"] == SECOND
    text = httpx.get(daemon.url + "/metrics").text
    assert re.search(rf'^gridctl_failovers_total{{site="{FIRST}"}} [1-9]', text, re.M), text
    lab.set_mode(SECOND, "hang")
    deadline = time.monotonic() + 15
    status: dict = {}
    while time.monotonic() < deadline:  # the active probe times out on the hung site
        status = {s["site"]: s for s in httpx.get(daemon.url + "/grid/status").json()["sites"]}
        if status[SECOND]["probe_ok"] is False:
            break
        time.sleep(0.2)
    assert status[SECOND]["probe_ok"] is False and status[SECOND]["status"] == "failed"
    assert status[FIRST]["probe_ok"] is False  # its health route answers 503 too
    r = daemon.post(chat())
    assert r.status_code == 200 and r.headers["x-grid-site"] not in (FIRST, SECOND)


def test_streaming_is_byte_for_byte_and_secrets_stay_home(tmp_path: Path, lab) -> None:
    up = Upstream()
    try:
        site = lab.overlay / "sites" / f"{FIRST}.yaml"
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
                assert r.status_code == 200 and r.headers["x-grid-site"] == FIRST
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
spec = next(s for s in build_site_specs(inv) if s.name == sys.argv[3])
with LabThread([dataclasses.replace(spec, port=int(sys.argv[2]))], LabOptions(speed=0.1)):
    print("up", flush=True)
    time.sleep(3600)
"""


def test_site_killed_during_a_load_run(tmp_path: Path, lab) -> None:
    from tests.conftest import EXAMPLE

    port = free_port()
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, str(EXAMPLE), str(port), FIRST],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )
    assert victim.stdout is not None and victim.stdout.readline().strip() == "up"
    set_endpoint(lab.overlay, FIRST, f"http://127.0.0.1:{port}")
    d = start_daemon(lab.overlay, "--region", "us-east")
    streams: list[tuple[str, bytes]] = []

    def stream_one() -> None:
        data = b""
        with httpx.stream(
            "POST", d.url + "/v1/chat/completions", json=chat(stream=True, max_tokens=20), timeout=60
        ) as r:
            name = r.headers.get("x-grid-site", "")
            for chunk in r.iter_raw():
                data += chunk
        streams.append((name, data))

    try:
        threads = [threading.Thread(target=stream_one) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # streams are running on the victim (about 2 s each at its speed)
        victim.kill()
        victim.wait()
        after = [d.post(chat(f"after {i}")) for i in range(10)]  # requests that had not started
        for t in threads:
            t.join(60)
        assert all(r.status_code == 200 for r in after), [r.text for r in after]
        assert all(r.headers["x-grid-site"] != FIRST for r in after)
        cut = [data for name, data in streams if name == FIRST]
        assert cut, "the streams should have started on the victim"
        for data in cut:
            assert b"[DONE]" not in data
            assert b'"type": "upstream_cut"' in data and data.rstrip().endswith(b"}")
    finally:
        if victim.poll() is None:
            victim.kill()
        d.stop()


def test_a_held_prefix_shortens_the_predicted_prefill_without_deciding_alone(daemon) -> None:
    """The prefix index says the site holds a long shared prompt: its prediction drops by the
    prefill of the cached tokens (x-grid-predicted-ms), and the choice stays the cheapest site."""
    prefix = "You are the grid's voice agent. Answer briefly. " * 320  # ~15 KB: 60 blocks of 256 chars
    first = daemon.post(chat(prefix + "first"))
    assert first.status_code == 200 and first.headers["x-grid-site"] == FIRST
    # the shared prompt first, then one as long without it: calibration after the first answer can
    # only make the second look faster, so the held prefix is what makes the first of these faster
    held = daemon.post(chat(prefix + "again"))
    fresh = daemon.post(chat("Tell me something else entirely, at length please. " * 320))
    assert held.headers["x-grid-site"] == fresh.headers["x-grid-site"] == FIRST
    assert int(held.headers["x-grid-predicted-ms"]) < int(fresh.headers["x-grid-predicted-ms"]) / 2
    route = route_sites(daemon, prompt_tokens="4000")
    assert route[0] == FIRST  # what it learned from those answers; /grid/route takes no prompt


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
        lab.set_mode(FIRST, "slow", delay_ms=25_000)  # / speed 50: 0.5 s before the first token
        t = threading.Thread(target=lambda: slow.append(d.post(chat("slow"), timeout=60)))
        t.start()
        time.sleep(0.2)
        lab.set_mode(FIRST, "ok")  # the slow one keeps its delay; the rest answer at lab speed
        site = lab.overlay / "sites" / f"{FIRST}.yaml"
        site.write_text(site.read_text().replace("drain: false", "drain: true"))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and d.post(chat("probe")).headers["x-grid-site"] == FIRST:
            time.sleep(0.1)
        assert d.post(chat("after")).headers["x-grid-site"] == SECOND
        t.join(60)
        assert slow and slow[0].status_code == 200 and slow[0].headers["x-grid-site"] == FIRST
        # an inventory change without a signal is picked up too
        site.write_text(site.read_text().replace("drain: true", "drain: false"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and d.post(chat("p")).headers["x-grid-site"] != FIRST:
            time.sleep(0.2)
        assert d.post(chat("back")).headers["x-grid-site"] == FIRST
        # a broken file is not taken: its last good version keeps running
        site.write_text(re.sub(r"kind: .*", "kind: edgy", site.read_text()))
        time.sleep(3)
        assert d.post(chat("still")).headers["x-grid-site"] == FIRST
    finally:
        rc, err = d.stop()
    assert "reloaded inventory (SIGHUP)" in err
    assert f"sites/{FIRST}.yaml is broken on disk (1 problem); running: last good version" in err


def test_sigterm_drains_in_flight_then_exits_0(lab) -> None:
    lab.set_mode("*", "slow", delay_ms=60_000)  # / speed 50: 1.2 s before the first token
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
        r = d.post(chat(), headers={"x-request-id": "who-1"})
        assert r.status_code == 401 and r.headers["x-request-id"] == "who-1"
        assert r.json()["error"]["code"] is None or isinstance(r.json()["error"]["code"], str)
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
        "gridctl_e2e_request_latency_seconds_bucket",
        "gridctl_in_flight",
        "gridctl_site_up",
        "gridctl_failovers_total",
        "gridctl_time_to_first_token_seconds",
        "gridctl_model_in_flight",
        "gridctl_slo_expected_miss_total",
    ):
        assert name in text
    assert f'gridctl_requests_total{{model="{M8}",site="{FIRST}",status="2xx"}} 1' in text
    assert f'gridctl_calibration_factor{{model="{M8}",part="decode",site="{FIRST}"}}' in text
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
        and "--slo-policy" not in r.out
    )
    strict = run_cli("daemon", "unit", "--slo-policy", "STRICT", inventory=inv)
    exec_line = next(line for line in strict.out.splitlines() if line.startswith("ExecStart="))
    assert strict.rc == 0 and exec_line.endswith("--slo-policy strict --workers 1"), strict
    bad = run_cli("daemon", "unit", "--slo-policy", "sometimes", inventory=inv)
    assert bad.rc == 2 and "expected one of best-effort, strict" in bad.err and bad.out == ""


def test_clients_hanging_up_do_not_count_against_the_site(lab, daemon) -> None:
    import socket

    lab.set_mode(FIRST, "slow", delay_ms=25_000)  # / speed 50: 0.5 s before the first token
    body = json.dumps(chat(stream=True)).encode()
    host, port = daemon.url.removeprefix("http://").split(":")
    for _ in range(4):  # read the first bytes of a stream, then hang up
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert s.recv(200).startswith(b"HTTP/1.1 200")
    plain = json.dumps(chat()).encode()
    for _ in range(3):  # hang up while the daemon still waits for the site's answer
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(plain)}\r\n\r\n".encode()
                + plain
            )
            time.sleep(0.1)
    time.sleep(1.0)
    lab.set_mode(FIRST, "ok")
    sites = httpx.get(daemon.url + "/grid/status").json()["sites"]
    site = next(s for s in sites if s["site"] == FIRST)
    assert site["breaker"] == "closed" and site["failures"] == 0 and site["status"] == "ok"
    assert site["requests"] == 7
    assert all(s["in_flight"] == 0 for s in sites)  # every abandoned attempt gave its slot back
    assert all(m["in_flight"] == 0 for s in sites for m in s["models"].values())
    assert site["models"][M8]["calibration"]["samples"] == 0  # an abandoned answer teaches nothing
    r = daemon.post(chat())
    assert r.status_code == 200 and r.headers["x-grid-site"] == FIRST
    assert (
        f'gridctl_requests_total{{model="{M8}",site="{FIRST}",status="4xx"}}'
        in httpx.get(daemon.url + "/metrics").text
    )  # the clients that hung up: 499, "client closed request"


def test_a_site_cutting_a_plain_answer_fails_over_and_never_reaches_the_client_short(lab) -> None:
    """A non-stream body the site breaks off must not reach the client as a short body that
    looks whole: the daemon reads a whole answer before sending a byte of it, so nothing has
    reached the client yet and the next site answers it instead."""
    up = Upstream()
    try:
        set_endpoint(lab.overlay, FIRST, up.url)
        d = start_daemon(lab.overlay, "--region", "us-east")
        try:
            body = {"model": M8, "prompt": "x", "max_tokens": 8}
            r = httpx.post(d.url + "/v1/completions", json=body, timeout=10)
            assert r.status_code == 200 and r.headers["x-grid-site"] != FIRST
            assert r.json()["choices"], r.text  # whole: it parses
            status = httpx.get(d.url + "/grid/status").json()["sites"]
            jc = next(s for s in status if s["site"] == FIRST)
            assert jc["failures"] == 1 and jc["in_flight"] == 0
            text = httpx.get(d.url + "/metrics").text
            assert f'gridctl_failovers_total{{site="{FIRST}"}} 1' in text, text
            assert "gridctl_stream_cuts_total{" not in text  # not a cut: nothing had been relayed
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
        set_endpoint(lab.overlay, FIRST, up.url)
        trusted = start_daemon(lab.overlay, "--region", "us-east", env=cli_env(SSL_CERT_FILE=str(ca.cert)))
        try:
            with httpx.stream("POST", trusted.url + "/v1/chat/completions", json=chat(stream=True)) as r:
                assert r.status_code == 200 and r.headers["x-grid-site"] == FIRST
                assert b"".join(r.iter_raw()) == b"".join(CHUNKS)
        finally:
            trusted.stop()
        assert len(up.seen) == 1
        env = cli_env()
        env.pop("SSL_CERT_FILE", None)
        untrusted = start_daemon(lab.overlay, "--region", "us-east", env=env)
        try:
            r = untrusted.post(chat())
            assert r.status_code == 200 and r.headers["x-grid-site"] != FIRST
            jc = probed_status(untrusted, FIRST)  # the request may have come before the first probe
            assert jc["probe_ok"] is False and jc["status"] == "failed"
            assert "certificate is not trusted" in jc["probe_error"], jc
            assert "tls_ca" in jc["probe_error"]
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
        set_endpoint(lab.overlay, FIRST, up.url)
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
                assert f"x-grid-site: {FIRST}".encode() in head and b"x-upstream: yes" in head
                assert b"x-grid-predicted-ms: " in head
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
    site = lab.overlay / "sites" / f"{FIRST}.yaml"
    text = re.sub(r"api_key_env: .*\n", "", site.read_text())
    site.write_text(re.sub(r"(endpoint: .*)", r"\1\napi_key_env: JC_KEY", text))
    d = start_daemon(lab.overlay, "--region", "us-east", env=cli_env(JC_KEY="sk-se\rcret"))
    try:
        jc = probed_status(d, FIRST)
        assert jc["status"] == "failed" and "JC_KEY" in jc["probe_error"]
        assert "control character" in jc["probe_error"]
        r = d.post(chat())
        assert r.status_code == 200 and r.headers["x-grid-site"] != FIRST
        status = httpx.get(d.url + "/grid/status").text
    finally:
        _, err = d.stop()
    assert "se\rcret" not in err and "sk-se" not in status


def _wait_status(d: DaemonProc, ready, timeout: float = 15) -> dict:
    """/grid/status once ``ready(status)`` holds (or the timeout passed: the caller's asserts say why)."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(d.url + "/grid/status", timeout=5).json()
        if ready(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_reload_keeps_a_broken_files_last_good_version_and_takes_the_others(lab) -> None:
    """The incident: phl-co-12.yaml gets a typo, then `site drain` of a healthy site goes
    through (with a warning) and reaches the running daemon; /grid/status names the stale file."""
    d = start_daemon(lab.overlay, "--region", "us-east")
    broken = lab.overlay / "sites" / "phl-co-12.yaml"
    good_text = broken.read_text()
    try:
        assert route_sites(d)[0] == FIRST
        first = httpx.get(d.url + "/grid/status", timeout=5).json()["sites"]
        old_capacity = next(s["capacity"] for s in first if s["site"] == "phl-co-12")
        broken.write_text(re.sub(r"capacity: \d+", "capacity: lots", good_text, count=1))
        drained = run_cli("site", "drain", FIRST, inventory=lab.overlay)
        assert drained.rc == 0, drained
        assert f"site/{FIRST} drained" in drained.out
        assert "warning:" in drained.err and "sites/phl-co-12.yaml" in drained.err
        assert "drain: true" in (lab.overlay / "sites" / f"{FIRST}.yaml").read_text()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and FIRST in route_sites(d):
            time.sleep(0.1)
        assert FIRST not in route_sites(d)  # the healthy file's change took effect
        body = httpx.get(d.url + "/grid/status", timeout=5).json()
        (entry,) = body["stale"]
        assert entry["file"] == "sites/phl-co-12.yaml" and entry["running"] == "last good version"
        assert any("capacity" in p and "'lots'" in p for p in entry["problems"]), entry
        sites = {s["site"]: s for s in body["sites"]}
        assert sites["phl-co-12"]["capacity"] == old_capacity  # its last good version still serves
        assert d.post(chat("during")).status_code == 200
        # a new file that is broken from the start is left out; the fixed one is no longer stale
        (lab.overlay / "sites" / "zz-new.yaml").write_text("name: zz-new\nkind: edgy\n")
        broken.write_text(good_text)
        body = _wait_status(d, lambda b: [e["file"] for e in b["stale"]] == ["sites/zz-new.yaml"])
        assert [e["file"] for e in body["stale"]] == ["sites/zz-new.yaml"], body["stale"]
        assert body["stale"][0]["running"] == "left out (no good version yet)"
        assert "zz-new" not in [s["site"] for s in body["sites"]]
        (lab.overlay / "sites" / "zz-new.yaml").unlink()
        body = _wait_status(d, lambda b: not b["stale"])
        assert body["stale"] == []
    finally:
        rc, err = d.stop()
    assert "sites/phl-co-12.yaml is broken on disk (1 problem); running: last good version" in err
    assert "1 stale file" in err
