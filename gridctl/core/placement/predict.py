"""The latency predictor: a request's end-to-end latency at a site, on that site's GPUs. Pure.

For a request of a given shape (prompt tokens, output tokens; see
:func:`estimate_shape`) at a site serving the model (:class:`~gridctl.core.placement.perf.Serving`)
under its current load::

    load     = max(requests this daemon has in flight there, the site's own running + waiting)
    frac     = min(1, (load // replicas + 1) / (capacity / replicas))
                 (the least-loaded replica, which the site's balancer picks, with the request itself)
    first    = (TTFT + uncached_prompt / prefill * 1000) * factor * cal.first  * (1 + LOAD_TTFT * frac)
    interval = 1000 / decode * factor * cal.decode * (1 + LOAD_DECODE * frac)
    service  = first + interval * (output - 1)                     (an embedding: first alone)
    ahead    = load + 1 - capacity                                 (requests before it beyond the slots)
    queue    = ahead * service_at_full_load / capacity             (0 when ahead <= 0)
    e2e      = round_trip + queue + service
    ttft     = round_trip + queue + first

``uncached_prompt`` is the prompt less the tokens the site probably holds in
its prefix cache (a likely hit shortens the prefill; it does not decide alone).
``factor`` is the model's size and tensor-parallel speed-up (:mod:`gridctl.core.placement.perf`);
``cal`` the site's calibration (:class:`Calibration`), 1.0 before any evidence.

Calibration: the daemon (and the simulator, the same way) compares what each
answer took with what the table alone predicted for it, per site: the first
token's compute time (observed TTFT - round trip - predicted queue) against
``first`` without calibration, and the time per output token against
``interval`` without calibration (an answer that is not streamed gives one
ratio for both; one with no decode step, one token or an embedding, moves only
the first-token factor; an answer of unknown length teaches nothing). Each
ratio moves the site's factor by ``CAL_ALPHA`` in log space (a site twice as
slow as its row is predicted within 10% after about 15 answers, within 1%
after about 30); ratios are clamped to [0.1, 10]. With no new evidence, a
factor decays toward the prior (1.0) with a half-life of ``CAL_HALF_LIFE_S``
(10 minutes), so a site predicted too slow to be chosen is tried again and
comes back when it has recovered (the daemon also measures such a site with a
tiny generation now and then, which finds one faster than its row too).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gridctl.core.placement.perf import LOAD_DECODE, LOAD_TTFT, Serving, count_tokens

CAL_ALPHA = 0.15
CAL_HALF_LIFE_S = 600.0
CAL_CLAMP = (0.1, 10.0)
DEFAULT_OUTPUT_TOKENS = 256  # a request without max_tokens, before the daemon has seen its model complete
OUTPUT_QUANTILE = 0.9  # ... after: this quantile of the completion tokens of its model's last answers
OUTPUT_WINDOW = 512


@dataclass(frozen=True)
class Shape:
    """What a request asks of a site."""

    prompt_tokens: int
    output_tokens: int  # 0 for an embedding (no decode step)
    output_source: str = "max_tokens"  # "max_tokens" | "observed" | "default" | "given"


@dataclass(frozen=True)
class Prediction:
    rtt_ms: float
    queue_ms: float
    prefill_ms: float  # the first token's compute, calibrated, under load
    decode_ms: float  # the other output tokens, calibrated, under load
    first_raw_ms: float  # the first token's compute from the table alone, under load (for calibration)
    interval_raw_ms: float  # time per output token from the table alone, under load

    @property
    def e2e_ms(self) -> float:
        return self.rtt_ms + self.queue_ms + self.prefill_ms + self.decode_ms

    @property
    def ttft_ms(self) -> float:
        return self.rtt_ms + self.queue_ms + self.prefill_ms

    @property
    def service_ms(self) -> float:
        return self.prefill_ms + self.decode_ms

    def to_dict(self) -> dict[str, float]:
        return {
            "predicted_ms": round(self.e2e_ms, 3),
            "ttft_ms": round(self.ttft_ms, 3),
            "rtt_ms": round(self.rtt_ms, 3),
            "queue_ms": round(self.queue_ms, 3),
            "prefill_ms": round(self.prefill_ms, 3),
            "decode_ms": round(self.decode_ms, 3),
        }


def predict(
    serving: Serving,
    shape: Shape,
    rtt_ms: float,
    load: int = 0,
    waiting: int = 0,
    cached_tokens: int = 0,
    first_factor: float = 1.0,
    decode_factor: float = 1.0,
) -> Prediction:
    """The module docstring's formulas for one site (the engine's loop inlines the same);
    ``load`` + ``waiting`` is every request at the site."""
    cap = serving.capacity
    replicas = serving.replicas
    load += waiting  # every request at the site, running or queued
    frac = (load // replicas + 1) * replicas / cap
    if frac > 1.0:
        frac = 1.0
    f = serving.factor
    gpu = serving.gpu
    uncached = shape.prompt_tokens - cached_tokens
    if uncached < 0:
        uncached = 0
    first_idle = (gpu.ttft_ms + uncached * 1000.0 / gpu.prefill_tok_s) * f
    interval_idle = 1000.0 / gpu.decode_tok_s * f
    first_raw = first_idle * (1.0 + LOAD_TTFT * frac)
    interval_raw = interval_idle * (1.0 + LOAD_DECODE * frac)
    tokens = shape.output_tokens - 1 if shape.output_tokens > 1 else 0
    prefill = first_raw * first_factor
    decode = interval_raw * decode_factor * tokens
    ahead = load + 1 - cap
    queue = 0.0
    if ahead > 0:
        full = (
            first_idle * first_factor * (1.0 + LOAD_TTFT)
            + interval_idle * decode_factor * (1.0 + LOAD_DECODE) * tokens
        )
        queue = ahead * full / cap
    return Prediction(rtt_ms, queue, prefill, decode, first_raw, interval_raw)


def capacity_within(serving: Serving, shape: Shape, rtt_ms: float, budget_ms: float) -> int:
    """How many requests of ``shape`` the site can run at once with each predicted within
    ``budget_ms`` (by the table, no queue): 0 when even an idle site misses it. The prediction
    grows with the load, so a binary search over it."""
    if predict(serving, shape, rtt_ms, 0).e2e_ms > budget_ms:
        return 0
    lo, hi = 0, serving.capacity - 1  # load lo is within the budget; find the highest such
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predict(serving, shape, rtt_ms, mid).e2e_ms <= budget_ms:
            lo = mid
        else:
            hi = mid - 1
    return lo + 1


# -- calibration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """A site's correction of its table row: observed / predicted, in log space."""

    log_first: float = 0.0
    log_decode: float = 0.0
    samples: int = 0
    at: float | None = None  # when the last evidence came (the caller's clock)

    def factors(self, now: float, half_life_s: float = CAL_HALF_LIFE_S) -> tuple[float, float]:
        """(first, decode) multipliers at ``now``: decayed toward 1.0 since the last evidence."""
        if self.samples == 0 or self.at is None:
            return 1.0, 1.0
        age = now - self.at
        keep = 0.5 ** (age / half_life_s) if age > 0 else 1.0
        return math.exp(self.log_first * keep), math.exp(self.log_decode * keep)

    def to_dict(self, now: float) -> dict[str, Any]:
        first, decode = self.factors(now)
        return {
            "first_factor": round(first, 4),
            "decode_factor": round(decode, 4),
            "samples": self.samples,
            "age_s": None if self.at is None else round(max(0.0, now - self.at), 1),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], now: float, downtime_s: float = 0.0) -> Calibration:
        """What :meth:`to_dict` wrote (kept in ``.state``): its factors as they were when written,
        clamped to ``CAL_CLAMP``, decaying on as if ``downtime_s`` had passed since; anything
        malformed is the prior."""
        try:
            first = float(d.get("first_factor", 1.0))
            decode = float(d.get("decode_factor", 1.0))
            samples = int(min(float(d.get("samples", 0) or 0), 1e12))
        except (TypeError, ValueError, OverflowError):
            return cls()
        if not (math.isfinite(first) and math.isfinite(decode)) or first <= 0 or decode <= 0:
            return cls()
        lo, hi = CAL_CLAMP
        first, decode = min(hi, max(lo, first)), min(hi, max(lo, decode))
        away = downtime_s if math.isfinite(downtime_s) and downtime_s > 0 else 0.0
        return cls(math.log(first), math.log(decode), max(0, samples), now - away)


