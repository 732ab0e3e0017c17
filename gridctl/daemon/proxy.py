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
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gridctl.core.placement.decision import Ranking
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
from gridctl.core.sitestate import GridState
from gridctl.daemon.accesslog import Trace
from gridctl.daemon.admission import RoomQueue, parse_placement, refuse_miss
from gridctl.daemon.attempt import Attempt, Ledger
from gridctl.daemon.config import SLO_POLICIES, DaemonConfig
from gridctl.daemon.metrics import Metrics
from gridctl.daemon.openai_api import error_json, model_not_found, parse_body
from gridctl.daemon.relay import (
    StreamRelay,
    client_headers,
    completion_tokens,
    first_bytes,
    prompt_tokens,
    site_headers,
)
from gridctl.net.client import Pool
from gridctl.net.errors import AnswerTooLarge, UpstreamError, UpstreamTimeout
from gridctl.net.messages import Request as HttpRequest
from gridctl.net.messages import Response as Answer
from gridctl.net.messages import StreamingResponse
from gridctl.net.response import Response

INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def _parses(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        return False
    return True


class _BrokeOff(Exception):
    """A site failed before any byte reached the client (a 5xx, or a whole answer that ended
    before its end): a failure of that site; the next one may answer."""


class Proxy:
    """The inference path. It gets what it uses: ``book`` (the current :class:`GridState`:
    sites, placement, prefix index; a reload replaces it), the metrics, the client pool,
    the configuration, the environment (the sites' API keys), the queue for room and the
    models' observed output lengths (the daemon reads both too: status, metrics, route)."""

    def __init__(
        self,
        book: Callable[[], GridState],
        metrics: Metrics,
        pool: Pool,
        config: DaemonConfig,
        environ: Mapping[str, str],
        room: RoomQueue,
        outputs: OutputTokens,
    ) -> None:
        self.book = book
        self.metrics = metrics
        self.pool = pool
        self.config = config
        self.environ = environ
        self.room = room
        self.outputs = outputs
        self.ledger = Ledger(metrics, outputs)

    # -- the inference path -----------------------------------------------------------

    async def handle(self, request: HttpRequest, trace: Trace | None = None) -> Answer | StreamingResponse:
        asked = self._parse(request, trace)
        if isinstance(asked, Answer):
            return asked
        body, req, policy = asked
        state = self.book()  # one snapshot for the whole request, even across a reload
        if req.region not in state.planner.regions:
            return error_json(400, f"unknown client region '{req.region}'", "invalid_request_error")
        if req.model not in state.models:  # 404, not retried; a known model with no site now is 503
            return model_not_found(req.model, state.models)
        text = prompt_text(body)
        chain = state.prompt_chain(text)
        embedding = request.path == "/v1/embeddings"
        shape = estimate_shape(body, text, embedding, self.outputs.estimate(req.model))
        cached = state.cached_tokens(req.model, chain)
        session = request.headers.get("x-grid-session") or None
        deadline = time.monotonic() + self.config.queue_timeout_s

        def decide() -> Ranking:
            return state.order(req, shape, cached, session, time.monotonic())

        ranking = decide()
        if not ranking.sites:
            waited = await self._when_full(state, req, shape, cached, decide, deadline)
            if isinstance(waited, Answer):
                return waited
            ranking = waited
        # strict judges only a request whose size it knows (max_tokens, or what the model's answers
        # have been): before any evidence, the default size is a guess, and the request is served
        if policy == "strict" and shape.output_source != "default":
            strict = await self._strict(state, req, shape, cached, ranking, decide, deadline)
            if isinstance(strict, Answer):
                return strict
            ranking = strict
            order = list(ranking.sites[: ranking.feasible])  # fail over only to sites that can meet it
        else:
            order = list(ranking.sites)
        if trace is not None:
            trace.slo_ms = req.slo_ms or state.planner.default_slo_ms
        streaming = body.get("stream") is True
        return await self._forward(
            request, state, req, shape, cached, order, ranking.feasible, chain, streaming, trace
        )

    def _parse(
        self, request: HttpRequest, trace: Trace | None
    ) -> tuple[dict[str, Any], Placement, str] | Answer:
        """The request's body, what it asks of placement and its SLO policy, or the 400 to answer."""
        cfg = self.config
        parsed = parse_body(request.body)  # the server answered 413 already when it was over the limit
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
            req = parse_placement(
                region, model, headers.get("x-grid-jurisdiction"), headers.get("x-grid-slo-ms")
            )
        except ValueError:
            return error_json(
                400, "x-grid-slo-ms must be a positive number of milliseconds", "invalid_request_error"
            )
        policy = headers.get("x-grid-slo-policy", cfg.slo_policy).strip().lower()
        if policy not in SLO_POLICIES:
            return error_json(
                400, f"x-grid-slo-policy must be one of {', '.join(SLO_POLICIES)}", "invalid_request_error"
            )
        return body, req, policy

    async def _when_full(
        self,
        state: GridState,
        req: Placement,
        shape: Shape,
        cached: Mapping[str, int],
        decide: Callable[[], Ranking],
        deadline: float,
    ) -> Ranking | Answer:
        """No site has room: 503 when none would serve the request even idle, else wait in the
        queue for room (429 when none frees by the deadline)."""
        if not state.eligible_ignoring_load(req, shape, time.monotonic()):
            self.metrics.shed["no-eligible-site"] += 1
            decision = state.explain(req, shape, cached, time.monotonic())
            reasons = {e.site: list(e.reasons) for e in decision.excluded}
            return error_json(
                503,
                f"no eligible site for {req.model} from {req.region}",
                "no_eligible_site",
                headers=(("retry-after", str(max(1, math.ceil(self.config.probe_interval_s)))),),
                code="no_eligible_site",
                reasons=reasons,
            )
        ranking = await self.room.wait(decide, deadline)
        if not ranking.sites:
            self.metrics.shed["all-sites-full"] += 1
            return error_json(
                429,
                "every eligible site is full; retry shortly",
                "rate_limit_exceeded",
                headers=(("retry-after", "1"),),
            )
        return ranking

    async def _strict(
        self,
        state: GridState,
        req: Placement,
        shape: Shape,
        cached: Mapping[str, int],
        ranking: Ranking,
        decide: Callable[[], Ranking],
        deadline: float,
    ) -> Ranking | Answer:
        """Strict: a ranking with sites predicted to meet the SLO, waited for when they are busy
        with this daemon's own requests; else the refusal."""
        if ranking.feasible == 0:
            if not state.feasible_when_free(req, shape, cached, time.monotonic()):
                self.metrics.shed["slo-unattainable"] += 1
                return refuse_miss(req, ranking, state.planner.default_slo_ms, busy=False)
            # the sites that could meet it are only busy with our own requests: wait for one
            ranking = await self.room.wait(decide, deadline, feasible=True)
            if ranking.feasible == 0:
                self.metrics.shed["slo-expected-miss"] += 1
                return refuse_miss(req, ranking, state.planner.default_slo_ms, busy=True)
        return ranking

    async def _forward(
        self,
        request: HttpRequest,
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
        """The request to each site of ``order`` in turn until one answers: a site's failure
        before any byte reached the client fails over to the next."""
        cfg = self.config
        attempts: list[dict[str, str]] = []
        for n, name in enumerate(order):
            attempt = self._attempt(state, req, shape, cached, name, n >= feasible, chain, trace, attempts)
            if attempt is None:  # removed by a reload while we waited
                continue
            handed_off = False  # a streamed answer ends (and is accounted) after this returns
            due = site_deadline_s(cfg, attempt.prediction, streaming)
            try:
                try:
                    upstream = await self._send(request, attempt, req.region, due)
                    sse = "text/event-stream" in (upstream.header("content-type", "") or "")
                    if (streaming or sse) and upstream.status < 500 and upstream.has_body:
                        # a stream is due by its first byte: until then, the next site may answer
                        await upstream.wait_body(max(0.0, attempt.start + due - time.monotonic()))
                    answer = await self._relay(upstream, attempt, streaming, attempt.start + due)
                except UpstreamTimeout:
                    error = _hung_message(name, due, cfg, attempt.prediction, streaming)
                except (UpstreamError, _BrokeOff) as exc:  # nothing reached the client yet
                    error = str(exc)
                else:
                    handed_off = isinstance(answer, StreamingResponse)
                    return answer
                self.ledger.failed(attempt, attempts, error)  # the next site may answer
            except asyncio.CancelledError:  # the client hung up while we waited for the site
                self.ledger.account(attempt, None, 0, None, gone=True)
                raise
            finally:
                if not handed_off:  # ended here, however (answer, failure, client gone, error)
                    attempt.end()
        return error_json(
            502, "every site tried failed before answering", "upstream_error", attempts=attempts
        )

    def _send(self, request: HttpRequest, attempt: Attempt, region: str, due: float) -> Awaitable[Response]:
        """The request to the attempt's site, to await: its answer once the head is in, within
        ``due`` seconds (UpstreamError else). A plain function: no coroutine of its own."""
        cfg, st = self.config, attempt.st
        return self.pool.request(
            "POST",
            st.site.endpoint.rstrip("/") + request.path,
            site_headers(request.headers, st.site.auth_headers(self.environ), region),
            request.body,
            head_timeout=due,
            read_timeout=cfg.header_timeout_s,
            connect_timeout=cfg.connect_timeout_s,
            tls=st.tls,
        )

    def _attempt(
        self,
        state: GridState,
        req: Placement,
        shape: Shape,
        cached: Mapping[str, int],
        name: str,
        miss: bool,
        chain: list[tuple[bytes, int]],
        trace: Trace | None,
        attempts: list[dict[str, str]],
    ) -> Attempt | None:
        """The next try, at ``name``, begun (None: a reload removed the site or its model)."""
        st = state.sites.get(name)
        sig = st.signals.get(req.model) if st is not None else None
        if st is None or sig is None:
            return None
        if attempts:  # counted by the site that failed
            self.metrics.failovers[attempts[-1]["site"]] += 1
        start = time.monotonic()
        prediction = state.predict(req, shape, name, cached.get(name, 0))
        attempt = Attempt(
            st, sig, name, req.model, start, prediction, chain, miss, shape, state.prefixes, self.room, trace
        )
        if trace is not None:
            trace.tried.append(name)
        attempt.begin()
        return attempt

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
        if upstream.status >= 500:  # the site's failure: the next site may answer
            detail = (await first_bytes(upstream, 200)).decode("utf-8", "replace")
            raise _BrokeOff(f"HTTP {upstream.status}: {detail}")
        headers = client_headers(upstream.headers)
        if upstream.status >= 400:  # the site's own error: not an answer that missed the SLO
            attempt.miss = False
        headers.extend(attempt.headers())
        if attempt.miss:  # the same answers as the x-grid-slo header
            self.metrics.expected_miss[attempt.model] += 1
        content_type = upstream.header("content-type", "") or ""
        if not upstream.has_body:  # 204, 304: nothing to relay, and no framing may be sent
            self.ledger.account(attempt, time.monotonic(), upstream.status, None)
            return Answer(upstream.status, b"", content_type, headers)
        if streaming or "text/event-stream" in content_type:
            return StreamingResponse(
                StreamRelay(self.ledger, upstream, attempt), upstream.status, content_type, headers
            )
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
        self.ledger.account(attempt, time.monotonic(), upstream.status, None, tokens=tokens, prompt=prompt)
        return Answer(upstream.status, body, content_type, headers)


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
