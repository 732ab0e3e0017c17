"""Between a site and its client: which headers pass, what an answer's body says of its
tokens, and a streamed answer relayed piece by piece.

Headers: hop-by-hop ones and the client's Authorization never reach a site, a site's
hop-by-hop ones and its ``x-grid-*`` never reach the client. Tokens: ``usage`` when the
site reports it, else (a stream) the Server-Sent Events that carry one
(:class:`OutputCounter`, fed bytes, no JSON parse). A stream (:class:`StreamRelay`) owns
its attempt once the handler returns, and ends it once, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import re
import time

from gridctl.daemon.attempt import Attempt, Ledger
from gridctl.daemon.openai_api import build_error
from gridctl.net.errors import UpstreamError
from gridctl.net.response import Response

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# request headers a site never sees (plus every x-grid-* constraint header)
DROP_TO_SITE = HOP_BY_HOP | {"host", "content-length", "authorization", "cookie", "expect"}
DROP_TO_CLIENT = HOP_BY_HOP | {"content-length", "content-type", "server", "date"}


# at most 9 digits: a site's "prompt_tokens": <5,000 digits> must not reach int()'s digit limit
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,9})(?!\d)')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,9})(?!\d)')
_ROLE = re.compile(rb'"role"\s*:')
_TEXT_CONTENT = re.compile(rb'"content"\s*:\s*"[^"]')
_EMPTY_DELTA = re.compile(rb'"delta"\s*:\s*\{\s*\}')
_EMPTY_TEXT = re.compile(rb'"text"\s*:\s*""')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_CARRY_MAX = 64 * 1024


def _last(pattern: re.Pattern[bytes], key: bytes, body: bytes) -> int | None:
    """The number of ``pattern``'s last match in ``body``, as ``findall(body)[-1]`` gives it,
    searched from the end (where a site puts its usage) for ``key``, the literal the pattern
    starts with: one match cannot hold the start of another, so the last place the pattern
    matches is findall's last match."""
    i = body.rfind(key)
    while i >= 0:
        m = pattern.match(body, i)
        if m is not None:
            return int(m.group(1))
        i = body.rfind(key, 0, i + len(key) - 1)
    return None


def completion_tokens(body: bytes) -> int | None:
    """``usage.completion_tokens`` of an answer's body, when the site reported it."""
    return _last(_COMPLETION_TOKENS, b'"completion_tokens"', body)


def prompt_tokens(body: bytes) -> int | None:
    """``usage.prompt_tokens`` of an answer's body, when the site reported it."""
    return _last(_PROMPT_TOKENS, b'"prompt_tokens"', body)


class OutputCounter:
    """A streamed answer's output tokens, counted as its pieces pass (no JSON parse).

    Server-Sent Events: the last ``usage.completion_tokens`` when the site sends one (vLLM
    with ``stream_options.include_usage``), else the ``data:`` events that carry a token:
    not ``[DONE]``, not the opening role-only event, not an empty final event, not the
    usage-only event. Another body: its ``usage`` when present. Pure: fed bytes."""

    __slots__ = ("sse", "events", "usage", "prompt", "_carry")

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.events = 0
        self.usage: int | None = None
        self.prompt: int | None = None  # usage.prompt_tokens, when the site sent it
        self._carry = b""

    def feed(self, piece: bytes) -> bool:
        """Count ``piece``; True when it holds the answer's first token."""
        data = self._carry + piece if self._carry else piece
        if not self.sse:
            tokens = completion_tokens(data)
            if tokens is not None:
                self.usage = tokens
                self.prompt = prompt_tokens(data)
            self._carry = data[-64:]
            return False
        lines = data.split(b"\n")
        last = lines.pop()
        self._carry = last if len(last) <= _CARRY_MAX else b""
        before = self.events
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            if b"completion_tokens" in payload:
                tokens = completion_tokens(payload)
                if tokens is not None:
                    self.usage = tokens
                    self.prompt = prompt_tokens(payload)
            if _NO_CHOICES.search(payload):
                continue  # the usage-only event
            if _ROLE.search(payload) and not _TEXT_CONTENT.search(payload):
                continue  # the opening event: the role, no token yet
            if _EMPTY_DELTA.search(payload) or (
                _EMPTY_TEXT.search(payload) and b'"finish_reason":null' not in payload
            ):
                continue  # the final event: a finish reason, no token
            self.events += 1
        return before == 0 and self.events > 0

    def tokens(self) -> int | None:
        if self.usage is not None:
            return self.usage
        return self.events if self.sse and self.events else None


