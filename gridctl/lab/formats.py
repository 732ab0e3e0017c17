"""The wire formats a lab site speaks: OpenAI's requests, responses, stream chunks and
errors, and vLLM's Prometheus metrics. Pure: parse plain data, build bytes and dicts."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gridctl.core.placement.perf import count_tokens

DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_LIMIT = 1_000_000
DONE = b"data: [DONE]\n\n"
_COMPACT = (",", ":")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class Completion:
    """A parsed /v1/chat/completions (chat) or /v1/completions request."""

    chat: bool
    model: str
    prompt: str  # the text the prefix cache sees: the rendered conversation, or the prompt
    prompt_tokens: int
    max_tokens: int
    finish_reason: str  # "length" when max_tokens was asked for, else "stop"
    stream: bool
    include_usage: bool


def parse_completion(body: Any, chat: bool) -> Completion:
    """Validate a request body; raise BadRequest saying which field is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", "model")
    if chat:
        prompt = _render_messages(body.get("messages"))
        tokens = count_tokens(prompt)
    else:
        prompt, tokens = _prompt(body.get("prompt"))
    limit = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
    if limit is None:
        max_tokens, finish = DEFAULT_MAX_TOKENS, "stop"
    elif isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= MAX_TOKENS_LIMIT:
        max_tokens, finish = limit, "length"
    else:
        raise BadRequest(f"'max_tokens' must be an integer from 1 to {MAX_TOKENS_LIMIT}", "max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return Completion(chat, model, prompt, tokens, max_tokens, finish, stream, include_usage)


def _render_messages(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        elif content is not None and not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts", "messages")
        parts.append(f"{m['role']}: {content or ''}\n")
    return "".join(parts)


def _prompt(prompt: Any) -> tuple[str, int]:
    if isinstance(prompt, str):
        return prompt, count_tokens(prompt)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0], count_tokens(prompt[0])
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return " ".join(f"{t:04x}" for t in prompt), len(prompt)  # token ids: 4 characters each
    raise BadRequest("'prompt' must be a string or a list of token ids (one prompt per request)", "prompt")


# -- responses ------------------------------------------------------------------------------


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_body(
    req: Completion, rid: str, created: int, text: str, n_tokens: int, cached: int
) -> dict[str, Any]:
    """The non-streaming answer, in OpenAI's shape."""
    if req.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": req.finish_reason,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": req.finish_reason}
    return {
        "id": rid,
        "object": "chat.completion" if req.chat else "text_completion",
        "created": created,
        "model": req.model,
        "choices": [choice],
        "usage": usage(req.prompt_tokens, n_tokens, cached),
    }


class StreamFormat:
    """SSE chunks in OpenAI's exact shape: ``data: {json}\\n\\n``, built from templates, since a
    stream writes one per token."""

    def __init__(self, req: Completion, rid: str, created: int) -> None:
        self.req = req
        obj = "chat.completion.chunk" if req.chat else "text_completion"
        head = json.dumps(
            {"id": rid, "object": obj, "created": created, "model": req.model}, separators=_COMPACT
        )[:-1]
        self._head = "data: " + head
        if req.chat:
            self._pre = self._head + ',"choices":[{"index":0,"delta":{"content":'
            self._post = '},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._pre = self._head + ',"choices":[{"index":0,"text":'
            self._post = ',"logprobs":null,"finish_reason":null}]}\n\n'

    def role(self) -> bytes:
        """Chat streams open with the assistant's role and empty content."""
        return (
            self._head + ',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}]}\n\n'
        ).encode()

    def token(self, text: str) -> bytes:
        return (self._pre + json.dumps(text) + self._post).encode()

    def final(self) -> bytes:
        finish = json.dumps(self.req.finish_reason)
        if self.req.chat:
            choice = f'{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":{finish}}}'
        else:
            choice = f'{{"index":0,"text":"","logprobs":null,"finish_reason":{finish}}}'
        return (self._head + f',"choices":[{choice}]}}\n\n').encode()

    def usage(self, n_tokens: int, cached: int) -> bytes:
        """The extra last chunk with ``stream_options.include_usage``: no choices, the usage."""
        body = json.dumps(usage(self.req.prompt_tokens, n_tokens, cached), separators=_COMPACT)
        return (self._head + f',"choices":[],"usage":{body}}}\n\n').encode()


def models_body(models: Iterable[str], created: int, owner: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": created, "owned_by": owner} for m in models],
    }


# -- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # gauge | counter
    help: str
    samples: Sequence[tuple[Mapping[str, str], float]]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(metrics: Iterable[Metric]) -> bytes:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{m.name}{{{text}}} {float(value)!r}")
    return ("\n".join(lines) + "\n").encode()


_FILLER = (
    " The", " grid", " routes", " each", " request", " to", " a", " nearby", " site", " with",
    " free", " capacity", ",", " keeping", " its", " data", " where", " it", " may", " go", ".",
)  # fmt: skip


def filler_tokens(prompt: str, n: int) -> list[str]:
    """``n`` deterministic tokens; the same prompt always gets the same text."""
    start = zlib.crc32(prompt.encode("utf-8", "surrogatepass")) % len(_FILLER)
    k = len(_FILLER)
    return [_FILLER[(start + i) % k] for i in range(n)]
