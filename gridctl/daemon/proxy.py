"""The request path: pick sites, forward, fail over before the first byte, stream back.

Rules (issue 6): the body goes to the site unchanged; hop-by-hop headers and
the client's Authorization never reach a site (each site's key comes from the
environment variable its inventory entry names); a site is tried at most once
per request; after a byte has reached the client there is no retry, and a cut
stream ends with an SSE error event; when every eligible site is full the
request waits in a bounded queue up to a deadline, then gets 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gridctl.daemon.affinity import prefix_hashes
from gridctl.net.client import Pool, Response, UpstreamError
from gridctl.net.server import DropConnection, Request, StreamingResponse, json_response
from gridctl.net.server import Response as Answer
from gridctl.placement.engine import Request as Placement

if TYPE_CHECKING:
    from gridctl.daemon.server import Daemon

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
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def error_json(
    status: int, message: str, kind: str, headers: tuple[tuple[str, str], ...] = (), **extra: Any
) -> Answer:
    return json_response({"error": {"message": message, "type": kind, **extra}}, status, headers)


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text whose prefix decides KV-cache affinity."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if isinstance(m, dict):
                content = m.get("content")
                if isinstance(content, str):
                    parts.append(f"{m.get('role', '')}:{content}\n")
                elif isinstance(content, list):  # content parts
                    parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return "".join(parts)
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and isinstance(value[0], str):
            return "\n".join(v for v in value if isinstance(v, str))
    return ""


class Proxy:
    def __init__(self, daemon: Daemon, pool: Pool) -> None:
        self.d = daemon
        self.pool = pool
        self.queued = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    # -- the inference path -----------------------------------------------------------

    async def handle(self, request: Request) -> Answer | StreamingResponse:
        d = self.d
        cfg = d.config
        raw = request.body  # the server answered 413 already when it was over the limit
        try:
            body = json.loads(raw)
            model = body["model"]
            if not isinstance(model, str) or not model:
                raise KeyError("model")
        except (ValueError, KeyError, TypeError):
            return error_json(400, "the body must be JSON with a 'model'", "invalid_request_error")
        headers = request.headers
        region = headers.get("x-grid-region") or cfg.region
        if not region:
            return error_json(
                400,
                "no client region: send x-grid-region or start the daemon with --region",
                "invalid_request_error",
            )
        try:
            slo = float(headers["x-grid-slo-ms"]) if "x-grid-slo-ms" in headers else None
        except ValueError:
            return error_json(400, "x-grid-slo-ms must be a number of milliseconds", "invalid_request_error")
        jurisdiction = headers.get("x-grid-jurisdiction")
        req = Placement(region, model, jurisdiction.upper() if jurisdiction else None, slo)
        state = d.state  # one snapshot for the whole request, even across a reload
        if region not in state.planner.regions:
            return error_json(400, f"unknown client region '{region}'", "invalid_request_error")
        hashes = prefix_hashes(prompt_text(body), cfg.affinity_block_chars)
        session = headers.get("x-grid-session")
        deadline = time.monotonic() + cfg.queue_timeout_s
        order = state.order(req, hashes, session, time.monotonic())
        if not order:
            if not state.eligible_ignoring_load(req, time.monotonic()):
                d.metrics.shed["no-eligible-site"] += 1
                decision = state.explain(req, time.monotonic())
                reasons = {e.site: list(e.reasons) for e in decision.excluded}
                return error_json(
                    503, f"no eligible site for {model} from {region}", "no_eligible_site", reasons=reasons
                )
            order = await self._wait_for_room(req, hashes, session, deadline)
            if not order:
                d.metrics.shed["all-sites-full"] += 1
                return error_json(
                    429,
                    "every eligible site is full; retry shortly",
                    "rate_limit_exceeded",
                    headers=(("retry-after", "1"),),
                )
        return await self._forward(request, req, order, hashes)

    async def _wait_for_room(
        self, req: Placement, hashes: list[bytes], session: str | None, deadline: float
    ) -> list[str]:
        if self.queued >= self.d.config.queue_max:
            return []
        loop = asyncio.get_running_loop()
        self.queued += 1
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append(fut)
                woken = False
                try:
                    async with asyncio.timeout(left):
                        await fut
                    woken = True
                except TimeoutError:
                    return []
                finally:
                    if not fut.done():
                        fut.cancel()
                    elif not woken:
                        # woken, but leaving (timed out or the client hung up) without the slot
                        # it was woken for: pass the wake-up on to the next in the queue
                        self._release()
                order = self.d.state.order(req, hashes, session, time.monotonic())
                if order:
                    return order
        finally:
            self.queued -= 1

    def _release(self) -> None:
        """A request to a site ended: wake one queued request to look for room."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _site_headers(self, request: Request, site_name: str, region: str) -> list[tuple[str, str]]:
        headers = request.headers
        named = headers.get("connection")  # headers the client marked as hop-by-hop
        drop = DROP_TO_SITE | {t.strip().lower() for t in named.split(",")} if named else DROP_TO_SITE
        out = [(k, v) for k, v in headers.items() if k not in drop and not k.startswith("x-grid-")]
        out.extend(self.d.state.sites[site_name].site.auth_headers(self.d.environ).items())
        out.append(("x-grid-client-region", region))  # lab sites simulate the distance; others ignore it
        return out

    async def _forward(
        self, request: Request, req: Placement, order: list[str], hashes: list[bytes]
    ) -> Answer | StreamingResponse:
        d = self.d
        cfg = d.config
        attempts: list[dict[str, str]] = []
        for n, name in enumerate(order):
            st = d.state.sites.get(name)
            if st is None:  # removed by a reload while we waited
                continue
            if n:
                d.metrics.failovers += 1
            url = st.site.endpoint.rstrip("/") + request.path
            start = time.monotonic()
            st.in_flight += 1
            st.requests += 1
            st.breaker.on_attempt(start)
            handed_off = False  # a streamed answer ends (and is accounted) after this returns
            try:
                try:
                    upstream = await self.pool.request(
                        "POST",
                        url,
                        self._site_headers(request, name, req.region),
                        request.body,
                        head_timeout=cfg.header_timeout_s,
                        connect_timeout=cfg.connect_timeout_s,
                    )
                except UpstreamError as exc:
                    self._failed(st, attempts, name, str(exc))
                    continue
                if upstream.status >= 500:
                    detail = (await _first_bytes(upstream, 200)).decode("utf-8", "replace")
                    self._failed(st, attempts, name, f"HTTP {upstream.status}: {detail}")
                    continue
                answer = await self._relay(upstream, st, name, start, hashes)
                handed_off = isinstance(answer, StreamingResponse)
                return answer
            except asyncio.CancelledError:  # the client hung up while we waited for the site
                self._account(st, name, start, None, hashes, 0, None, gone=True)
                raise
            finally:
                if not handed_off:
                    st.in_flight -= 1
                    self._release()
        d.metrics.requests[("none", "502")] += 1
        return error_json(
            502, "every site tried failed before answering", "upstream_error", attempts=attempts
        )

    def _failed(self, st: Any, attempts: list[dict[str, str]], name: str, error: str) -> None:
        st.failures += 1
        st.error_rate.add(1.0)
        st.breaker.on_failure(time.monotonic())
        self.d.metrics.requests[(name, "error")] += 1
        attempts.append({"site": name, "error": error})

    async def _relay(
        self, upstream: Response, st: Any, name: str, start: float, hashes: list[bytes]
    ) -> Answer | StreamingResponse:
        """The site's answer for the client: whole when its size is known and it is not a
        stream (one send), else relayed piece by piece as it arrives."""
        headers = [(k, v) for k, v in upstream.headers if k not in DROP_TO_CLIENT]
        headers.append(("x-grid-site", name))
        content_type = upstream.header("content-type", "") or ""
        if not upstream.has_body:  # 204, 304: nothing to relay, and no framing may be sent
            self._account(st, name, start, time.monotonic(), hashes, upstream.status, None)
            return Answer(upstream.status, b"", content_type, headers)
        streaming = "text/event-stream" in content_type
        if not streaming and upstream.content_length is not None:
            try:
                body = await upstream.read()
            except UpstreamError as exc:
                self._account(st, name, start, None, hashes, upstream.status, exc)
                return error_json(502, f"site {name} broke off its answer: {exc}", "upstream_error")
            self._account(st, name, start, time.monotonic(), hashes, upstream.status, None)
            return Answer(upstream.status, body, content_type, headers)
        relay = _Relay(self, upstream, st, name, start, hashes, streaming)
        return StreamingResponse(relay, upstream.status, content_type, headers)

    def _account(
        self,
        st: Any,
        name: str,
        start: float,
        first: float | None,
        hashes: list[bytes],
        status: int,
        cut: BaseException | None,
        gone: bool = False,
    ) -> None:
        d = self.d
        now = time.monotonic()
        if cut is not None:
            d.metrics.stream_cuts += 1
            st.breaker.on_failure(now)
            st.failures += 1
            st.error_rate.add(1.0)
        elif not gone:
            st.breaker.on_success()
            st.error_rate.add(0.0)
            st.latency_s.add(now - start)
            if first is not None:
                st.ttft_s.add(first - start)
            if hashes and status < 400:
                d.state.prefixes.record(name, hashes)
        label = "cut" if cut is not None else "client-gone" if gone else str(status)
        d.metrics.requests[(name, label)] += 1
        d.metrics.latency[name].observe(now - start)
        if first is not None:
            d.metrics.ttft[name].observe(first - start)


