"""The official clients users run, against the real daemon on lab sites: the openai SDK
(typed errors, its retries, models) and LangChain's ChatOpenAI. Loopback only: no key is
real, nothing is fetched (no tiktoken encodings: no token counting is asked for)."""

from __future__ import annotations

import json
import re
import socket

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.daemon.conftest import M8, DaemonProc, chat

MISTYPED = "llama-3.1-8b-instruc"


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """LangChain sends nothing to LangSmith, whatever the environment says."""
    for name in ("LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING", "LANGCHAIN_API_KEY", "LANGSMITH_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def _client(d: DaemonProc, max_retries: int = 2, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=d.url + "/v1", api_key="unused", max_retries=max_retries, default_headers=headers or None
    )


def _counter(d: DaemonProc, pattern: str) -> int:
    found = re.search(pattern + r" (\d+)$", httpx.get(d.url + "/metrics").text, re.M)
    return int(found.group(1)) if found else 0


NOT_FOUND = r'^gridctl_requests_total\{model="other",site="none",status="4xx"\}'  # a model the grid lacks
NO_SITE = r'^gridctl_shed_total\{reason="no-eligible-site"\}'


def test_openai_typed_errors_and_its_retries(daemon) -> None:
    client = _client(daemon, max_retries=3)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=MISTYPED, messages=[{"role": "user", "content": "hi"}])
    err = info.value
    assert err.status_code == 404 and err.code == "model_not_found" and err.param == "model"
    assert err.type == "invalid_request_error" and f"did you mean '{M8}'" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert _counter(daemon, NOT_FOUND) == 1  # reached the daemon once: not retried

    with pytest.raises(openai.BadRequestError) as bad:
        _client(daemon, max_retries=3, **{"x-grid-region": "mars"}).chat.completions.create(
            model=M8, messages=[{"role": "user", "content": "hi"}]
        )
    assert bad.value.status_code == 400 and "unknown client region" in bad.value.message
    assert bad.value.response.headers["x-should-retry"] == "false"

    # a known model that no site can take now: 503, retried after Retry-After (1 s here)
    with pytest.raises(openai.InternalServerError) as busy:
        _client(daemon, max_retries=1, **{"x-grid-slo-ms": "0.1"}).chat.completions.create(
            model=M8, messages=[{"role": "user", "content": "hi"}]
        )
    assert busy.value.status_code == 503 and busy.value.code == "no_eligible_site"
    assert busy.value.response.headers["retry-after"] == "1"
    assert "x-should-retry" not in busy.value.response.headers
    assert _counter(daemon, NO_SITE) == 2  # the first try and one retry


def test_openai_models_chat_and_stream(daemon) -> None:
    client = _client(daemon)
    listed = client.models.list().data
    assert {m.id for m in listed} == {M8, "llama-3.1-70b-instruct", "parakeet-tdt-0.6b-v2"}
    assert {(m.object, m.owned_by) for m in listed} == {("model", "acme-grid")}
    assert len({m.created for m in listed}) == 1 and listed[0].created > 1_600_000_000
    one = client.models.retrieve(M8)
    assert one.id == M8 and one.created == listed[0].created and one.owned_by == "acme-grid"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(MISTYPED)
    assert info.value.code == "model_not_found" and M8 in info.value.message

    answer = client.chat.completions.create(
        model=M8, messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert answer.choices[0].message.content and answer.usage is not None
    assert answer.usage.completion_tokens <= 8
    raw = client.chat.completions.with_raw_response.create(
        model=M8, messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert raw.headers["x-grid-site"]
    pieces = client.chat.completions.create(
        model=M8, messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert text


def test_langchain_chat_openai_invoke_stream_and_errors(daemon) -> None:
    llm = ChatOpenAI(base_url=daemon.url + "/v1", api_key="unused", model=M8, max_tokens=8, max_retries=0)
    answer = llm.invoke("hello")
    assert isinstance(answer.content, str) and answer.content
    assert answer.response_metadata["model_name"]
    streamed = "".join(str(chunk.content) for chunk in llm.stream("hello"))
    assert streamed
    wrong = ChatOpenAI(base_url=daemon.url + "/v1", api_key="unused", model=MISTYPED, max_retries=2)
    with pytest.raises(openai.NotFoundError):
        wrong.invoke("hello")
    assert _counter(daemon, NOT_FOUND) == 1


def test_every_daemon_error_is_openai_shaped(daemon) -> None:
    url = daemon.url
    answers = [
        httpx.post(url + "/v1/chat/completions", content=b"{not json"),
        httpx.post(url + "/v1/chat/completions", content=b"[" * 100_000),
        httpx.post(url + "/v1/chat/completions", content=b'{"model": "m", "messages": ' + b"[" * 100_000),
        daemon.post(chat(), headers={"x-grid-region": "mars"}),
        daemon.post(chat(), headers={"x-grid-slo-ms": "fast"}),
        daemon.post(chat(), headers={"x-grid-slo-policy": "sometimes"}),
        daemon.post(chat(model="no-such-model")),
        daemon.post(chat(), headers={"x-grid-slo-ms": "0.1"}),
        httpx.get(url + "/v1/nothing"),
        httpx.get(url + "/v1/models/no-such-model"),
        httpx.delete(url + "/v1/models"),
        httpx.get(url + "/grid/route"),
        httpx.post(url + "/v1/chat/completions", content=b"x" * (9 << 20)),
    ]
    statuses = [r.status_code for r in answers]
    assert statuses == [400, 400, 400, 400, 400, 400, 404, 503, 404, 404, 405, 400, 413]
    for r in answers:
        err = r.json()["error"]
        assert {"message", "type", "param", "code"} <= set(err), r.text
        assert r.headers.get("x-should-retry") == ("false" if r.status_code < 500 else None), r.text
    assert "nested too deeply" in answers[1].text and "nested too deeply" in answers[2].text
    assert answers[6].json()["error"]["code"] == "model_not_found"
    assert daemon.post(chat()).status_code == 200  # still serving
    rc, err = daemon.stop()
    assert rc == 0 and "Traceback" not in err


def _raw(d: DaemonProc, head: bytes) -> bytes:
    port = int(d.url.rsplit(":", 1)[1])
    body = json.dumps(chat()).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_host_missing_or_doubled_is_a_400_from_the_daemon(daemon) -> None:
    for head in (
        b"POST /v1/chat/completions HTTP/1.1\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
    ):
        got = _raw(daemon, head)
        assert got.startswith(b"HTTP/1.1 400 "), got[:200]
        assert b"Host" in got and b"x-grid-site" not in got
    assert _counter(daemon, r'^gridctl_http_parse_errors_total\{kind="invalid_host"\}') == 2
