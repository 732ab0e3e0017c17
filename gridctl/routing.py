"""The imperative shell around placement: state in, network out.

Builds the ``Planner`` from the inventory plus what gridctl measured (probes)
and recorded (health); measures round trips (``route probe``); sends a real
request to a site (``route test --live``). The decisions themselves are made
by the pure ``gridctl.placement``.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gridctl.core.errors import UsageError
from gridctl.core.inventory.model import Inventory, Site
from gridctl.core.placement.decision import DEFAULT_SHAPE
from gridctl.core.placement.engine import Planner
from gridctl.core.placement.predict import Prediction, Shape, estimate_shape
from gridctl.core.placement.signals import Live, health_live
from gridctl.fleet.http_client import (
    ConnectFailed,
    EndpointClient,
    open_connection,
    request_path,
    site_context,
)
from gridctl.net.tls import TlsFileError


def load_planner(inv: Inventory, use_probes: bool = True) -> Planner:
    from gridctl.inventory.state import probe_rtts

    return Planner(inv, probe_rtts(inv.root) if use_probes else None)


def recorded_live(inv: Inventory) -> Live:
    """The last recorded health of every site (no live load)."""
    from gridctl.inventory.state import health_by_site

    return health_live(health_by_site(inv.root))


_BODY_HINT = (
    'give the JSON body of an OpenAI request, e.g. {"model": "llama-3.1-8b-instruct", '
    '"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}'
)


MAX_BODY_CHARS = 64 * 2**20  # the daemon's own limit is smaller (--max-body, 8 MiB by default)


def _read_regular(path: Path, where: str) -> str:
    """A regular file's text, at most MAX_BODY_CHARS (never a FIFO or a device, which could block
    or never end)."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"--body {where}: not a regular file", hint=_BODY_HINT)
        return f.read(4 * MAX_BODY_CHARS + 1).decode("utf-8")


def read_body(path: Path, stdin: TextIO) -> dict[str, Any]:
    """``route test --body FILE`` (``-``: stdin): the request body as a JSON object; a
    UsageError saying what is wrong and where otherwise."""
    where = "stdin" if str(path) == "-" else str(path)
    try:
        text = stdin.read(MAX_BODY_CHARS + 1) if str(path) == "-" else _read_regular(path, where)
    except OSError as exc:
        raise UsageError(
            f"--body {where}: cannot read it: {exc.strerror or exc}",
            hint="check the path and its permissions",
        ) from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--body {where}: not UTF-8 text ({exc.reason})", hint=_BODY_HINT) from None
    if len(text) > MAX_BODY_CHARS:
        raise UsageError(f"--body {where}: larger than {MAX_BODY_CHARS // 2**20} MiB", hint=_BODY_HINT)
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--body {where}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}", hint=_BODY_HINT
        ) from None
    except RecursionError:
        raise UsageError(f"--body {where}: nested too deeply to be a request body", hint=_BODY_HINT) from None
    if not isinstance(body, dict):
        raise UsageError(f"--body {where}: a JSON {type(body).__name__}, not an object", hint=_BODY_HINT)
    return body


def build_shape(
    prompt_tokens: int | None, max_tokens: int | None, body: Mapping[str, Any] | None = None
) -> Shape:
    """The request's shape for ``route test``: the body's (prompt at 4 characters a token,
    ``max_tokens`` / ``max_completion_tokens``, else the predictor's default), else
    ``DEFAULT_SHAPE`` (``output_source`` "default"); ``prompt_tokens`` / ``max_tokens`` override
    either part (``max_tokens``: source "given")."""
    if body is not None:
        from gridctl.core.placement.predict import MAX_TOKENS, prompt_text

        # the daemon reads a bad max_tokens as "not given" (the site will refuse it); an
        # explanation says so instead of explaining a request that is not the one written
        for key in ("max_completion_tokens", "max_tokens"):
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
                got = json.dumps(value)
                raise UsageError(
                    f"--body: {key}: must be a whole number from 1 to {MAX_TOKENS:,} (got {got})",
                    hint=_BODY_HINT,
                )
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise UsageError("--body: messages: must be a list of {role, content}", hint=_BODY_HINT)
        base = estimate_shape(body, prompt_text(body))
    else:
        base = Shape(DEFAULT_SHAPE.prompt_tokens, DEFAULT_SHAPE.output_tokens, "default")
    return Shape(
        prompt_tokens if prompt_tokens is not None else base.prompt_tokens,
        max_tokens if max_tokens is not None else base.output_tokens,
        "given" if max_tokens is not None else base.output_source,
    )


def _headers(site: Site, environ: Mapping[str, str], region: str | None) -> dict[str, str]:
    headers = {"user-agent": "gridctl", **site.auth_headers(environ)}
    if region:
        headers["x-grid-client-region"] = region  # lab sites simulate this region's distance
    return headers