async def _first_bytes(upstream: Response, limit: int) -> bytes:
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


class _Relay:
    """A streamed answer's body, piece by piece as the site sends it. It owns the attempt
    from the moment the handler returns: whatever ends it (the last piece, the site breaking
    off, the client hanging up, the server closing) accounts for it once and frees the slot.

    A site that breaks off a stream is blamed (breaker, error rate) and the client gets an SSE
    error event; a body that is not a stream is cut off (the client sees it incomplete, never
    a short body that looks whole); a client that hangs up is not the site's fault."""

    def __init__(
        self,
        proxy: Proxy,
        upstream: Response,
        st: Any,
        name: str,
        start: float,
        hashes: list[bytes],
        streaming: bool,
    ) -> None:
        self.proxy, self.upstream, self.st, self.name = proxy, upstream, st, name
        self.start, self.hashes, self.streaming = start, hashes, streaming
        self.pieces = upstream.chunks()
        self.first: float | None = None
        self.ended = False  # the body is over (complete or cut)
        self.accounted = False

    def __aiter__(self) -> _Relay:
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
            if not self.streaming:
                raise DropConnection from exc
            event = {
                "error": {
                    "message": f"site {self.name} cut the stream: {exc}",
                    "type": "upstream_cut",
                    "site": self.name,
                }
            }
            return f"data: {json.dumps(event)}\n\n".encode()
        if self.first is None:
            self.first = time.monotonic()
        return piece

    async def aclose(self) -> None:
        """Called by the server when the response ends, however it ends."""
        with contextlib.suppress(Exception):
            await self.pieces.aclose()
        self.upstream.release()
        self._end(None, gone=not self.ended)

    def _end(self, cut: BaseException | None, gone: bool) -> None:
        if self.accounted:
            return
        self.accounted = True
        self.proxy._account(
            self.st, self.name, self.start, self.first, self.hashes, self.upstream.status, cut, gone
        )
        self.st.in_flight -= 1
        self.proxy._release()
