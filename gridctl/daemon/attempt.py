"""One try of a request at one site, and what its end teaches (breaker, averages, calibration).

An :class:`Attempt` owns its slot at the site from :meth:`Attempt.begin` to
:meth:`Attempt.end`: the in-flight count placement reads, the breaker's half-open trial
(when it is the one) and the wake-up of a queued request. Whoever sees the attempt end (the
proxy for a failure or a whole answer, the stream relay for a stream) calls ``end`` once.
The :class:`Ledger` writes what the attempt's outcome says: the site's breaker and moving
averages, the prefix index, the model's output lengths, calibration and the metrics.
"""

from __future__ import annotations

import time

from gridctl.core.placement.predict import OutputTokens, Prediction, Shape
from gridctl.core.placement.prefix import SentIndex
from gridctl.core.placement.signals import SiteSignals
from gridctl.core.sitestate import SiteState
from gridctl.daemon.accesslog import Trace
from gridctl.daemon.admission import RoomQueue
from gridctl.daemon.metrics import Metrics


class Attempt:
    """One try of a request at one site: what it was sent with, for its accounting, and the
    breaker's trial it owns (its number, when it is the half-open site's trial), given back
    however the attempt ends (:meth:`Breaker.on_end`)."""

    __slots__ = (
        "st", "sig", "name", "model", "start", "prediction", "chain", "miss", "shape", "trial", "trace",
        "prefixes", "room",
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
        shape: Shape | None,
        prefixes: SentIndex,
        room: RoomQueue,
        trace: Trace | None = None,
    ) -> None:
        self.st, self.sig, self.name, self.model, self.start = st, sig, name, model, start
        self.prediction, self.chain, self.miss, self.shape = prediction, chain, miss, shape
        self.prefixes = prefixes  # what was sent where (kept across a reload: one index)
        self.room = room  # a slot freed wakes the first queued request
        self.trial: int | None = None
        self.trace = trace  # the request's, for the access log

    def begin(self) -> None:
        """Take the slot: in flight to the site for the model, counted, the breaker told."""
        st = self.st
        self.sig.in_flight += 1
        st.requests += 1
        self.trial = st.breaker.on_attempt(self.start)

    def end(self) -> None:
        """Give the slot back (once, however the attempt ended)."""
        self.st.breaker.on_end(self.trial)
        self.sig.in_flight -= 1
        self.room.release()

    def headers(self) -> list[tuple[str, str]]:
        out = [("x-grid-site", self.name)]
        if self.prediction is not None:
            out.append(("x-grid-predicted-ms", str(round(self.prediction.e2e_ms))))
        if self.miss:
            out.append(("x-grid-slo", "expected-miss"))
        return out


class Ledger:
    """Where attempts' outcomes are written: the daemon's metrics and the models' output
    lengths (the site's own state is on the attempt)."""

    def __init__(self, metrics: Metrics, outputs: OutputTokens) -> None:
        self.metrics = metrics
        self.outputs = outputs

    def failed(self, attempt: Attempt, attempts: list[dict[str, str]], error: str) -> None:
        """The site failed the attempt before any byte reached the client (the next may answer)."""
        st, name = attempt.st, attempt.name
        st.failures += 1
        st.error_rate.add(1.0)
        st.breaker.on_failure(time.monotonic())
        self.metrics.site_failures[name] += 1
        attempts.append({"site": name, "error": error})

    def account(
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
        timing teaches the site's calibration (answers that completed with a 2xx only), and the
        model's output lengths (answers to requests that set no limit)."""
        st, name = attempt.st, attempt.name
        now = time.monotonic()
        if cut is not None:
            self.metrics.stream_cuts[(name, attempt.model)] += 1
            st.breaker.on_failure(now)
            st.failures += 1
            st.error_rate.add(1.0)
        elif not gone:
            st.breaker.on_success()
            st.error_rate.add(0.0)
            st.latency_s.add(now - attempt.start)
            if first is not None:
                st.ttft_s.add(first - attempt.start)
            if status < 400:
                if attempt.chain:
                    attempt.prefixes.record(attempt.name, attempt.model, attempt.chain)
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
                    start = attempt.start
                    ttft_ms = (first_token - start) * 1000.0 if first_token is not None else None
                    st.learn(attempt.model, attempt.prediction, now, ttft_ms, (now - start) * 1000.0, tokens)
        if attempt.trace is not None:  # the request's counters and log line, when it ends
            outcome = "cut" if cut is not None else "client-gone" if gone else "ok"
            attempt.trace.answered(name, first_token, prompt, tokens, outcome, attempt.miss)
