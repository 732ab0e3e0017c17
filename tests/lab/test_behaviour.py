"""Lab sites behave like the sites they stand for: queueing, prefix cache, network delay, failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gridctl.core.placement.perf import gpu_perf, token_interval_ms, ttft_ms
from gridctl.lab import LabThread
from gridctl.lab.formats import parse_completion
from gridctl.lab.gpu import Replicas
from gridctl.lab.truth import SPEED_MAX, SPEED_MIN, speed_factor
from tests.lab.conftest import fetch_metrics, make_spec, metric, start_sites


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def ask(
    url: str, prompt: str = "hi", max_tokens: int = 4, timeout: float = 20.0, **headers: str
) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=timeout) as c:
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        return c.post(url + "/v1/chat/completions", json=body, headers=headers)


# -- capacity and queueing ----------------------------------------------------------------------------


def test_capacity_two_with_four_requests_runs_two_and_queues_two(client: httpx.Client) -> None:
    with start_sites(make_spec("cap", capacity=2), speed=1.0) as lab:
        url = lab.urls["cap"]
        with ThreadPoolExecutor(4) as pool:
            # each takes about 1 s of simulated work (100 tokens on a loaded H100): time to see the queue
            futures = [pool.submit(ask, url, f"q{i}", 100) for i in range(4)]
            assert wait_for(
                lambda: metric(fetch_metrics(client, url), "vllm:num_requests_waiting", model_name="m") == 2
            )
            m = fetch_metrics(client, url)
            assert metric(m, "vllm:num_requests_running", model_name="m") == 2
            assert metric(m, "vllm:gpu_cache_usage_perc", model_name="m") > 0
            state = client.get(url + "/lab/state").json()
            assert (state["running"], state["waiting"], state["in_flight"]) == (2, 2, 4)
            assert [f.result().status_code for f in futures] == [200] * 4
        m = fetch_metrics(client, url)
        assert metric(m, "vllm:num_requests_running", model_name="m") == 0
        assert metric(m, "vllm:num_requests_waiting", model_name="m") == 0
        assert metric(m, "vllm:request_success_total", model_name="m", finished_reason="length") == 4
        assert metric(m, "vllm:gpu_cache_usage_perc", model_name="m") == 0
        assert client.get(url + "/lab/state").json()["served"] == 4


def test_replicas_are_fifo_and_a_waiter_that_leaves_gives_up_its_place() -> None:
    async def scenario() -> list[str]:
        slots, order = Replicas([1]), []
        await slots.acquire()

        async def user(name: str) -> None:
            replica = await slots.acquire()
            order.append(name)
            await asyncio.sleep(0)
            slots.release(replica)

        tasks = [asyncio.create_task(user(n)) for n in "abc"]
        await asyncio.sleep(0)
        assert (slots.running, slots.waiting) == (1, 3)
        tasks[1].cancel()  # b leaves the queue
        await asyncio.sleep(0)
        assert slots.waiting == 2
        slots.release(0)
        await asyncio.gather(tasks[0], tasks[2])
        assert (slots.running, slots.waiting) == (0, 0)
        return order

    assert asyncio.run(scenario()) == ["a", "c"]


def test_a_request_goes_to_the_replica_with_the_fewest_running_and_a_freed_slot_to_the_queue() -> None:
    async def scenario() -> None:
        r = Replicas([2, 2, 1])
        assert r.capacity == 5
        got = [await r.acquire() for _ in range(5)]
        assert got == [0, 1, 2, 0, 1]  # fewest running first, ties: the first replica
        assert r.running_on == [2, 2, 1] and r.running == 5
        waiter = asyncio.create_task(r.acquire())
        await asyncio.sleep(0)
        assert r.waiting == 1
        r.release(2)  # the slot freed on replica 2 goes to the head of the queue
        assert await waiter == 2 and r.running_on == [2, 2, 1] and r.waiting == 0
        r.release(0)
        r.release(0)
        assert r.running_on == [0, 2, 1]
        assert await r.acquire() == 0

    asyncio.run(scenario())


def lab_ttft(url: str, prompt: str = "hi", max_tokens: int = 1) -> tuple[float, int]:
    r = ask(url, prompt, max_tokens)
    assert r.status_code == 200, r.text
    return float(r.headers["x-lab-ttft-ms"]), int(r.headers["x-lab-replica"])


def test_each_replica_has_its_own_load_factor_by_the_table(client: httpx.Client) -> None:
    """Two L4 replicas of 2 slots: a request alone runs at load 1/2 on its replica, not 1/4 on
    the site; with the hidden speed off the timing is the table's exactly."""
    l4 = gpu_perf("L4")
    with start_sites(make_spec("rep", capacity=4, gpu="L4", replicas=2), speed=50.0) as lab:
        url = lab.urls["rep"]
        ttft, replica = lab_ttft(url, "x" * 400)  # 100 prompt tokens, none cached
        assert replica == 0
        body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
        prompt = parse_completion(body, True).prompt_tokens
        assert ttft == pytest.approx(ttft_ms(l4, prompt, 0, 1, 2), abs=0.001)
        assert ttft > ttft_ms(l4, prompt, 0, 1, 4) + 1  # a whole-site pool would say less
        state = client.get(url + "/lab/state").json()
        (model,) = state["models"]
        assert (model["replicas"], model["replica_slots"], model["gpu"]) == (2, [2, 2], "L4")
        assert state["speed_factor"] == 1.0 and state["hidden_speed"] is None
    assert token_interval_ms(l4, 1, 2) > token_interval_ms(l4, 1, 4)


