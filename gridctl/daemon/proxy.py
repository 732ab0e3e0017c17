"""The request path: pick sites, forward, fail over before the first byte, stream back.

Rules (issue 6): the body goes to the site unchanged; hop-by-hop headers and
the client's Authorization never reach a site (each site's key comes from the
environment variable its inventory entry names); a site is tried at most once
per request; after a byte has reached the client there is no retry, and a cut
stream ends with an SSE error event; when every eligible site is full the
request waits in a bounded queue up to a deadline, then gets 429.

Placement (issue 11): the request's shape (prompt tokens from its text, output
tokens from ``max_tokens`` / ``max_completion_tokens``, else the 90th
percentile of the model's completed answers, else the default; none for an
embedding) and the prompt tokens each site probably holds (its prefix-index
match) go to the one decision, :meth:`Planner.order`. Every answer carries
``x-grid-predicted-ms`` (the site's predicted end to end when the request was
sent). When no site is predicted to meet the SLO, the request still goes to the
fastest (``x-grid-slo: expected-miss``, counted in
``gridctl_slo_expected_miss_total``), unless the policy is strict
(``x-grid-slo-policy: strict`` or ``daemon run --slo-policy strict``): then it
gets 429 with Retry-After, and fails over only to sites predicted to meet it.
A request is never cut or failed over for being slow. Each answer's timing and
output tokens (``usage``, else the stream's token events) calibrate its site.

Deadlines (issue 13): a site that sends nothing is taken for hung after
:func:`site_deadline_s` (a multiple of its predicted time, with a floor; a fixed
``--head-timeout`` instead): counted as the site's failure, the request fails
over. A stream's deadline runs to its first body byte, so a site that sends its
head and then hangs is failed over too, before any byte reached the client. An
answer that is not streamed is held whole up to ``max_answer_bytes``: over it, 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gridctl.core.placement.decision import EMPTY, SLO_MARGIN, Ranking
from gridctl.core.placement.decision import Request as Placement
from gridctl.core.placement.predict import (
    OutputTokens,
    Prediction,
    Shape,
    estimate_shape,
    explain_deadline,
    hung_after_s,
    prompt_text,
)
from gridctl.core.placement.signals import SiteSignals
from gridctl.daemon.config import SLO_POLICIES, DaemonConfig
from gridctl.daemon.metrics import Metrics
from gridctl.daemon.openai_api import build_error, error_json, model_not_found, parse_body
from gridctl.daemon.state import GridState, SiteState
from gridctl.net.client import AnswerTooLarge, Pool, Response, UpstreamError, UpstreamTimeout
from gridctl.net.server import Request, StreamingResponse
from gridctl.net.server import Response as Answer

if TYPE_CHECKING:
    from gridctl.daemon.accesslog import Trace

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


# at most 9 digits: a site's "prompt_tokens": <5,000 digits> must not reach int()'s digit limit
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,9})(?!\d)')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,9})(?!\d)')
_ROLE = re.compile(rb'"role"\s*:')
_TEXT_CONTENT = re.compile(rb'"content"\s*:\s*"[^"]')
_EMPTY_DELTA = re.compile(rb'"delta"\s*:\s*\{\s*\}')
_EMPTY_TEXT = re.compile(rb'"text"\s*:\s*""')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_CARRY_MAX = 64 * 1024


def completion_tokens(body: bytes) -> int | None:
    """``usage.completion_tokens`` of an answer's body, when the site reported it."""
    found = _COMPLETION_TOKENS.findall(body)
    return int(found[-1]) if found else None


def prompt_tokens(body: bytes) -> int | None:
    """``usage.prompt_tokens`` of an answer's body, when the site reported it."""
    found = _PROMPT_TOKENS.findall(body)
    return int(found[-1]) if found else None


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


