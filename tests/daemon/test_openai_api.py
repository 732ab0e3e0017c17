"""The daemon's OpenAI-shaped pieces, without sockets: errors, bodies, model ids."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.daemon.openai_api import (
    build_created,
    closest_models,
    error_json,
    model_id,
    model_not_found,
    models_response,
    parse_body,
)
from gridctl.net.messages import Response

KNOWN = ["llama-3.1-70b-instruct", "llama-3.1-8b-instruct", "parakeet-tdt-0.6b-v2"]


def _error(resp: Response) -> dict:
    return json.loads(resp.body)["error"]


@pytest.mark.parametrize(
    ("status", "no_retry"),
    [(400, True), (401, True), (404, True), (405, True), (413, True)]
    + [(408, False), (409, False), (429, False), (500, False), (502, False), (503, False)],
)
def test_x_should_retry_false_only_where_retrying_cannot_help(status: int, no_retry: bool) -> None:
    resp = error_json(status, "m", "invalid_request_error", headers=(("retry-after", "1"),))
    assert (("x-should-retry", "false") in resp.headers) is no_retry
    assert ("retry-after", "1") in resp.headers
    assert {"message", "type", "param", "code"} <= set(_error(resp))


@pytest.mark.parametrize(
    ("name", "best"),
    [
        ("llama-3.1-8b-instruc", "llama-3.1-8b-instruct"),
        ("Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct"),
        ("llama-3.1-70b", "llama-3.1-70b-instruct"),
        ("parakeet", "parakeet-tdt-0.6b-v2"),
    ],
)
def test_closest_models_best_first(name: str, best: str) -> None:
    assert closest_models(name, KNOWN)[0] == best


def test_model_not_found_names_the_closest_or_all() -> None:
    resp = model_not_found("llama-3.1-8b-instruc", KNOWN)
    err = _error(resp)
    assert resp.status == 404 and ("x-should-retry", "false") in resp.headers
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert err["type"] == "invalid_request_error"
    assert "did you mean 'llama-3.1-8b-instruct'" in err["message"]
    err = _error(model_not_found("gpt-4o", KNOWN))
    assert err["closest"] == [] and all(k in err["message"] for k in KNOWN)


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"model": "m", "messages": ' + b"[" * 100_000, b'{"a":' * 100_000],
)
def test_deeply_nested_json_is_a_400(raw: bytes) -> None:
    resp = parse_body(raw)
    assert isinstance(resp, Response) and resp.status == 400
    assert _error(resp)["type"] == "invalid_request_error" and "nested" in _error(resp)["message"]


@pytest.mark.parametrize(
    "raw", [b"{not json", b"\xff\xfe", b"[]", b'"m"', b"3", b'{"model": ""}', b'{"model": 3}', b"{}"]
)
def test_a_body_without_a_model_is_a_400(raw: bytes) -> None:
    resp = parse_body(raw)
    assert isinstance(resp, Response) and resp.status == 400
    assert "'model'" in _error(resp)["message"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_RAW = st.builds(
    lambda value, ends, cut: (ends[0] + json.dumps(value).encode() + ends[1])[: cut or None],
    st.dictionaries(st.text(max_size=5), _JSON, max_size=4) | _JSON,
    st.tuples(*[st.sampled_from([b"", b" ", b"\r\n", b"\x0c", b"x", b"\x00", b"\xef\xbb\xbf", b"}"])] * 2),
    st.integers(min_value=-3, max_value=0),
) | st.binary(max_size=12).map(lambda b: b"{" + b)


@settings(max_examples=500, deadline=None)
@given(_RAW)
def test_a_body_reads_as_json_loads_reads_it(raw: bytes) -> None:
    """The scanner's short way gives what json.loads gives, or the same error."""
    from gridctl.daemon.openai_api import _loads

    try:
        want: object = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            _loads(raw)
    else:
        assert _loads(raw) == want


def test_parse_body_gives_the_body_and_its_model() -> None:
    assert parse_body(b'{"model": "m", "x": [1]}') == ({"model": "m", "x": [1]}, "m")


@pytest.mark.parametrize(
    ("path", "ident"),
    [
        ("/v1/models", None),
        ("/v1/models/", None),
        ("/v1/modelsx", None),
        ("/v1/models/llama-3.1-8b-instruct", "llama-3.1-8b-instruct"),
        ("/v1/models/meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
        ("/v1/models/meta-llama%2FLlama-3.1-8B", "meta-llama/Llama-3.1-8B"),
    ],
)
def test_model_id_of_a_path(path: str, ident: str | None) -> None:
    assert model_id(path) == ident


def test_created_is_the_newest_inventory_mtime_in_seconds() -> None:
    assert build_created([("grid.yaml", 1_700_000_000_999_999_999, 10), ("a.yaml", 5, 1)]) == 1_700_000_000
    assert build_created([]) == 0


def test_models_response_list_one_and_unknown() -> None:
    models = {"m": {"id": "m", "object": "model", "created": 1, "owned_by": "g"}}
    assert json.loads(models_response(models).body) == {"object": "list", "data": [models["m"]]}
    assert json.loads(models_response(models, "m").body) == models["m"]
    resp = models_response(models, "n")
    assert resp.status == 404 and _error(resp)["code"] == "model_not_found"
