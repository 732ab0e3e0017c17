"""The daemon's OpenAI-shaped surface: error objects, request bodies, model objects.

What the official SDKs (openai, LangChain's ChatOpenAI) read, in one place:

- every error object carries ``message``, ``type``, ``param`` and ``code`` (``param``
  and ``code`` null unless they say something), plus gridctl's own fields;
- an answer that retrying cannot change (a 4xx other than 408, 409 and 429) carries
  ``x-should-retry: false``, which the openai SDKs obey over their own rules;
- an unknown model is ``404`` with ``code: model_not_found`` and the closest known
  names (a known model that no site can take now stays ``503`` with ``Retry-After``);
- a body that is not a JSON object with a ``model``, or is nested too deeply for the
  parser, is ``400 invalid_request_error``, never a 500;
- a model object: ``id``, ``object: "model"``, ``created`` (the newest modification
  time, in whole Unix seconds, of the inventory files the daemon read: stable across
  restarts and ``--workers``, changed only by an inventory change), ``owned_by`` (the
  grid's name) and gridctl's ``sites`` (the sites serving it).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote

from gridctl.net.messages import Response, json_response, no_retry

MODELS_PATH = "/v1/models"
CLOSEST = 3  # model names suggested for an unknown one
CLOSEST_CUTOFF = 0.5  # difflib's similarity ratio a suggestion must reach


def build_error(
    message: str, kind: str, param: str | None = None, code: str | None = None, **extra: Any
) -> dict[str, Any]:
    """An OpenAI error object: ``{"error": {message, type, param, code, ...extra}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


def error_json(
    status: int, message: str, kind: str, headers: Iterable[tuple[str, str]] = (), **extra: Any
) -> Response:
    """The daemon's own error answer; ``x-should-retry: false`` when retrying cannot help."""
    return json_response(build_error(message, kind, **extra), status, (*headers, *no_retry(status)))


# the C scanner json.loads ends in (typeshed does not declare the attribute)
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(raw: bytes) -> Any:
    """``json.loads(raw)``; a body that opens with ``{`` (UTF-8, json's guess for it: no BOM,
    no NUL) and ends where its object does goes straight to the scanner json.loads would run,
    past the layers that detect the encoding and skip whitespace (each request has one); the
    rest, and its errors, are json.loads's own."""
    if raw[:1] == b"{" and raw[1:2] != b"\x00":
        text = raw.decode("utf-8", "surrogatepass")
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            pass
        else:
            if end == len(text):
                return value
    return json.loads(raw)


def parse_body(raw: bytes) -> tuple[dict[str, Any], str] | Response:
    """An inference request's body and its model, or the 400 to answer."""
    try:
        body = _loads(raw)
    except RecursionError:  # json's C scanner stops at the interpreter's recursion limit
        return error_json(
            400, "the body is JSON nested too deeply to read", "invalid_request_error", code="invalid_json"
        )
    except ValueError:  # not JSON, or not UTF-8
        return error_json(
            400, "the body must be JSON with a 'model'", "invalid_request_error", code="invalid_json"
        )
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        return error_json(400, "the body must be JSON with a 'model'", "invalid_request_error", param="model")
    return body, model


def closest_models(name: str, known: Sequence[str]) -> list[str]:
    """The known model names closest to ``name`` (difflib, case-insensitive), best first."""
    lowered = {k.lower(): k for k in known}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=CLOSEST, cutoff=CLOSEST_CUTOFF)
    return [lowered[f] for f in found]


def model_not_found(name: str, known: Sequence[str]) -> Response:
    """404 ``model_not_found`` naming the closest known models (or, with none close, all of them)."""
    close = closest_models(name, known)
    if close:
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?"
    else:
        hint = f"the grid serves {', '.join(known) or 'no model'} (GET /v1/models)"
    return error_json(
        404,
        f"the model '{name[:200]}' does not exist in this grid: {hint}",
        "invalid_request_error",
        param="model",
        code="model_not_found",
        closest=close,
    )


def build_model(model: str, created: int, owned_by: str, sites: Iterable[str]) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": owned_by, "sites": sorted(sites)}


def build_created(signature: Iterable[tuple[str, int, int]]) -> int:
    """``created`` from the inventory's signature (name, mtime_ns, size per file read)."""
    return max((mtime_ns for _, mtime_ns, _ in signature), default=0) // 1_000_000_000


def model_id(path: str) -> str | None:
    """The model id of a ``/v1/models/{id}`` path (percent-decoded; an id may hold '/'), else None."""
    prefix = MODELS_PATH + "/"
    if not path.startswith(prefix) or len(path) == len(prefix):
        return None
    return unquote(path[len(prefix) :])


def models_response(models: dict[str, dict[str, Any]], ident: str | None = None) -> Response:
    """``GET /v1/models`` (``ident`` None) or ``GET /v1/models/{ident}``."""
    if ident is None:
        return json_response({"object": "list", "data": list(models.values())})
    if ident not in models:
        return model_not_found(ident, list(models))
    return json_response(models[ident])