def test_the_hidden_speed_is_the_seeded_site_factor_with_noise_and_off_is_the_table() -> None:
    spec = make_spec("hid", capacity=1, gpu="H100")
    prompts = [f"question {i} " * 20 for i in range(12)]
    with start_sites(spec, speed=50.0) as off:
        exact = [lab_ttft(off.urls["hid"], p)[0] for p in prompts]
    with start_sites(spec, speed=50.0, hidden_speed=7) as lab:
        url = lab.urls["hid"]
        true = [lab_ttft(url, p)[0] for p in prompts]
        assert lab.state("hid")["speed_factor"] == pytest.approx(speed_factor(7, "hid"), abs=1e-6)
    with start_sites(spec, speed=50.0, hidden_speed=7) as again:
        assert [lab_ttft(again.urls["hid"], p)[0] for p in prompts] == true  # the same seed, the same truth
    ratios = [t / e for t, e in zip(true, exact, strict=True)]
    factor = speed_factor(7, "hid")
    assert SPEED_MIN <= factor <= SPEED_MAX and factor != 1.0
    assert len(set(ratios)) == len(ratios)  # noise: each request its own draw
    assert all(0.75 * factor < r < 1.33 * factor for r in ratios)  # 5% noise, far within 6 sigma
    assert sum(ratios) / len(ratios) == pytest.approx(factor, rel=0.05)


def test_a_queued_client_that_gives_up_leaves_the_queue(client: httpx.Client) -> None:
    with start_sites(make_spec("q", capacity=1), speed=1.0) as lab:
        url = lab.urls["q"]
        with ThreadPoolExecutor(1) as pool:
            long = pool.submit(ask, url, "long", 100)
            assert wait_for(lambda: client.get(url + "/lab/state").json()["running"] == 1)
            with pytest.raises(httpx.ReadTimeout):
                ask(url, "impatient", 1, timeout=0.2)
            assert wait_for(lambda: client.get(url + "/lab/state").json()["waiting"] == 0)
            assert long.result().status_code == 200
        state = client.get(url + "/lab/state").json()
        assert (state["served"], state["failed"], state["in_flight"]) == (1, 1, 0)


# -- prefix cache -----------------------------------------------------------------------------------------