PRIOR = Calibration()


def _clamped_log(ratio: float) -> float:
    lo, hi = CAL_CLAMP
    return math.log(min(hi, max(lo, ratio)))


def calibrate(
    cal: Calibration,
    predicted: Prediction,
    now: float,
    ttft_ms: float | None,
    e2e_ms: float,
    output_tokens: int | None,
    alpha: float = CAL_ALPHA,
) -> Calibration:
    """``cal`` after one answer: ``ttft_ms`` (None when not streamed) and ``e2e_ms`` as observed
    from sending the request, ``output_tokens`` as counted or reported (None: unknown)."""
    first, decode = cal.factors(now)
    lf, ld = math.log(first), math.log(decode)
    base = predicted.rtt_ms + predicted.queue_ms
    tokens = (output_tokens - 1) if output_tokens and output_tokens > 1 else 0
    if ttft_ms is not None and tokens > 0:
        r_first = max(ttft_ms - base, 0.1) / predicted.first_raw_ms
        r_decode = max(e2e_ms - ttft_ms, 0.0) / tokens / predicted.interval_raw_ms
        if r_decode <= 0:
            r_decode = decode
        lf += alpha * (_clamped_log(r_first) - lf)
        ld += alpha * (_clamped_log(r_decode) - ld)
    elif tokens > 0:
        raw = predicted.first_raw_ms + predicted.interval_raw_ms * tokens
        r = max(e2e_ms - base, 0.1) / raw
        lf += alpha * (_clamped_log(r) - lf)
        ld += alpha * (_clamped_log(r) - ld)
    else:  # no decode step seen (one token, an embedding): evidence for the first token only
        r = max((ttft_ms if ttft_ms is not None else e2e_ms) - base, 0.1) / predicted.first_raw_ms
        lf += alpha * (_clamped_log(r) - lf)
    return Calibration(lf, ld, cal.samples + 1, now)