@dataclass(frozen=True)
class ProbeResult:
    site: str
    rtt_ms: float | None  # median
    samples: tuple[float, ...]
    error: str | None

    def to_dict(self, measured_at: str) -> dict[str, Any]:
        return {
            "site": self.site,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "samples": [round(s, 3) for s in self.samples],
            "error": self.error,
            "measured_at": measured_at,
        }


HTTPX_ALPN = ("http/1.1",)  # what httpx offered in its TLS handshakes, which these probes keep


def describe_error(exc: Exception) -> str:
    """A failed request as ``route probe`` and ``route test --live`` show it: the kind of
    failure (the names these commands have always printed), then the library's words."""
    if isinstance(exc, ConnectFailed):
        cause = exc.__cause__
        return f"{'ConnectTimeout' if isinstance(cause, TimeoutError) else 'ConnectError'}: {cause}"
    if isinstance(exc, TimeoutError):
        return f"ReadTimeout: {exc}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "RemoteProtocolError: Server disconnected without sending a response."
    if isinstance(exc, ConnectionError):  # reset, broken pipe
        return f"ReadError: {exc}"
    if isinstance(exc, http.client.IncompleteRead):  # closed before the end its framing announced
        cut = "RemoteProtocolError: peer closed connection without sending complete message body"
        if exc.expected is None:
            return f"{cut} (incomplete chunked read)"
        got = len(exc.partial)
        return f"{cut} (received {got} bytes, expected {got + exc.expected})"
    if isinstance(exc, http.client.BadStatusLine):  # its line as h11 quotes it, no line end
        line = bytearray(str(exc).rstrip("\r\n").encode("latin-1", "replace"))
        return f"RemoteProtocolError: illegal status line: {line!r}"
    if isinstance(exc, http.client.HTTPException):  # an answer that is not HTTP/1.x
        return f"RemoteProtocolError: {type(exc).__name__}: {str(exc).strip()}"
    return f"{type(exc).__name__}: {exc}"


def _timed_gets(
    conn: http.client.HTTPConnection, url: str, headers: Mapping[str, str], samples: int
) -> list[float]:
    """One warm-up GET (connection set-up is not counted), then ``samples`` timed ones (ms), on
    the same kept-alive connection."""
    path = request_path(url)

    def get() -> None:
        open_connection(conn)
        conn.request("GET", path, headers=headers)
        conn.getresponse().read()

    get()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        get()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _probe_site(
    client: EndpointClient, site: Site, region: str, environ: Mapping[str, str], samples: int, timeout: float
) -> ProbeResult:
    url = site.endpoint.rstrip("/") + site.health_path
    problem = site.api_key_problem(environ)
    if problem:  # http.client would refuse the header, quoting the key
        return ProbeResult(site.name, None, (), problem)
    try:
        conn = client.connection(url, timeout, site_context(site), HTTPX_ALPN)
    except TlsFileError as exc:
        return ProbeResult(site.name, None, (), str(exc))
    try:
        times = _timed_gets(conn, url, _headers(site, environ, region), samples)
        return ProbeResult(site.name, statistics.median(times), tuple(times), None)
    except (ConnectFailed, OSError, http.client.HTTPException) as exc:
        return ProbeResult(site.name, None, (), describe_error(exc))
    finally:
        conn.close()


def measure_rtt(
    sites: Sequence[Site],
    region: str,
    environ: Mapping[str, str],
    samples: int = 5,
    timeout: float = 5.0,
    on_done: Callable[[], None] | None = None,
) -> list[ProbeResult]:
    """Median time of a small HTTP request to each site's health route, on a kept-alive
    connection (one warm-up request first, so connection set-up is not counted)."""
    from concurrent.futures import ThreadPoolExecutor

    client = EndpointClient()

    def one(site: Site) -> ProbeResult:
        try:
            return _probe_site(client, site, region, environ, samples, timeout)
        finally:
            if on_done:
                on_done()

    if not sites:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(sites))) as pool:
        return list(pool.map(one, sites))


@dataclass(frozen=True)
class LiveResult:
    site: str
    ok: bool
    status_code: int | None
    ttft_ms: float | None
    total_ms: float | None
    text: str
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "ok": self.ok,
            "status_code": self.status_code,
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 3),
            "total_ms": None if self.total_ms is None else round(self.total_ms, 3),
            "text": self.text,
            "error": self.error,
        }


LIVE_PROMPT = "Say hello from the grid."
LIVE_MAX_TOKENS = 16
CONNECT_TIMEOUT_S = 5.0  # at most; less when the deadline itself is shorter


