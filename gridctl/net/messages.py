"""The HTTP server's vocabulary: the request a handler gets, the answers it returns, the
server's configuration, its own refusals (in the OpenAI error shape) and how a response
head is written. Used by :mod:`gridctl.net.connection` and the handlers (the daemon, the lab).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httptools

from gridctl.net.syntax import MAX_HEAD, MAX_HEADER_LINE, MAX_HEADERS, MAX_TARGET, parse_codings

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Request:
    """One parsed request. Header names are lower-case; repeated headers are joined by ", "."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "body", "keep_alive")

    def __init__(
        self, method: str, target: str, version: str, headers: dict[str, str], body: bytes, keep_alive: bool
    ) -> None:
        self.method, self.target, self.version = method, target, version
        self.path, _, self.query = target.partition("?")
        self.headers, self.body, self.keep_alive = headers, body, keep_alive

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return json.loads(self.body)


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, tuple(headers)


class StreamingResponse:
    """A response whose body is produced over time; each item is written as it comes."""

    __slots__ = ("status", "chunks", "content_type", "headers")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        content_type: str = "text/event-stream",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.chunks, self.status, self.content_type, self.headers = (
            chunks,
            status,
            content_type,
            tuple(headers),
        )


class DropConnection(Exception):
    """Raised by a handler or a stream: close the connection now, mid-response, sending nothing more
    (what was already written still arrives, then the end of the stream)."""


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


def json_response(data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode(), "application/json", headers)


RETRYABLE_4XX = frozenset({408, 409, 429})  # the 4xx answers the openai SDKs retry


def no_retry(status: int) -> tuple[tuple[str, str], ...]:
    """``x-should-retry: false`` (obeyed by the openai SDKs) on a 4xx that retrying cannot change."""
    return (("x-should-retry", "false"),) if 400 <= status < 500 and status not in RETRYABLE_4XX else ()


def busy_response(message: str) -> Response:
    body = {
        "error": {"message": message, "type": "server_error", "param": None, "code": "too_many_connections"}
    }
    return json_response(body, 503, (("retry-after", "1"),))