# -- the request's shape -----------------------------------------------------------------


class OutputTokens:
    """Completion tokens of a model's last answers, for requests that set no ``max_tokens``.
    Pure state: a bounded window; :meth:`estimate` is its ``OUTPUT_QUANTILE``."""

    def __init__(self, window: int = OUTPUT_WINDOW) -> None:
        self._seen: dict[str, deque[int]] = {}
        self._sorted: dict[str, list[int]] = {}  # the same window in order: the quantile is one lookup
        self._window = window

    def record(self, model: str, tokens: int) -> None:
        if tokens <= 0:
            return
        seen = self._seen.get(model)
        if seen is None:
            seen = self._seen[model] = deque()
            self._sorted[model] = []
        ordered = self._sorted[model]
        if len(seen) >= self._window:
            del ordered[bisect.bisect_left(ordered, seen.popleft())]
        seen.append(tokens)
        bisect.insort(ordered, tokens)

    def estimate(self, model: str) -> tuple[int, str]:
        ordered = self._sorted.get(model)
        if not ordered:
            return DEFAULT_OUTPUT_TOKENS, "default"
        return ordered[min(len(ordered) - 1, int(OUTPUT_QUANTILE * len(ordered)))], "observed"


MAX_TOKENS = 10_000_000  # larger token counts are read as this (no model's context is longer)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return min(value, MAX_TOKENS) if value >= 1 else None
    if not math.isfinite(value) or value < 1:
        return None
    return int(min(value, MAX_TOKENS))