def stream_ttft(url: str, messages: list[dict[str, str]]) -> tuple[float, int]:
    """Seconds to the first content token, and the cached tokens the usage reports."""
    body = {
        "model": "m",
        "messages": messages,
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.Client(trust_env=False, timeout=20) as c:
        start = time.monotonic()
        first = None
        usage = None
        with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.monotonic() - start
                usage = chunk.get("usage") or usage
    assert first is not None and usage is not None
    return first, usage["prompt_tokens_details"]["cached_tokens"]


def test_a_repeated_prefix_hits_the_cache_and_gets_a_faster_ttft(client: httpx.Client) -> None:
    system = "You are a helpful assistant for the acme grid. " * 170  # about 2,000 tokens
    # an L4 prefills 3,000 tokens/s: 2,000 uncached tokens take ~0.75 s (0.38 s at speed 2), cached ~0.1 s
    with start_sites(make_spec("pc", capacity=8, gpu="L4"), speed=2.0) as lab:
        url = lab.urls["pc"]
        convo = [{"role": "system", "content": system}, {"role": "user", "content": "first question"}]
        cold, cold_cached = stream_ttft(url, convo)
        convo[1]["content"] = "a different question"
        warm, warm_cached = stream_ttft(url, convo)
        assert cold_cached == 0
        assert warm_cached >= 2000  # the shared system prompt, in whole 16-token blocks
        assert warm < cold
        r = ask(url, "unrelated")
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        m = fetch_metrics(client, url)
        assert metric(m, "vllm:prefix_cache_hits_total", model_name="m") == warm_cached
        assert metric(m, "vllm:prefix_cache_queries_total", model_name="m") > 4000
        # the model's own TTFT, reported without timing: cached is much faster
        one = {"model": "m", "messages": convo, "max_tokens": 1}
        first = client.post(
            url + "/v1/chat/completions", json={**one, "messages": [{"role": "user", "content": system}]}
        )
        second = client.post(
            url + "/v1/chat/completions", json={**one, "messages": [{"role": "user", "content": system}]}
        )
        assert float(second.headers["x-lab-ttft-ms"]) < float(first.headers["x-lab-ttft-ms"]) / 3


# -- network delay ------------------------------------------------------------------------------------------


def test_network_delay_follows_the_client_region(client: httpx.Client) -> None:
    with start_sites(make_spec("net", rtt={"near": 1.0, "far": 300.0}), speed=1.0) as lab:
        url = lab.urls["net"]

        def timed(**headers: str) -> float:
            start = time.monotonic()
            assert client.get(url + "/health", headers=headers).status_code == 200
            return time.monotonic() - start

        near, far, default = (
            timed(**{"x-grid-client-region": "near"}),
            timed(**{"x-grid-client-region": "far"}),
            timed(),
        )
        assert far > near and far > default
        assert far >= 0.25  # a 300 ms round trip, generously
        assert ask(url, **{"x-grid-client-region": "far"}).headers["x-lab-rtt-ms"] == "300.000"
        assert ask(url).headers["x-lab-rtt-ms"] == "1.000"  # the lab's default region
        assert (
            ask(url, **{"x-grid-region": "far"}).headers["x-lab-rtt-ms"] == "300.000"
        )  # as sent to the daemon


def test_example_sites_take_their_delay_from_the_latency_model(
    example_lab: LabThread, client: httpx.Client
) -> None:
    body = {"model": "llama-3.1-8b-instruct", "prompt": "x", "max_tokens": 1}

    def rtt(site: str, region: str) -> float:
        r = client.post(
            example_lab.urls[site] + "/v1/completions", json=body, headers={"x-grid-client-region": region}
        )
        return float(r.headers["x-lab-rtt-ms"])

    assert rtt("fra-pop-01", "eu-de") == 1.1  # measured, from grid.yaml
    assert rtt("fra-pop-01", "eu-de") < rtt("par-pop-01", "eu-de") < rtt("nyc-pop-01", "eu-de")
    assert rtt("nyc-pop-01", "us-east") < rtt("chi-pop-01", "us-east") < rtt("fra-pop-01", "us-east")


# -- failure switches ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing() -> Iterator[LabThread]:
    with start_sites(make_spec("f1"), make_spec("f2"), speed=20.0) as lab:
        yield lab


@pytest.fixture
def f1(failing: LabThread) -> Iterator[str]:
    yield failing.urls["f1"]
    failing.set_mode("f*", "ok")


def test_503_answers_every_route_until_back_to_ok(failing: LabThread, f1: str, client: httpx.Client) -> None:
    r = client.post(f1 + "/lab/fail", json={"mode": "503"})
    assert r.json() == {"site": "f1", "mode": "503", "previous": "ok"}
    assert ask(f1).status_code == 503
    assert ask(f1).json()["error"]["type"] == "server_error"
    assert client.get(f1 + "/health").status_code == 503
    assert client.get(f1 + "/metrics").status_code == 503
    assert ask(failing.urls["f2"]).status_code == 200  # only f1
    client.post(f1 + "/lab/fail", json={"mode": "ok"})
    assert ask(f1).status_code == 200 and client.get(f1 + "/health").status_code == 200


def test_hang_accepts_and_never_answers(failing: LabThread, f1: str, client: httpx.Client) -> None:
    failing.set_mode("f1", "hang")
    with pytest.raises(httpx.ReadTimeout):
        ask(f1, timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        client.get(f1 + "/health", timeout=0.3)
    assert client.get(f1 + "/lab/state").json()["mode"] == "hang"  # the lab's own route still answers
    assert wait_for(lambda: failing.state("f1")["in_flight"] == 0)  # the client left: nothing leaks
    failing.set_mode("f1", "ok")
    assert ask(f1).status_code == 200


def test_drop_cuts_a_stream_midway_without_done(failing: LabThread, f1: str) -> None:
    failing.set_mode("f1", "drop")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10, "stream": True}
    lines: list[str] = []
    with httpx.Client(trust_env=False, timeout=10) as c:
        with (
            pytest.raises(httpx.RemoteProtocolError),
            c.stream("POST", f1 + "/v1/chat/completions", json=body) as r,
        ):
            assert r.status_code == 200
            lines.extend(line for line in r.iter_lines() if line)
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(f1 + "/v1/chat/completions", json={**body, "stream": False})
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert 1 < len(chunks) < 12  # the role chunk and some tokens, not all
    assert "data: [DONE]" not in lines
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert wait_for(lambda: failing.state("f1")["failed"] >= 2 and failing.state("f1")["in_flight"] == 0)
    failing.set_mode("f1", "ok")
    with (
        httpx.Client(trust_env=False, timeout=10) as c,
        c.stream("POST", f1 + "/v1/chat/completions", json=body) as r,
    ):
        assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"


def test_slow_adds_delay_to_ttft(failing: LabThread, f1: str, client: httpx.Client) -> None:
    base = float(ask(f1).headers["x-lab-ttft-ms"])
    assert client.post(f1 + "/lab/fail", json={"mode": "slow", "delay_ms": 2000}).status_code == 200
    slow = float(ask(f1).headers["x-lab-ttft-ms"])
    assert slow == pytest.approx(base + 2000, abs=1)
    failing.set_mode("f1", "ok")
    assert float(ask(f1).headers["x-lab-ttft-ms"]) < 2000


def test_unknown_mode_is_refused(f1: str, client: httpx.Client) -> None:
    r = client.post(f1 + "/lab/fail", json={"mode": "explode"})
    assert r.status_code == 400 and "unknown failure mode" in r.json()["error"]["message"]
    assert client.get(f1 + "/lab/state").json()["mode"] == "ok"


def test_a_stopped_site_cuts_its_streams_refuses_connections_and_can_come_back() -> None:
    with start_sites(make_spec("a"), make_spec("b"), speed=1.0) as lab:
        url = lab.urls["a"]
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 200,
            "stream": True,
        }
        with httpx.Client(trust_env=False, timeout=10) as c:
            with (
                pytest.raises(httpx.RemoteProtocolError),
                c.stream("POST", url + "/v1/chat/completions", json=body) as r,
            ):
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")
                lab.stop_site("a")
                for _ in lines:
                    pass
            with pytest.raises(httpx.ConnectError):
                c.get(url + "/health")
            assert c.get(lab.urls["b"] + "/health").status_code == 200  # the others go on
            lab.restart_site("a")
            assert lab.urls["a"] == url
            assert c.get(url + "/health").status_code == 200
        assert wait_for(lambda: lab.state("a")["in_flight"] == 0 and lab.state("a")["running"] == 0)
