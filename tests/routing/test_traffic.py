"""Requests through real nginx, HAProxy and Envoy, configured by `route render`, to stand-in sites."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import httpx
import pytest

from tests.routing.conftest import (
    DATA_PLANES,
    EU_ONLY,
    LLAMA,
    PARAKEET,
    STARTERS,
    LabGrid,
    Proxy,
    require,
    route,
)


def chat(model: str, stream: bool = False) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


def headers(region: str, model: str, **extra: str) -> dict[str, str]:
    return {"x-grid-region": region, "x-grid-model": model, **extra}


def assert_openai_error(resp: httpx.Response, kind: str, code: str) -> None:
    """The data plane's own error, as OpenAI's error object (what the openai SDKs read)."""
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert (error["type"], error["param"], error["code"]) == (kind, None, code), error


def client(proxy: Proxy) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, trust_env=False, timeout=20)


def test_headers_route_to_the_primaries_by_weight(proxy: Proxy, lab_grid: LabGrid) -> None:
    r = route(lab_grid.table, "lab-east", LLAMA)
    assert [s["site"] for s in r["primary"]] == ["east-1", "east-2"]
    assert [s["weight"] for s in r["primary"]] == [75, 25]
    counts: collections.Counter[str] = collections.Counter()
    with client(proxy) as c:
        for _ in range(40):
            resp = c.post("/v1/chat/completions", json=chat(LLAMA), headers=headers("lab-east", LLAMA))
            assert resp.status_code == 200, resp.text
            counts[resp.json()["site"]] += 1
    assert set(counts) == {"east-1", "east-2"}, counts
    assert counts["east-1"] > counts["east-2"] > 0, counts
    # each site saw its own Host header, and the request as sent
    for name in ("east-1", "east-2"):
        seen = lab_grid.sites[name].completions()
        assert seen and all(s.host == f"127.0.0.1:{lab_grid.sites[name].port}" for s in seen)
        assert all(s.path == "/v1/chat/completions" and s.body["model"] == LLAMA for s in seen)


def test_each_route_reaches_its_own_primaries(proxy: Proxy, lab_grid: LabGrid) -> None:
    with client(proxy) as c:
        for r in (r for r in lab_grid.table["routes"] if r["primary"]):
            primaries = {s["site"] for s in r["primary"]}
            for _ in range(4):
                resp = c.post(
                    "/v1/chat/completions", json=chat(r["model"]), headers=headers(r["region"], r["model"])
                )
                assert resp.status_code == 200, resp.text
                assert resp.json()["site"] in primaries, (r["region"], r["model"], resp.json())


def test_path_form_strips_the_prefix(proxy: Proxy, lab_grid: LabGrid) -> None:
    with client(proxy) as c:
        resp = c.post(f"/r/lab-west/{LLAMA}/v1/chat/completions?trace=1", json=chat(LLAMA))
    assert resp.status_code == 200, resp.text
    site = resp.json()["site"]
    assert site in {"west-1", "west-2"}
    assert lab_grid.sites[site].completions()[-1].path == "/v1/chat/completions?trace=1"


def test_headers_match_ignoring_case(proxy: Proxy) -> None:
    with client(proxy) as c:
        resp = c.post("/v1/chat/completions", json=chat(LLAMA), headers=headers("LAB-West", LLAMA.upper()))
    assert resp.status_code == 200 and resp.json()["site"] in {"west-1", "west-2"}


def test_unknown_route_is_404_with_a_json_error(proxy: Proxy, lab_grid: LabGrid) -> None:
    with client(proxy) as c:
        unknown = c.post("/v1/chat/completions", json=chat("nope"), headers=headers("lab-east", "nope"))
        bare = c.post("/v1/chat/completions", json=chat(LLAMA))
        bad_path = c.post("/r/lab-east/nope/v1/chat/completions", json=chat(LLAMA))
    for resp in (unknown, bare, bad_path):
        assert resp.status_code == 404
        assert_openai_error(resp, "invalid_request_error", "no_route")
    assert not any(site.completions() for site in lab_grid.sites.values())


def test_failover_to_a_backup_when_the_primaries_are_stopped(proxy: Proxy, lab_grid: LabGrid) -> None:
    r = route(lab_grid.table, "lab-east", PARAKEET)
    primaries = [s["site"] for s in r["primary"]]
    backups = [s["site"] for s in r["backup"]]
    assert primaries == ["east-1", "east-2"] and backups == ["west-1"]
    with client(proxy) as c:
        warm = c.post("/v1/chat/completions", json=chat(PARAKEET), headers=headers("lab-east", PARAKEET))
        assert warm.status_code == 200 and warm.json()["site"] in primaries
        for name in primaries:
            lab_grid.sites[name].stop()
        for _ in range(5):
            resp = c.post("/v1/chat/completions", json=chat(PARAKEET), headers=headers("lab-east", PARAKEET))
            assert resp.status_code == 200, resp.text
            assert resp.json()["site"] == "west-1"


def test_a_long_request_goes_to_a_backup_when_the_primaries_are_stopped(
    proxy: Proxy, lab_grid: LabGrid
) -> None:
    # A long chat's body (64 kB) is bigger than HAProxy's buffer (16 kB), so HAProxy cannot
    # send it again once a site had it: it must pick a backup before sending, not by a retry
    # after the primaries' tier answered "no site up". The first request after the primaries
    # stopped finds them refusing connections; the next ones find them marked down.
    r = route(lab_grid.table, "lab-east", PARAKEET)
    assert [s["site"] for s in r["primary"]] == ["east-1", "east-2"] and r["backup"][0]["site"] == "west-1"
    for name in ("east-1", "east-2"):
        lab_grid.sites[name].stop()
    long = chat(PARAKEET)
    long["messages"][0]["content"] = "x" * 65536
    with client(proxy) as c:
        for _ in range(3):
            resp = c.post("/v1/chat/completions", json=long, headers=headers("lab-east", PARAKEET))
            assert resp.status_code == 200, resp.text
            assert resp.json()["site"] == "west-1"
    seen = lab_grid.sites["west-1"].completions()
    assert [len(s.body["messages"][0]["content"]) for s in seen[-3:]] == [65536] * 3


def test_a_stream_passes_through_unbuffered(proxy: Proxy, lab_grid: LabGrid) -> None:
    hold_id = f"stream-{proxy.name}"
    with (
        client(proxy) as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json=chat(LLAMA, stream=True),
            headers=headers("lab-west", LLAMA, **{"x-test-hold": hold_id}),
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        hold = lab_grid.sites[resp.headers["x-grid-site"]].hold(hold_id)
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # The client has the first chunk while the site still holds back the rest:
        # nothing between them waited for the whole answer.
        assert not hold.resumed.is_set()
        assert json.loads(first[len("data: ") :])["index"] == 0
        lab_grid.sites[resp.headers["x-grid-site"]].release(hold_id)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert [json.loads(x[len("data: ") :])["index"] for x in rest[:-1]] == [1, 2, 3]
    assert hold.released_by_test and hold.resumed.is_set()


def test_a_route_without_an_eligible_site_is_503(proxy: Proxy, lab_grid: LabGrid) -> None:
    r = route(lab_grid.table, "lab-east", EU_ONLY)
    assert r["primary"] == [] and r["backup"] == []  # US data may not go to the EU site
    with client(proxy) as c:
        by_headers = c.post("/v1/chat/completions", json=chat(EU_ONLY), headers=headers("lab-east", EU_ONLY))
        by_path = c.post(f"/r/lab-east/{EU_ONLY}/v1/chat/completions", json=chat(EU_ONLY))
        allowed = c.post("/v1/chat/completions", json=chat(EU_ONLY), headers=headers("lab-eu", EU_ONLY))
    for resp in (by_headers, by_path):
        assert resp.status_code == 503
        assert_openai_error(resp, "no_eligible_site", "no_eligible_site")
    assert allowed.status_code == 200 and allowed.json()["site"] == "fra-1"


@pytest.mark.parametrize("plane", DATA_PLANES)
def test_when_every_site_fails_the_data_planes_own_error_is_openai_json(
    plane: str, lab_grid: LabGrid, workdir: Path
) -> None:
    """Every site of lab-east's parakeet route hung, then killed: a timeout (504), then no site
    up (nginx: 502, its "no live upstreams"; HAProxy and Envoy: 503), never an HTML page."""
    require(plane)
    r = route(lab_grid.table, "lab-east", PARAKEET)
    names = [s["site"] for s in r["primary"] + r["backup"]]
    running = STARTERS[plane](lab_grid.table, workdir, read_timeout_s=1)
    try:
        with client(running) as c:
            for name in names:
                lab_grid.sites[name].fault = "hang"
            hung = c.post("/v1/chat/completions", json=chat(PARAKEET), headers=headers("lab-east", PARAKEET))
            for name in names:
                lab_grid.sites[name].stop()
            down = [
                c.post(
                    "/v1/chat/completions", json=chat(PARAKEET, stream), headers=headers("lab-east", PARAKEET)
                )
                for stream in (False, True)
            ]
    finally:
        running.stop()
    assert hung.status_code == 504, hung.text
    assert_openai_error(hung, "upstream_error", "upstream_timeout")
    assert "within 1 s" in hung.json()["error"]["message"]
    for resp in down:
        if plane == "nginx":
            assert resp.status_code == 502, resp.text
            assert_openai_error(resp, "upstream_error", "upstream_failed")
        else:
            assert resp.status_code == 503, resp.text
            assert_openai_error(resp, "upstream_error", "no_site_up")