def estimate_shape(
    body: Mapping[str, Any],
    prompt_text: str,
    embedding: bool = False,
    fallback: tuple[int, str] = (DEFAULT_OUTPUT_TOKENS, "default"),
) -> Shape:
    """The shape of an OpenAI request: its prompt at 4 characters a token; its output from
    ``max_completion_tokens`` or ``max_tokens``, else ``fallback`` (the model's observed
    quantile, or the default); an embedding has no output. A prompt given as token ids
    (``prompt`` / ``input``: a list of integers, or of such lists) counts one token each."""
    prompt = min(MAX_TOKENS, max(count_tokens(prompt_text), _token_ids(body)))
    if embedding:
        return Shape(prompt, 0, "embedding")
    for key in ("max_completion_tokens", "max_tokens"):
        n = _positive_int(body.get(key))
        if n is not None:
            return Shape(prompt, n, "max_tokens")
    return Shape(prompt, fallback[0], fallback[1])


def _token_ids(body: Mapping[str, Any]) -> int:
    """How many token ids ``prompt`` or ``input`` holds (0 when they are text)."""
    n = 0
    for key in ("prompt", "input"):
        value = body.get(key)
        if not isinstance(value, list):
            continue
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                n += 1
            elif isinstance(item, list):
                n += sum(1 for x in item if isinstance(x, int) and not isinstance(x, bool))
    return n


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text of an OpenAI request body that placement reads: the rendered conversation (or the
    prompt, or the input), whose length gives the prompt tokens and whose prefix the cache matches."""
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


# -- deadlines: when a site that sent nothing is taken for hung ------------------------------------
#
# A site is given HUNG_FACTOR times what its answer is predicted to take before its first byte,
# and never less than HUNG_FLOOR_S: a deadline detects a site that has stopped, never one that is
# merely slow. The prediction is calibrated on what the site's answers took and includes its live
# queue, so a healthy site is within 2x of it nearly always; 4x leaves room for a burst the probes
# have not seen yet (they poll every few seconds). The floor covers what the model cannot see (a
# pause in the site's server, a TCP retransmission, a cold connection) and keeps a request
# predicted at 50 ms from being cut at 200 ms. A request predicted to miss its SLO gets 4x its own
# (long) prediction: an expected miss is never a failure. Under a 500 ms SLO a hung site costs a
# request 2 s (then it fails over), instead of the 30 s a fixed head timeout cost.
HUNG_FACTOR = 4.0
HUNG_FLOOR_S = 2.0


def hung_after_s(
    prediction: Prediction | None,
    streaming: bool,
    factor: float = HUNG_FACTOR,
    floor_s: float = HUNG_FLOOR_S,
    fallback_s: float = 30.0,
) -> float:
    """Seconds to wait for a site's first byte before taking it for hung: a streamed answer's
    first byte is due with its first token (``factor`` x the predicted TTFT), the head of an
    answer that is not streamed with the whole answer (``factor`` x the predicted end to end);
    never under ``floor_s``. Without a prediction, ``fallback_s``."""
    if prediction is None:
        return fallback_s
    predicted_ms = prediction.ttft_ms if streaming else prediction.e2e_ms
    return max(floor_s, factor * predicted_ms / 1000.0)


def explain_deadline(
    prediction: Prediction | None,
    streaming: bool,
    factor: float = HUNG_FACTOR,
    floor_s: float = HUNG_FLOOR_S,
) -> str:
    """Where :func:`hung_after_s`'s figure came from, for a message (``4 x its predicted 120 ms
    to the first token, at least 2 s``)."""
    if prediction is None:
        return "no prediction for it"
    what = "to the first token" if streaming else "for the whole answer"
    predicted_ms = prediction.ttft_ms if streaming else prediction.e2e_ms
    return f"{factor:g} x its predicted {predicted_ms:.0f} ms {what}, at least {floor_s:g} s"