def error_response(status: int, message: str, code: str | None = None) -> Response:
    """The server's own errors (400, 413, 431, 500...), in the OpenAI error shape: ``code`` a
    string naming the reason (the kind ``parse_errors`` counts it under) or null, as OpenAI's."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json_response(body, status, no_retry(status))


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, chosen by the kernel
    max_body: int = 4 << 20
    max_head: int = MAX_HEAD  # the request line and header lines (a chunked body's trailers apart)
    keepalive_s: float = 75.0
    backlog: int = 1024
    reuse_port: bool = False  # several processes on one port (the daemon's --workers)
    # called with each request's head (method, path, lower-case headers) before its body is
    # read: a Response refuses the request at once (e.g. a missing token), None lets it in
    gate: Callable[[str, str, dict[str, str]], Response | None] | None = None
    max_headers: int = MAX_HEADERS  # header lines in one head (and, apart, in a chunked body's trailers)
    max_header_line: int = MAX_HEADER_LINE  # one header's name and value
    max_target: int = MAX_TARGET  # the request target (path and query)
    head_timeout_s: float = 10.0  # a whole head, from its first byte (slowloris)
    body_timeout_s: float = 30.0  # the longest silence inside a request body
    send_timeout_s: float = 30.0  # the longest a response may wait on a client that does not read
    max_connections: int | None = None  # None: no limit but the process's
    # headers added to the server's own refusals (400, 408, 413, 431, 503...), given what was
    # read of the refused request's headers: e.g. the daemon's x-request-id
    error_headers: Callable[[dict[str, str]], Iterable[tuple[str, str]]] | None = None
    tls: ssl.SSLContext | None = None  # None: plain HTTP


class HttpError(Exception):
    """A request refused before its handler: ``kind`` names the reason in ``parse_errors``
    (None: not a parse error, e.g. the gate's refusal)."""

    def __init__(
        self, status: int, message: str, kind: str | None = None, response: Response | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.response = status, message, kind, response


def parse_error(exc: Exception) -> HttpError:
    """llhttp's verdict on a malformed request, as the answer and the kind it is counted under."""
    reason = str(exc) or type(exc).__name__
    low = reason.lower()
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return HttpError(400, f"malformed request line: {reason}", "invalid_method")
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return HttpError(400, f"malformed request target: {reason}", "invalid_target")
    if reason == "Invalid HTTP version" or "pri/upgrade" in low:  # well formed, but not HTTP/1.x
        return HttpError(505, f"unsupported HTTP version: {reason}", "invalid_version")
    if "version" in low:
        return HttpError(400, f"malformed HTTP version: {reason}", "invalid_version")
    if "chunk" in low:
        return HttpError(400, f"malformed chunked body: {reason}", "invalid_chunk")
    if "content-length" in low:
        return HttpError(400, f"bad Content-Length: {reason}", "invalid_content_length")
    if "transfer-encoding" in low:
        return HttpError(400, f"bad Transfer-Encoding: {reason}", "invalid_transfer_encoding")
    if "header" in low or "after start line" in low:
        return HttpError(
            400,
            "malformed header line in the request head (a control character, a folded line or a name"
            f" that is not a token): {reason}",
            "invalid_header",
        )
    return HttpError(400, f"malformed request line: {reason}", "invalid_request_line")


_date_cache: list[Any] = [0, ""]


def http_date() -> str:
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache[0], _date_cache[1] = second, formatdate(second, usegmt=True)
    return str(_date_cache[1])


def build_head(
    status: int,
    content_type: str,
    headers: tuple[tuple[str, str], ...],
    length: int | None,
    keep: bool,
) -> bytes:
    """The response head. ``length`` None: chunked; negative: neither (the body ends at close)."""
    reason = _REASONS.get(status, "Unknown")
    parts = [f"HTTP/1.1 {status} {reason}\r\ndate: {http_date()}\r\nserver: gridctl\r\n"]
    if content_type:
        parts.append(f"content-type: {content_type}\r\n")
    if length is None:
        parts.append("transfer-encoding: chunked\r\n")
    elif length >= 0:
        parts.append(f"content-length: {length}\r\n")
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n")
    if not keep:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def head_too_large(config: ServerConfig, size: int, n_headers: int) -> HttpError:
    """The 431 for a head past one of its limits (``size``: the header line just read)."""
    if size > config.max_header_line:
        return HttpError(431, f"a request header over {config.max_header_line} bytes", "header_too_large")
    if n_headers > config.max_headers:
        return HttpError(431, f"more than {config.max_headers} request header lines", "too_many_headers")
    return HttpError(431, f"request head over {config.max_head} bytes", "head_too_large")


async def aclose(chunks: AsyncIterator[bytes]) -> None:
    """Close a streamed body (it may hold resources until it is closed), when it can be."""
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def transfer_encoding_error(te: str, version: str) -> HttpError | None:
    """What is wrong with a request's Transfer-Encoding, if anything: chunked must come last,
    once, in HTTP/1.1 (RFC 9112 sections 6.1 and 6.3), and no other coding is supported."""
    codings = parse_codings(te)
    if version == "HTTP/1.0" or codings[-1:] != ["chunked"] or "chunked" in codings[:-1]:
        # no reliable framing (llhttp reads HTTP/1.0's as chunked)
        what = "in an HTTP/1.0 request" if version == "HTTP/1.0" else "(chunked must come last, once)"
        return HttpError(400, f"Transfer-Encoding {te[:40]!r} {what}", "invalid_transfer_encoding")
    if len(codings) > 1:
        return HttpError(501, f"unsupported Transfer-Encoding {te[:40]!r}", "unsupported_transfer_encoding")
    return None
