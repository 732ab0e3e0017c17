"""The daemon's observability against the real daemon on lab sites (issue 13 item 4): one
/metrics across --workers, its labels and token counters, the request id, the access log."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import httpx

from tests.daemon.conftest import FIRST, M8, chat, set_endpoint, start_daemon
from tests.daemon.upstream import Upstream

SECRET = "PURPLE-ELEPHANT-1729"  # a prompt no log line may hold


def requests_total(text: str) -> float:
    """The sum of every ``gridctl_requests_total`` sample of a scrape."""
    return sum(float(m) for m in re.findall(r"^gridctl_requests_total\{[^}]*\} (\S+)$", text, re.M))


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_one_view_of_the_counters_across_workers(lab) -> None:
    """Scrapes reaching either worker never see a total go backwards, and settle on N."""
    d = start_daemon(lab.overlay, "--region", "us-east", "--workers", "2", "--access-log", "off")
    try:
        pids, seen = set(), []
        n = 30
        for i in range(n):
            r = d.post(chat(f"q {i}"))  # a new connection each time: the kernel spreads them
            assert r.status_code == 200, r.text
            for _ in range(3):
                seen.append(requests_total(httpx.get(d.url + "/metrics").text))
                pids.add(httpx.get(d.url + "/grid/status").json()["pid"])
        assert len(pids) == 2, pids  # both workers answered scrapes
        deadline = time.monotonic() + 10
        while seen[-1] != n and time.monotonic() < deadline:  # the other worker's share: <= 1 s old
            time.sleep(0.2)
            seen.append(requests_total(httpx.get(d.url + "/metrics").text))
        settled = [requests_total(httpx.get(d.url + "/metrics").text) for _ in range(20)]
        assert all(b >= a for a, b in zip(seen, seen[1:], strict=False)), seen  # never backwards
        assert settled == [n] * 20, settled
    finally:
        rc, err = d.stop()
    assert rc == 0, err


def test_labels_tokens_and_buckets(lab, tmp_path: Path) -> None:
    d = start_daemon(lab.overlay, "--region", "us-east", "--access-log", str(tmp_path / "access.log"))
    try:
        plain = d.post(chat("how are you"))
        body = {**chat("tell me", stream=True), "stream_options": {"include_usage": True}}
        with httpx.stream("POST", d.url + "/v1/chat/completions", json=body, timeout=30) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: {")]
        usage = [json.loads(e[6:])["usage"] for e in events if '"usage"' in e][-1]
        d.post(chat(model="no-such-model"))
        text = httpx.get(d.url + "/metrics").text
    finally:
        d.stop()
    assert plain.status_code == 200
    site = plain.headers["x-grid-site"]
    assert sample(text, "gridctl_requests_total", site=site, model=M8, status="2xx") == 2
    prompt = plain.json()["usage"]["prompt_tokens"] + usage["prompt_tokens"]
    completion = plain.json()["usage"]["completion_tokens"] + usage["completion_tokens"]
    assert sample(text, "gridctl_prompt_tokens_total", site=site, model=M8) == prompt
    assert sample(text, "gridctl_generation_tokens_total", site=site, model=M8) == completion
    # a model outside the inventory is one label value, whatever clients send (bounded series)
    assert re.search(r'^gridctl_requests_total\{model="other",site="none",status="[45]xx"\} 1$', text, re.M)
    assert "no-such-model" not in text
    bucket = f'gridctl_e2e_request_latency_seconds_bucket{{model="{M8}",site="{site}",le="300"}} 2'
    assert bucket in text, text
    assert f'gridctl_time_to_first_token_seconds_count{{model="{M8}",site="{site}"}} 1' in text


def test_request_id_forwarded_and_returned(lab) -> None:
    up = Upstream(gap_s=0.0)
    try:
        set_endpoint(lab.overlay, FIRST, up.url)
        d = start_daemon(lab.overlay, "--region", "us-east", "--access-log", "off")
        try:
            r = d.post(chat(stream=True), headers={"x-request-id": "client-abc.123"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "client-abc.123"
            sent = {k.lower(): v for k, v in up.seen[-1].items()}
            assert sent["x-request-id"] == "client-abc.123"
            for bad in ("x" * 129, "has space", "tab\there", "é"):
                r = httpx.post(
                    d.url + "/v1/chat/completions",
                    json=chat(stream=True),
                    headers=[("x-request-id", bad.encode("utf-8"))],  # type: ignore[list-item]
                    timeout=30,
                )
                rid = r.headers["x-request-id"]
                assert re.fullmatch(r"[0-9a-f]{32}", rid), (bad, rid)
                assert {k.lower(): v for k, v in up.seen[-1].items()}["x-request-id"] == rid
            r = httpx.post(d.url + "/v1/chat/completions", content=b"{not json", timeout=10)
            assert r.status_code == 400 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
            r = d.post(chat(), headers={"x-request-id": "mine-1", "x-grid-region": "mars"})
            assert r.status_code == 400 and r.headers["x-request-id"] == "mine-1"
            ids = {d.post(chat(stream=True)).headers["x-request-id"] for _ in range(3)}
            assert len(ids) == 3
            # the daemon's own answers name their request too: an unknown route, a wrong method
            for method, path, code in (("GET", "/nope", 404), ("GET", "/v1/chat/completions", 405)):
                r = httpx.request(method, d.url + path, headers={"x-request-id": f"own-{code}"}, timeout=10)
                assert r.status_code == code and r.headers["x-request-id"] == f"own-{code}"
            r = httpx.get(d.url + "/grid/status", timeout=10)
            assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        finally:
            d.stop()
    finally:
        up.close()


def test_access_log_to_a_file(lab, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    d = start_daemon(lab.overlay, "--region", "us-east", "--access-log", str(path))
    try:
        r = d.post(chat(SECRET), headers={"x-request-id": "log-1"})
        assert r.status_code == 200
        with httpx.stream(
            "POST", d.url + "/v1/chat/completions", json=chat(SECRET + " again", stream=True), timeout=30
        ) as s:
            streamed = s.read().decode()
        d.post(chat(SECRET, model="no-such-model"), headers={"x-request-id": "log-3"})
    finally:
        rc, err = d.stop()
    assert rc == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert raw.endswith("\n") and SECRET not in raw  # flushed at shutdown; never the prompt
    assert "content" not in raw and streamed[:40] not in raw  # nor the completion
    lines = [json.loads(line) for line in raw.splitlines()]
    assert len(lines) == 3
    first = next(x for x in lines if x["request_id"] == "log-1")
    assert first["site"] == r.headers["x-grid-site"] and first["model"] == M8 and first["status"] == 200
    assert first["region"] == "us-east" and first["outcome"] == "ok"
    assert first["sites_tried"] == [first["site"]] and first["slo"] in ("predicted-met", "expected-miss")
    assert first["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert first["completion_tokens"] == r.json()["usage"]["completion_tokens"]
    assert first["total_ms"] > 0 and first["ttft_ms"] is None and re.fullmatch(r"\d{4}-.*Z", first["time"])
    stream = next(x for x in lines if x["request_id"] not in ("log-1", "log-3"))
    assert stream["status"] == 200 and 0 < stream["ttft_ms"] <= stream["total_ms"]
    assert stream["completion_tokens"] == 8
    refused = next(x for x in lines if x["request_id"] == "log-3")
    assert refused["site"] is None and refused["status"] >= 400 and refused["sites_tried"] == []


def test_access_log_on_stderr_by_default_and_off(lab) -> None:
    d = start_daemon(lab.overlay, "--region", "us-east")
    try:
        assert d.post(chat(SECRET), headers={"x-request-id": "err-1"}).status_code == 200
    finally:
        rc, err = d.stop()
    assert rc == 0 and SECRET not in err
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [x["request_id"] for x in logged] == ["err-1"]
    d = start_daemon(lab.overlay, "--region", "us-east", "--access-log", "off")
    try:
        assert d.post(chat()).status_code == 200
    finally:
        rc, err = d.stop()
    assert rc == 0 and not [line for line in err.splitlines() if line.startswith("{")]


def test_access_log_file_that_cannot_be_opened(lab, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    bad = tmp_path / "no-such-dir" / "access.log"
    r = run_cli("daemon", "run", "--region", "us-east", "--access-log", str(bad), inventory=lab.overlay)
    assert r.rc == 1 and "cannot open the access log" in r.err and "--access-log off" in r.err


def test_request_id_rules() -> None:
    from gridctl.daemon.accesslog import parse_request_id

    for good in ("a", "client-abc.123", "x" * 128, "{uuid}:/=+"):
        assert parse_request_id(good) == good
    for bad in (None, "", "x" * 129, "a b", "a\tb", "a\nb", "é", "a\x7fb"):
        assert parse_request_id(bad) is None, bad


def test_snapshots_sum_and_lines_stay_whole(tmp_path: Path) -> None:
    """Two workers' counters through the shared directory; a log chunk is complete lines."""
    import os

    from gridctl.daemon.accesslog import AccessLog, FdWriter, Trace
    from gridctl.daemon.metrics import Metrics, load_snapshots, write_snapshot

    a, b = Metrics(), Metrics()
    a.record_request("s1", M8, 200, 0.2, 0.05, 10, 4)
    b.record_request("s1", M8, 200, 400.0, None, 3, 2)  # past the last bucket: +Inf
    b.failovers["s2"] += 1
    b.generation_tokens[("s3", M8)] += 12_345_678  # no exponent: a counter's value in full
    write_snapshot(tmp_path, 2, b.snapshot({"invalid_header": 1}, {"in_flight": {"s1": 1}, "queued": 0}))
    others = [snap for _, snap in load_snapshots(tmp_path, 1)]
    text = a.merged(others, {}).render({}, {}, 0)
    assert f'gridctl_requests_total{{model="{M8}",site="s1",status="2xx"}} 2' in text
    assert f'gridctl_prompt_tokens_total{{model="{M8}",site="s1"}} 13' in text
    assert 'gridctl_failovers_total{site="s2"} 1' in text
    assert f'gridctl_generation_tokens_total{{model="{M8}",site="s3"}} 12345678\n' in text
    assert 'gridctl_http_parse_errors_total{kind="invalid_header"} 1' in text
    assert f'gridctl_e2e_request_latency_seconds_bucket{{model="{M8}",site="s1",le="300"}} 1' in text
    assert f'gridctl_e2e_request_latency_seconds_bucket{{model="{M8}",site="s1",le="+Inf"}} 2' in text

    read, write = os.pipe()
    log = AccessLog(FdWriter(write, close=True), 4096, own=True)
    for i in range(40):
        t = Trace(f"id-{i}", "us-east", lambda _t: None)
        t.model = "m" * 150
        t.end(200)
        log.write(t)
    log.close()
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    assert [json.loads(line)["request_id"] for line in data.decode().splitlines()] == [
        f"id-{i}" for i in range(40)
    ]