def _parses(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        return False
    return True


class _BrokeOff(Exception):
    """A site's whole (non-streamed) answer ended before its end: a failure of that site."""


class Attempt:
    """One try of a request at one site: what it was sent with, for its accounting, and the
    breaker's trial it owns (its number, when it is the half-open site's trial), given back
    however the attempt ends (:meth:`Breaker.on_end`)."""

    __slots__ = (
        "st", "sig", "name", "model", "start", "prediction", "chain", "miss", "shape", "trial", "trace",
    )  # fmt: skip

    def __init__(
        self,
        st: SiteState,
        sig: SiteSignals,
        name: str,
        model: str,
        start: float,
        prediction: Prediction | None,
        chain: list[tuple[bytes, int]],
        miss: bool,
        shape: Shape | None = None,
    ) -> None:
        self.st, self.sig, self.name, self.model, self.start = st, sig, name, model, start
        self.prediction, self.chain, self.miss, self.shape = prediction, chain, miss, shape
        self.trial: int | None = None
        self.trace: Trace | None = None  # the request's, for the access log

    def headers(self) -> list[tuple[str, str]]:
        out = [("x-grid-site", self.name)]
        if self.prediction is not None:
            out.append(("x-grid-predicted-ms", str(round(self.prediction.e2e_ms))))
        if self.miss:
            out.append(("x-grid-slo", "expected-miss"))
        return out


class Proxy:
    """The inference path. It gets what it uses: ``book`` (the current :class:`GridState`:
    sites, placement, prefix index; a reload replaces it), the metrics, the client pool,
    the configuration and the environment (the sites' API keys)."""

    def __init__(
        self,
        book: Callable[[], GridState],
        metrics: Metrics,
        pool: Pool,
        config: DaemonConfig,
        environ: Mapping[str, str],
        outputs: OutputTokens | None = None,
    ) -> None:
        self.book = book
        self.metrics = metrics
        self.pool = pool
        self.config = config
        self.environ = environ
        self.outputs = outputs if outputs is not None else OutputTokens()
        self.queued = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    # -- the inference path -----------------------------------------------------------

    async def handle(self, request: Request, trace: Trace | None = None) -> Answer | StreamingResponse:
        cfg = self.config
        raw = request.body  # the server answered 413 already when it was over the limit
        parsed = parse_body(raw)
        if isinstance(parsed, Answer):
            return parsed
        body, model = parsed
        if trace is not None:
            trace.model = model
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
            if slo is not None and not (math.isfinite(slo) and slo > 0):
                raise ValueError(slo)
        except ValueError:
            return error_json(
                400, "x-grid-slo-ms must be a positive number of milliseconds", "invalid_request_error"
            )
        policy = headers.get("x-grid-slo-policy", cfg.slo_policy).strip().lower()
        if policy not in SLO_POLICIES:
            return error_json(
                400, f"x-grid-slo-policy must be one of {', '.join(SLO_POLICIES)}", "invalid_request_error"
            )
        jurisdiction = headers.get("x-grid-jurisdiction")
        req = Placement(region, model, jurisdiction.upper() if jurisdiction else None, slo)
        state = self.book()  # one snapshot for the whole request, even across a reload
        if region not in state.planner.regions:
            return error_json(400, f"unknown client region '{region}'", "invalid_request_error")
        if model not in state.models:  # 404, not retried; a known model with no site now is 503
            return model_not_found(model, state.models)
        text = prompt_text(body)
        chain = state.prompt_chain(text)
        embedding = request.path == "/v1/embeddings"
        shape = estimate_shape(body, text, embedding, self.outputs.estimate(model))
        cached = state.cached_tokens(model, chain)
        session = headers.get("x-grid-session") or None
        deadline = time.monotonic() + cfg.queue_timeout_s

        def decide() -> Ranking:
            return state.order(req, shape, cached, session, time.monotonic())

        ranking = decide()
        if not ranking.sites:
            if not state.eligible_ignoring_load(req, shape, time.monotonic()):
                self.metrics.shed["no-eligible-site"] += 1
                decision = state.explain(req, shape, cached, time.monotonic())
                reasons = {e.site: list(e.reasons) for e in decision.excluded}
                return error_json(
                    503,
                    f"no eligible site for {model} from {region}",
                    "no_eligible_site",
                    headers=(("retry-after", str(max(1, math.ceil(cfg.probe_interval_s)))),),
                    code="no_eligible_site",
                    reasons=reasons,
                )
            ranking = await self._wait_for_room(decide, deadline)
            if not ranking.sites:
                self.metrics.shed["all-sites-full"] += 1
                return error_json(
                    429,
                    "every eligible site is full; retry shortly",
                    "rate_limit_exceeded",
                    headers=(("retry-after", "1"),),
                )
        # strict judges only a request whose size it knows (max_tokens, or what the model's answers
        # have been): before any evidence, the default size is a guess, and the request is served
        if policy == "strict" and shape.output_source != "default":
            if ranking.feasible == 0:
                if not state.feasible_when_free(req, shape, cached, time.monotonic()):
                    self.metrics.shed["slo-unattainable"] += 1
                    return self._refuse_miss(req, ranking, state.planner.default_slo_ms, busy=False)
                # the sites that could meet it are only busy with our own requests: wait for one
                ranking = await self._wait_for_room(decide, deadline, feasible=True)
                if ranking.feasible == 0:
                    self.metrics.shed["slo-expected-miss"] += 1
                    return self._refuse_miss(req, ranking, state.planner.default_slo_ms, busy=True)
            order = list(ranking.sites[: ranking.feasible])  # fail over only to sites that can meet it
        else:
            order = list(ranking.sites)
        if trace is not None:
            trace.slo_ms = slo or state.planner.default_slo_ms
        streaming = body.get("stream") is True
        return await self._forward(
            request, state, req, shape, cached, order, ranking.feasible, chain, streaming, trace
        )

    def _refuse_miss(self, req: Placement, ranking: Ranking, default_slo_ms: float, busy: bool) -> Answer:
        """Strict: 429 with Retry-After when the sites that could meet the SLO are busy; 400 when
        no site could meet it even free (retrying would not help)."""
        slo = req.slo_ms or default_slo_ms
        budget = slo * (1.0 - SLO_MARGIN)
        extra: dict[str, Any] = {"slo_ms": slo}
        if ranking.sites:
            best, ms = ranking.sites[0], ranking.predicted_ms[0]
            fastest = f"the fastest, {best}, is predicted at {ms:.0f} ms"
            extra.update(site=best, predicted_ms=round(ms, 1))
        else:
            fastest = "every site that could meet it is full"
        within = f"a site must be predicted within {budget:g} ms, the SLO less its {SLO_MARGIN:.0%} margin"
        if busy:
            return error_json(
                429,
                f"no site is predicted to meet the {slo:g} ms SLO for {req.model} from {req.region} "
                f"now ({fastest}; {within}): the sites that could are busy; retry shortly, or send "
                "x-grid-slo-policy: best-effort to be served anyway",
                "rate_limit_exceeded",
                headers=(("retry-after", "1"),),
                code="slo_expected_miss",
                **extra,
            )
        return error_json(
            400,
            f"no site can meet the {slo:g} ms SLO for {req.model} from {req.region}, even idle "
            f"({fastest}; {within}): allow more with x-grid-slo-ms, ask for fewer tokens "
            "(max_tokens), or send x-grid-slo-policy: best-effort to be served anyway",
            "invalid_request_error",
            code="slo_unattainable",
            **extra,
        )

    async def _wait_for_room(
        self, decide: Callable[[], Ranking], deadline: float, feasible: bool = False
    ) -> Ranking:
        """Wait (bounded) until a slot frees and the decision has a site (``feasible``: a site
        predicted to meet the SLO); EMPTY on the deadline or a full queue."""
        if self.queued >= self.config.queue_max:
            return EMPTY
        loop = asyncio.get_running_loop()
        self.queued += 1
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return EMPTY
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append(fut)
                woken = False
                try:
                    async with asyncio.timeout(left):
                        await fut
                    woken = True
                except TimeoutError:
                    return EMPTY
                finally:
                    if not fut.done():
                        fut.cancel()
                    elif not woken:
                        # woken, but leaving (timed out or the client hung up) without the slot
                        # it was woken for: pass the wake-up on to the next in the queue
                        self._release()
                ranking = decide()
                if ranking.feasible if feasible else ranking.sites:
                    return ranking
        finally:
            self.queued -= 1

    def _release(self) -> None:
        """A request to a site ended: wake one queued request to look for room."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _site_headers(self, request: Request, st: SiteState, region: str) -> list[tuple[str, str]]:
        headers = request.headers
        named = headers.get("connection")  # headers the client marked as hop-by-hop
        drop = DROP_TO_SITE | {t.strip().lower() for t in named.split(",")} if named else DROP_TO_SITE
        out = [(k, v) for k, v in headers.items() if k not in drop and not k.startswith("x-grid-")]
        out.extend(st.site.auth_headers(self.environ).items())
        out.append(("x-grid-client-region", region))  # lab sites simulate the distance; others ignore it
        return out

    async def _forward(
        self,
        request: Request,
        state: GridState,
        req: Placement,
        shape: Shape,
        cached: Mapping[str, int],
        order: list[str],
        feasible: int,
        chain: list[tuple[bytes, int]],
        streaming: bool = False,
        trace: Trace | None = None,
    ) -> Answer | StreamingResponse:
        cfg = self.config
        attempts: list[dict[str, str]] = []
        for n, name in enumerate(order):
            st = state.sites.get(name)
            sig = st.signals.get(req.model) if st is not None else None
            if st is None or sig is None:  # removed by a reload while we waited
                continue
            if attempts:  # counted by the site that failed
                self.metrics.failovers[attempts[-1]["site"]] += 1
            url = st.site.endpoint.rstrip("/") + request.path
            start = time.monotonic()
            prediction = state.predict(req, shape, name, cached.get(name, 0), start)
            attempt = Attempt(st, sig, name, req.model, start, prediction, chain, n >= feasible, shape)
            attempt.trace = trace
            if trace is not None:
                trace.tried.append(name)
            sig.in_flight += 1
            st.requests += 1
            attempt.trial = st.breaker.on_attempt(start)
            handed_off = False  # a streamed answer ends (and is accounted) after this returns
            due = site_deadline_s(cfg, prediction, streaming)
            try:
                try:
                    upstream = await self.pool.request(
                        "POST",
                        url,
                        self._site_headers(request, st, req.region),
                        request.body,
                        head_timeout=due,
                        read_timeout=cfg.header_timeout_s,
                        connect_timeout=cfg.connect_timeout_s,
                        tls=st.tls,
                    )
                    sse = "text/event-stream" in (upstream.header("content-type", "") or "")
                    if (streaming or sse) and upstream.status < 500 and upstream.has_body:
                        # a stream is due by its first byte: until then, the next site may answer
                        await upstream.wait_body(max(0.0, start + due - time.monotonic()))
                except UpstreamTimeout:
                    self._failed(st, attempts, name, _hung_message(name, due, cfg, prediction, streaming))
                    continue
                except UpstreamError as exc:
                    self._failed(st, attempts, name, str(exc))
                    continue
                if upstream.status >= 500:
                    detail = (await _first_bytes(upstream, 200)).decode("utf-8", "replace")
                    self._failed(st, attempts, name, f"HTTP {upstream.status}: {detail}")
                    continue
                try:
                    answer = await self._relay(upstream, attempt, streaming, start + due)
                except _BrokeOff as exc:  # nothing reached the client yet: the next site may answer
                    self._failed(st, attempts, name, str(exc))
                    continue
                handed_off = isinstance(answer, StreamingResponse)
                return answer
            except asyncio.CancelledError:  # the client hung up while we waited for the site
                self._account(attempt, None, 0, None, gone=True)
                raise
            finally:
                if not handed_off:  # ended here, however (answer, failure, client gone, error)
                    st.breaker.on_end(attempt.trial)
                    sig.in_flight -= 1
                    self._release()
        return error_json(
            502, "every site tried failed before answering", "upstream_error", attempts=attempts
        )

    def _failed(self, st: SiteState, attempts: list[dict[str, str]], name: str, error: str) -> None:
        st.failures += 1
        st.error_rate.add(1.0)
        st.breaker.on_failure(time.monotonic())
        self.metrics.site_failures[name] += 1
        attempts.append({"site": name, "error": error})

    async def _relay(
        self, upstream: Response, attempt: Attempt, streaming: bool, deadline: float
    ) -> Answer | StreamingResponse:
        """The site's answer for the client: a stream (the request asked for one, or the site
        sends Server-Sent Events) relayed piece by piece as it arrives; any other answer read
        whole, up to ``max_answer_bytes`` whatever its framing (Content-Length, chunked or to
        the close) and by ``deadline`` (the hung-site deadline of its head: a body that stalls
        after its head is as hung), then sent at once. A whole answer that breaks off, stalls
        or, ending at a close, does not parse as the JSON it says it is raises
        :class:`_BrokeOff`: no byte of it has reached the client, so the request fails over."""
        headers = _client_headers(upstream.headers)
        if upstream.status >= 400:  # the site's own error: not an answer that missed the SLO
            attempt.miss = False
        headers.extend(attempt.headers())
        if attempt.miss:  # the same answers as the x-grid-slo header
            self.metrics.expected_miss[attempt.model] += 1
        content_type = upstream.header("content-type", "") or ""
        if not upstream.has_body:  # 204, 304: nothing to relay, and no framing may be sent
            self._account(attempt, time.monotonic(), upstream.status, None)
            return Answer(upstream.status, b"", content_type, headers)
        if streaming or "text/event-stream" in content_type:
            return StreamingResponse(_Relay(self, upstream, attempt), upstream.status, content_type, headers)
        try:
            body = await upstream.read(limit=self.config.max_answer_bytes, deadline=deadline)
        except AnswerTooLarge as exc:  # neither a success nor the site's failure: not accounted
            self.metrics.too_large[attempt.name] += 1
            return error_json(
                502,
                f"site {attempt.name}'s answer is too large to relay ({exc}); ask for less (max_tokens,"
                ' fewer inputs), stream it ("stream": true), or raise the daemon\'s --max-answer',
                "upstream_error",
                code="answer_too_large",
            )
        except UpstreamTimeout as exc:
            due = max(0.0, deadline - attempt.start)
            raise _BrokeOff(
                f"sent the head of its answer but not the whole of it within {due:g} s ({exc})"
            ) from None
        except UpstreamError as exc:
            raise _BrokeOff(f"broke off its answer: {exc}") from None
        if upstream.ends_at_close and "json" in content_type and not _parses(body):
            raise _BrokeOff("closed its answer before the end of its JSON (a clean close, no length)")
        tokens, prompt = completion_tokens(body), prompt_tokens(body)
        self._account(attempt, time.monotonic(), upstream.status, None, tokens=tokens, prompt=prompt)
        return Answer(upstream.status, body, content_type, headers)

    def _account(
        self,
        attempt: Attempt,
        first: float | None,
        status: int,
        cut: BaseException | None,
        gone: bool = False,
        tokens: int | None = None,
        first_token: float | None = None,
        prompt: int | None = None,
    ) -> None:
        """One attempt ended: breaker, moving averages, prefix index, metrics, and what its
        timing teaches the site's calibration (answers that completed with a 2xx only)."""
        st, name, start = attempt.st, attempt.name, attempt.start
        metrics = self.metrics
        now = time.monotonic()
        if cut is not None:
            metrics.stream_cuts[(name, attempt.model)] += 1
            st.breaker.on_failure(now)
            st.failures += 1
            st.error_rate.add(1.0)
        elif not gone:
            st.breaker.on_success()
            st.error_rate.add(0.0)
            st.latency_s.add(now - start)
            if first is not None:
                st.ttft_s.add(first - start)
            if status < 400:
                if attempt.chain:
                    self.book().prefixes.record(name, attempt.model, attempt.chain)
                shape = attempt.shape
                if tokens is not None and shape is not None and shape.output_source == "max_tokens":
                    tokens = min(tokens, shape.output_tokens)  # a site cannot have said more than asked
                elif tokens is not None and shape is not None and shape.output_tokens > 0:
                    # only answers to requests that set no limit say how long answers run unasked
                    self.outputs.record(attempt.model, tokens)
                if shape is not None and shape.output_tokens == 0:
                    tokens = 0  # an embedding: no decode step
                # an answer whose length is unknown says nothing about the time per token
                if attempt.prediction is not None and tokens is not None and 200 <= status < 300:
                    ttft_ms = (first_token - start) * 1000.0 if first_token is not None else None
                    st.learn(attempt.model, attempt.prediction, now, ttft_ms, (now - start) * 1000.0, tokens)
        if attempt.trace is not None:  # the request's counters and log line, when it ends
            outcome = "cut" if cut is not None else "client-gone" if gone else "ok"
            attempt.trace.answered(name, first_token, prompt, tokens, outcome, attempt.miss)


