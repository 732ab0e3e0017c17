"""Lab sites speak OpenAI's protocol and vLLM's metrics, over real HTTP (example inventory)."""

from __future__ import annotations

import json

import httpx
import pytest

from gridctl.inventory.load import load_inventory
from gridctl.lab import LabThread
from tests.conftest import EXAMPLE
from tests.lab.conftest import MODEL, fetch_metrics, metric, overlay_of, sse_events

SITE = "fra-pop-01"
GAUGES_AND_COUNTERS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:gpu_cache_usage_perc",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)
HI = [{"role": "user", "content": "x"}]


@pytest.fixture
def url(example_lab: LabThread) -> str:
    return example_lab.urls[SITE]


def chat(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], **extra}


def test_every_inventory_site_has_a_lab_site_and_the_overlay_points_at_them(example_lab: LabThread) -> None:
    source, overlay = load_inventory(EXAMPLE), overlay_of(example_lab)
    inv = load_inventory(overlay)
    assert [s.name for s in inv.sites] == [s.name for s in source.sites]
    for site in inv.sites:
        assert site.endpoint == example_lab.urls[site.name]
        assert site.endpoint.startswith("http://127.0.0.1:")
        assert site.api_key_env is None
    assert "# Berlin Mitte edge site" in (overlay / "sites/ber-edge-01.yaml").read_text()  # comments kept
    assert not (overlay / ".state").exists()


def test_streaming_chat_is_openai_sse_ending_with_done(url: str, client: httpx.Client) -> None:
    with client.stream("POST", url + "/v1/chat/completions", json=chat(stream=True, max_tokens=5)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["model"] == MODEL and isinstance(c["created"], int) for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(content) == 5 and all(content)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 6
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}


def test_streaming_completion_uses_text_and_can_include_usage(url: str, client: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", url + "/v1/completions", json=body) as r:
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    texts = [c["choices"][0]["text"] for c in chunks[:3]]
    assert all(texts) and chunks[3]["choices"][0]["finish_reason"] == "length"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["completion_tokens"] == 3
    assert chunks[4]["usage"]["prompt_tokens"] == 4  # 16 characters at 4 per token


def test_non_streaming_chat_has_openai_shape_and_usage(url: str, client: httpx.Client) -> None:
    r = client.post(url + "/v1/chat/completions", json=chat(max_tokens=7))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert choice["message"]["content"].count(" ") >= 5
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0
    again = client.post(url + "/v1/chat/completions", json=chat(max_tokens=7)).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]  # deterministic


def test_non_streaming_completion_default_length(url: str, client: httpx.Client) -> None:
    body = client.post(url + "/v1/completions", json={"model": MODEL, "prompt": "abc"}).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 16


def test_models_health_and_metrics(url: str, client: httpx.Client) -> None:
    models = client.get(url + "/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["llama-3.1-8b-instruct", "llama-3.1-70b-instruct"]
    assert all(m["object"] == "model" for m in models["data"])
    assert client.get(url + "/health").status_code == 200
    client.post(url + "/v1/chat/completions", json=chat(max_tokens=2))
    m = fetch_metrics(client, url)
    for name in GAUGES_AND_COUNTERS:
        assert metric(m, name, model_name=MODEL) >= 0
    assert metric(m, "vllm:request_success_total", model_name=MODEL, finished_reason="length") >= 1
    assert metric(m, "vllm:generation_tokens_total", model_name=MODEL) >= 2
    assert metric(m, "gridctl_lab_failure_mode", mode="ok") == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404,
         "model_not_found", "model"),
        ("/v1/completions", {"prompt": "x"}, 400, None, "model"),
        ("/v1/chat/completions", {"model": MODEL}, 400, None, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 0}, 400, None, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400, None, "stream"),
    ],
)  # fmt: skip
def test_request_errors_in_openai_shape(
    url: str, client: httpx.Client, path: str, body: object, status: int, code: str | None, param: str
) -> None:
    r = client.post(url + path, json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["param"] == param
    assert error["message"]


def test_bad_json_is_400(url: str, client: httpx.Client) -> None:
    r = client.post(
        url + "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


def test_body_over_the_size_limit_is_413(url: str, client: httpx.Client) -> None:
    prompt = "x" * (5 << 20)
    r = client.post(url + "/v1/completions", json={"model": MODEL, "prompt": prompt})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"  # gridctl/net's refusal, named by its kind


def test_unknown_route_and_unknown_region(url: str, client: httpx.Client) -> None:
    assert client.get(url + "/v2/nothing").status_code == 404
    assert client.get(url + "/v1/chat/completions").status_code == 405
    r = client.post(url + "/v1/chat/completions", json=chat(), headers={"x-grid-client-region": "mars"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_region"


def test_keep_alive_one_connection_for_many_requests(url: str) -> None:
    with httpx.Client(trust_env=False) as c:
        streams = []  # held, so that a new connection could not reuse an old one's id
        for _ in range(5):
            r = c.post(url + "/v1/completions", json={"model": MODEL, "prompt": "k", "max_tokens": 1})
            assert r.status_code == 200 and "connection" not in r.headers
            streams.append(r.extensions["network_stream"])
        assert all(s is streams[0] for s in streams)


def test_lab_state_route(url: str, client: httpx.Client) -> None:
    state = client.get(url + "/lab/state").json()
    assert state["name"] == SITE and state["mode"] == "ok" and state["gpu"] == "H100"
    assert {m["name"] for m in state["models"]} == {"llama-3.1-8b-instruct", "llama-3.1-70b-instruct"}
    assert state["in_flight"] == 0 and state["served"] >= 0