def site_headers(client: dict[str, str], auth: dict[str, str], region: str) -> list[tuple[str, str]]:
    """What a site is sent of a client's request headers (none hop-by-hop, none the client's
    Connection header names, no x-grid-*), its own key's headers and the client's region."""
    named = client.get("connection")  # headers the client marked as hop-by-hop
    drop = DROP_TO_SITE | {t.strip().lower() for t in named.split(",")} if named else DROP_TO_SITE
    out = [(k, v) for k, v in client.items() if k not in drop and not k.startswith("x-grid-")]
    out.extend(auth.items())
    out.append(("x-grid-client-region", region))  # lab sites simulate the distance; others ignore it
    return out


def client_headers(site: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A site's headers that its client may see: no hop-by-hop one, none its Connection header
    names, and no x-grid-* (those are the daemon's to say: x-grid-site, x-grid-slo...)."""
    drop = DROP_TO_CLIENT
    named = [v for k, v in site if k == "connection"]
    if named:
        drop = drop | {t.strip().lower() for v in named for t in v.split(",")}
    return [(k, v) for k, v in site if k not in drop and not k.startswith("x-grid-")]


async def first_bytes(upstream: Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body (an error's detail), never waiting for the rest of it."""
    got = bytearray()
    pieces = upstream.chunks()
    try:
        async for piece in pieces:
            got += piece
            if len(got) >= limit:
                break
    except UpstreamError as exc:
        got += f" (its body broke off: {exc})".encode()
    finally:
        await pieces.aclose()
        upstream.release()
    return bytes(got[: limit + 200])


class StreamRelay:
    """A streamed answer's body, piece by piece as the site sends it. It owns the attempt
    from the moment the handler returns: whatever ends it (the last piece, the site breaking
    off, the client hanging up, the server closing) accounts for it once, frees the slot and
    gives back the breaker's trial it holds.

    A site that breaks off a stream is blamed (breaker, error rate) and the client gets an SSE
    error event, on a line of its own even when the cut came inside an event; a client that
    hangs up is not the site's fault."""

    def __init__(self, ledger: Ledger, upstream: Response, attempt: Attempt) -> None:
        self.ledger, self.upstream, self.attempt = ledger, upstream, attempt
        self.name = attempt.name
        self.pieces = upstream.chunks()
        self.counter = OutputCounter(True)
        self.tail = b"\n\n"  # the end of what was relayed: an event is complete after a blank line
        self.first: float | None = None  # the first byte
        self.first_token: float | None = None  # the first token event (a stream's TTFT)
        self.ended = False  # the body is over (complete or cut)
        self.accounted = False

    def __aiter__(self) -> StreamRelay:
        return self

    async def __anext__(self) -> bytes:
        if self.ended:
            self._end(None, gone=False)
            raise StopAsyncIteration
        try:
            piece = await self.pieces.__anext__()
        except StopAsyncIteration:
            self.ended = True
            self._end(None, gone=False)
            raise
        except UpstreamError as exc:
            self.ended = True
            self._end(exc, gone=False)
            event = build_error(f"site {self.name} cut the stream: {exc}", "upstream_cut", site=self.name)
            end = b"" if self.tail.endswith(b"\n\n") else b"\n\n"  # close the event it cut
            return end + f"data: {json.dumps(event)}\n\n".encode()
        if piece:
            self.tail = (self.tail + piece)[-2:]
        now = time.monotonic()
        if self.first is None:
            self.first = now
        if self.counter.feed(piece) and self.first_token is None:
            self.first_token = now
        return piece

    async def aclose(self) -> None:
        """Called by the server when the response ends, however it ends (even cancelled)."""
        try:
            with contextlib.suppress(Exception):
                await self.pieces.aclose()
        finally:
            self.upstream.release()
            self._end(None, gone=not self.ended)

    def _end(self, cut: BaseException | None, gone: bool) -> None:
        if self.accounted:
            return
        self.accounted = True
        a = self.attempt
        try:
            c = self.counter
            self.ledger.account(
                a, self.first, self.upstream.status, cut, gone, c.tokens(), self.first_token, c.prompt
            )
        finally:
            if a.trace is not None:
                a.trace.end(self.upstream.status)
            a.end()