@dataclass
class _Stream:
    """What a streamed completion has sent so far: kept when it stops half-way."""

    start: float
    ttft_ms: float | None = None
    parts: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _post_completion(
    conn: http.client.HTTPConnection, url: str, model: str, headers: Mapping[str, str], read_timeout: float
) -> http.client.HTTPResponse:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": LIVE_PROMPT}],
        "max_tokens": LIVE_MAX_TOKENS,
        "stream": True,
    }
    open_connection(conn, read_timeout)
    # encoded as httpx encoded it: compact, UTF-8
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    conn.request(
        "POST", request_path(url), body=data, headers={**headers, "content-type": "application/json"}
    )
    return conn.getresponse()


def _read_events(resp: http.client.HTTPResponse, stream: _Stream) -> None:
    """Read the server-sent events up to ``[DONE]`` (or the end), gathering the deltas' text and
    the time of the first one into ``stream``."""
    for line in _lines(resp):
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text.startswith("data:"):
            continue
        data = text[5:].strip()
        if data == "[DONE]":
            stream.done = True
            return
        try:
            delta = json.loads(data)["choices"][0].get("delta", {}).get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue
        if delta and stream.ttft_ms is None:
            stream.ttft_ms = (time.perf_counter() - stream.start) * 1000
        stream.parts.append(delta)


def _lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """The body's lines as they arrive. Raises ``http.client.IncompleteRead`` when the site
    closed before the end its framing announced (its last chunk, its Content-Length), as httpx
    raised RemoteProtocolError: ``readline`` would take a cut chunked body for its end."""
    rest, got = b"", 0
    while piece := resp.read1(65536):  # a chunked body cut short raises IncompleteRead here
        got += len(piece)
        *lines, rest = (rest + piece).split(b"\n")
        yield from lines
    if rest:
        yield rest
    if resp.length:  # a Content-Length not reached: read1 only stops at the close
        raise http.client.IncompleteRead(b"\0" * got, resp.length)


def _hung(site: Site, exc: ConnectFailed | TimeoutError, due: float, why: str, start: float) -> str:
    """What ``--live`` says of a site that sent nothing for the daemon's deadline."""
    what = "could not be reached" if isinstance(exc, ConnectFailed) else "sent nothing"
    return (
        f"site {site.name} {what} for {due:.3g} s ({why}), after "
        f"{(time.perf_counter() - start):.1f} s in all: it may be hung; check it with "
        f"`gridctl health`, or take it out of placement with `gridctl site drain {site.name}`"
    )


def live_completion(
    site: Site,
    model: str,
    region: str,
    environ: Mapping[str, str],
    prediction: Prediction | None = None,
    timeout: float | None = None,
) -> LiveResult:
    """A real small streaming chat completion: time to first token and total time. A site that
    sends nothing for the daemon's deadline (:func:`hung_after_s` of ``prediction``, or
    ``timeout``) is reported as probably hung, as the daemon would take it."""
    from gridctl.core.placement.predict import explain_deadline, hung_after_s

    due = timeout if timeout is not None else hung_after_s(prediction, streaming=True)
    why = "given" if timeout is not None else explain_deadline(prediction, streaming=True)
    url = site.endpoint.rstrip("/") + "/v1/chat/completions"
    problem = site.api_key_problem(environ)
    if problem:  # http.client would refuse the header, quoting the key
        return LiveResult(site.name, False, None, None, None, "", problem)
    try:
        conn = EndpointClient().connection(url, min(due, CONNECT_TIMEOUT_S), site_context(site), HTTPX_ALPN)
    except TlsFileError as exc:
        return LiveResult(site.name, False, None, None, None, "", str(exc))
    stream = _Stream(time.perf_counter())
    try:
        resp = _post_completion(conn, url, model, _headers(site, environ, region), due)
        if resp.status != 200:
            text = resp.read().decode("utf-8", "replace")
            return LiveResult(site.name, False, resp.status, None, None, "", text[:300])
        _read_events(resp, stream)
        total = (time.perf_counter() - stream.start) * 1000
        error = None if stream.done else "stream ended without [DONE]"
        return LiveResult(site.name, stream.done, 200, stream.ttft_ms, total, stream.text, error)
    except (ConnectFailed, TimeoutError) as exc:
        if isinstance(exc, ConnectFailed) and not isinstance(exc.__cause__, TimeoutError):
            return LiveResult(site.name, False, None, None, None, "", describe_error(exc))
        error = _hung(site, exc, due, why, stream.start)
        return LiveResult(site.name, False, None, stream.ttft_ms, None, stream.text, error)
    except (OSError, http.client.HTTPException) as exc:
        return LiveResult(site.name, False, None, stream.ttft_ms, None, stream.text, describe_error(exc))
    finally:
        conn.close()