def site_deadline_s(cfg: DaemonConfig, prediction: Prediction | None, streaming: bool) -> float:
    """Seconds a site gets to send its answer's first byte (a stream's first body byte) before
    it is taken for hung: ``--head-timeout`` when given, else from the prediction."""
    if cfg.head_timeout_s is not None:
        return cfg.head_timeout_s
    return hung_after_s(prediction, streaming, cfg.hung_factor, cfg.hung_floor_s, cfg.header_timeout_s)


def _hung_message(
    name: str, due: float, cfg: DaemonConfig, prediction: Prediction | None, streaming: bool
) -> str:
    why = (
        "--head-timeout"
        if cfg.head_timeout_s is not None
        else explain_deadline(prediction, streaming, cfg.hung_factor, cfg.hung_floor_s)
    )
    what = "first byte of its stream" if streaming else "answer's head"
    return f"site {name} sent no {what} within {due:.3g} s ({why}): taken for hung, failed over"


def _client_headers(site: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A site's headers that its client may see: no hop-by-hop one, none its Connection header
    names, and no x-grid-* (those are the daemon's to say: x-grid-site, x-grid-slo...)."""
    drop = DROP_TO_CLIENT
    named = [v for k, v in site if k == "connection"]
    if named:
        drop = drop | {t.strip().lower() for v in named for t in v.split(",")}
    return [(k, v) for k, v in site if k not in drop and not k.startswith("x-grid-")]


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
    off, the client hanging up, the server closing) accounts for it once, frees the slot and
    gives back the breaker's trial it holds.

    A site that breaks off a stream is blamed (breaker, error rate) and the client gets an SSE
    error event, on a line of its own even when the cut came inside an event; a client that
    hangs up is not the site's fault."""

    def __init__(self, proxy: Proxy, upstream: Response, attempt: Attempt) -> None:
        self.proxy, self.upstream, self.attempt = proxy, upstream, attempt
        self.name = attempt.name
        self.pieces = upstream.chunks()
        self.counter = OutputCounter(True)
        self.tail = b"\n\n"  # the end of what was relayed: an event is complete after a blank line
        self.first: float | None = None  # the first byte
        self.first_token: float | None = None  # the first token event (a stream's TTFT)
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
            self.proxy._account(
                a, self.first, self.upstream.status, cut, gone, c.tokens(), self.first_token, c.prompt
            )
        finally:
            if a.trace is not None:
                a.trace.end(self.upstream.status)
            a.st.breaker.on_end(a.trial)
            a.sig.in_flight -= 1
            self.proxy._release()
