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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from gridctl.daemon.affinity import prefix_hashes
from gridctl.placement.engine import Request

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
DROP_TO_CLIENT = HOP_BY_HOP | {"content-length", "content-encoding", "server", "date"}
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def error_json(status: int, message: str, kind: str, **extra: Any) -> web.Response:
    body = {"error": {"message": message, "type": kind, **extra}}
    return web.json_response(body, status=status)


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
    def __init__(self, daemon: Daemon, client: ClientSession) -> None:
        self.d = daemon
        self.client = client
        self.queued = 0
        self.slot_freed = asyncio.Condition()

    # -- the inference path -----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        d = self.d
        cfg = d.config
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_json(413, f"request body over {cfg.max_body_bytes} bytes", "invalid_request_error")
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
        req = Request(region, model, jurisdiction.upper() if jurisdiction else None, slo)
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
                resp = error_json(429, "every eligible site is full; retry shortly", "rate_limit_exceeded")
                resp.headers["Retry-After"] = "1"
                return resp
        return await self._forward(request, raw, req, order, hashes)

    async def _wait_for_room(
        self, req: Request, hashes: list[bytes], session: str | None, deadline: float
    ) -> list[str]:
        if self.queued >= self.d.config.queue_max:
            return []
        self.queued += 1
        try:
            async with self.slot_freed:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return []
                    try:
                        await asyncio.wait_for(self.slot_freed.wait(), timeout=left)
                    except TimeoutError:
                        return []
                    order = self.d.state.order(req, hashes, session, time.monotonic())
                    if order:
                        return order
        finally:
            self.queued -= 1

    async def _release(self) -> None:
        async with self.slot_freed:
            self.slot_freed.notify(1)

    def _site_headers(self, request: web.Request, site_name: str, region: str) -> dict[str, str]:
        out = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in DROP_TO_SITE and not k.lower().startswith("x-grid-")
        }
        out.update(self.d.state.sites[site_name].site.auth_headers(self.d.environ))
        out["x-grid-client-region"] = region  # lab sites simulate the distance; others ignore it
        return out

    async def _forward(
        self, request: web.Request, raw: bytes, req: Request, order: list[str], hashes: list[bytes]
    ) -> web.StreamResponse:
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
            try:
                try:
                    upstream = await self.client.post(
                        url,
                        data=raw,
                        headers=self._site_headers(request, name, req.region),
                        timeout=ClientTimeout(
                            sock_connect=cfg.connect_timeout_s, sock_read=cfg.header_timeout_s
                        ),
                        allow_redirects=False,
                    )
                except (ClientError, TimeoutError, OSError) as exc:
                    self._failed(st, attempts, name, f"{type(exc).__name__}: {exc}")
                    continue
                if upstream.status >= 500:
                    detail = (await upstream.read())[:200].decode("utf-8", "replace")
                    upstream.release()
                    self._failed(st, attempts, name, f"HTTP {upstream.status}: {detail}")
                    continue
                return await self._relay(request, upstream, st, name, start, hashes)
            finally:
                st.in_flight -= 1
                await self._release()
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
        self,
        request: web.Request,
        upstream: Any,
        st: Any,
        name: str,
        start: float,
        hashes: list[bytes],
    ) -> web.StreamResponse:
        """Pass the site's answer to the client. A site that breaks off is blamed (breaker,
        error rate, an SSE error event); a client that hangs up is not the site's fault."""
        headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in DROP_TO_CLIENT]
        streaming = "text/event-stream" in upstream.headers.get("content-type", "")
        first: float | None = None
        cut: BaseException | None = None  # the site broke off
        gone = False  # the client hung up
        if not streaming and upstream.content_length is not None:
            # a whole answer of known size: one send instead of a chunked relay
            try:
                body = await upstream.read()
                first = time.monotonic()
            except (ClientError, TimeoutError, OSError) as exc:
                cut = exc
            finally:
                upstream.release()
            if cut is None:
                resp: web.StreamResponse = web.Response(status=upstream.status, body=body)
                for k, v in headers:
                    resp.headers.add(k, v)
                resp.headers["x-grid-site"] = name
                self._account(st, name, start, first, hashes, upstream.status, None)
                return resp
            self._account(st, name, start, first, hashes, upstream.status, cut)
            return error_json(
                502, f"site {name} broke off its answer: {type(cut).__name__}", "upstream_error"
            )
        resp = web.StreamResponse(status=upstream.status)
        for k, v in headers:
            resp.headers.add(k, v)
        resp.headers["x-grid-site"] = name
        try:
            try:
                await resp.prepare(request)
            except (ConnectionError, RuntimeError, OSError):
                gone = True
            while not gone:
                try:
                    chunk = await upstream.content.readany()
                except (ClientError, TimeoutError, OSError) as exc:
                    cut = exc
                    break
                if not chunk:
                    break
                if first is None:
                    first = time.monotonic()
                try:
                    await resp.write(chunk)
                except (ConnectionError, RuntimeError, OSError):
                    gone = True
            if cut is not None and streaming and not gone:
                event = {
                    "error": {
                        "message": f"site {name} cut the stream: {type(cut).__name__}",
                        "type": "upstream_cut",
                        "site": name,
                    }
                }
                with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                    await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        finally:
            upstream.release()
        self._account(st, name, start, first, hashes, upstream.status, cut, gone)
        if not gone:
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                await resp.write_eof()
        return resp

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
