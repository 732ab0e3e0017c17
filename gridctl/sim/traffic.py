"""The requests of a run, as parallel lists (a :class:`Workload`), generated from a profile. Pure.

Generation, per client region, in the order given (so a seed gives the same requests):

- sessions start as a Poisson process at ``rate / turns`` per second, times the
  burst factor inside a burst window (piecewise constant, so exact); sessions
  start from ``5 x turns x think_s`` seconds before 0, so the run begins in the
  steady state (their turns before 0 are not requests, only history);
- a session has a geometric number of turns (mean ``turns``), ``think_s``
  (exponential) apart, open loop: a turn does not wait for the previous answer;
  turns after the end of the run are not generated, so the measured rate is a
  little under ``rate`` near the end;
- a session uses one shared prefix (Zipf over ``prefixes``, exponent ``skew``);
- the first turn's prompt is the prefix + new tokens; turn k's is the whole
  previous turn (its prompt, so the prefix too, and its output: the history) +
  new tokens; output and new tokens are log-normal (drawn from 4096 quantiles).
  A prompt that would exceed ``max_prompt_tokens`` starts a fresh context.

Requests are then sorted by time (stable, so ties keep generation order).
"""

from __future__ import annotations

import math
import random
from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from statistics import NormalDist

from gridctl.sim.profiles import Bursts, Lengths, Profile


@dataclass
class Workload:
    """Request i arrives at ``t[i]`` seconds from ``regions[region[i]]`` for ``models[model[i]]``."""

    regions: tuple[str, ...]
    models: tuple[str, ...]
    duration_s: float
    slo_ms: float
    t: list[float] = field(default_factory=list)
    region: list[int] = field(default_factory=list)
    model: list[int] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    prefix: list[int] = field(default_factory=list)  # shared prefix id, -1: none
    prefix_tokens: list[int] = field(default_factory=list)  # leading prompt tokens the prefix covers
    session: list[int] = field(default_factory=list)  # session id, -1: none
    history: list[int] = field(default_factory=list)  # leading tokens that are the session's previous turn
    bursts: tuple[tuple[float, float], ...] = ()  # (start, end) windows, for reports and plots
    max_tokens: list[int] | None = None  # per request, what the client asked (0: nothing); None: no column

    def __len__(self) -> int:
        return len(self.t)

    def columns(self) -> tuple[list[int], ...]:
        cols = (
            self.region,
            self.model,
            self.prompt,
            self.output,
            self.prefix,
            self.prefix_tokens,
            self.session,
            self.history,
        )
        return cols if self.max_tokens is None else (*cols, self.max_tokens)

    def sort(self) -> None:
        """Order every column by arrival time (stable)."""
        t = self.t
        if all(t[i] <= t[i + 1] for i in range(len(t) - 1)):
            return
        order = sorted(range(len(t)), key=t.__getitem__)
        self.t = [t[i] for i in order]
        for col in self.columns():
            col[:] = [col[i] for i in order]

    def check(self) -> None:
        """Every column as long as ``t`` (a programming error otherwise)."""
        n = len(self.t)
        assert all(len(c) == n for c in self.columns()), "workload columns differ in length"


def prompt_chain(prefix: int, prefix_tokens: int, session: int, tokens: int) -> list[tuple[int, int]]:
    """The prefix-cache chain (:mod:`gridctl.core.placement.prefix`) of the first ``tokens`` tokens of a
    simulated conversation: its shared prefix (``prefix`` >= 0), one run keyed ``prefix << 1``
    of ``prefix_tokens``; then the session's own tokens (``session`` >= 0), one run keyed
    ``session << 1 | 1``. A conversation only grows, so each turn's history is a leading part
    of the run its previous turn left. A request in no session has nothing cacheable beyond
    its prefix (the rest of its prompt is its own)."""
    chain: list[tuple[int, int]] = []
    base = 0
    if prefix >= 0 and prefix_tokens > 0:
        base = prefix_tokens if prefix_tokens < tokens else tokens
        chain.append((prefix << 1, base))
    if session >= 0 and tokens > base:
        chain.append(((session << 1) | 1, tokens - base))
    return chain


def burst_windows(bursts: Bursts | None, duration_s: float) -> tuple[tuple[float, float], ...]:
    if bursts is None or bursts.length_s <= 0 or bursts.factor == 1.0:
        return ()
    out = []
    start = bursts.first_s
    while start < duration_s:
        out.append((start, min(start + bursts.length_s, duration_s)))
        start += bursts.every_s
    return tuple(out)


def _segments(
    windows: Sequence[tuple[float, float]], factor: float, duration_s: float
) -> list[tuple[float, float, float]]:
    """[0, duration) as (start, end, multiplier) pieces."""
    out, t = [], 0.0
    for a, b in windows:
        if a > t:
            out.append((t, a, 1.0))
        out.append((a, b, factor))
        t = b
    if t < duration_s:
        out.append((t, duration_s, 1.0))
    return out


QUANTILES = 4096


def length_table(lengths: Lengths) -> tuple[int, ...]:
    """The distribution as ``QUANTILES`` equally likely token counts (its quantiles at (k + 0.5) / Q,
    rounded and clipped): drawing is one uniform number and an index."""
    normal = NormalDist()
    mu = math.log(lengths.median)
    out = []
    for k in range(QUANTILES):
        v = (
            math.exp(mu + lengths.sigma * normal.inv_cdf((k + 0.5) / QUANTILES))
            if lengths.sigma > 0
            else lengths.median
        )
        n = int(v + 0.5)
        out.append(lengths.lo if n < lengths.lo else lengths.hi if n > lengths.hi else n)
    return tuple(out)


def region_rates(profile: Profile, regions: Sequence[str]) -> dict[str, float]:
    """Requests per second from each client region: the profile's own, else the same for every region."""
    if profile.rates is not None:
        return {r: profile.rates[r] for r in regions if r in profile.rates}
    return {r: profile.rate_per_region for r in regions}


@dataclass(frozen=True)
class _Turns:
    """How a session's turns are drawn: new and output tokens (``length_table``), the prefix
    every first prompt starts with, the prompt bound, the chance a session ends after a turn,
    the rate of think times (0: none), whether there are sessions at all."""

    new: tuple[int, ...]
    out: tuple[int, ...]
    prefix_tokens: int
    max_prompt: int
    p_end: float
    think_rate: float
    sessions: bool


def generate_workload(
    profile: Profile, regions: Sequence[str], model: str, rng: random.Random, scale: float = 1.0
) -> Workload:
    """The requests of ``profile`` over its duration from ``regions`` (grid.yaml order) for ``model``."""
    rates = region_rates(profile, regions)
    names = tuple(r for r in regions if r in rates)
    duration = profile.duration_s
    windows = burst_windows(profile.bursts, duration)
    factor = profile.bursts.factor if profile.bursts else 1.0
    w = Workload(names, (model,), duration, profile.slo_ms, bursts=windows)
    cum = list(accumulate(1.0 / (k + 1) ** profile.prefix_skew for k in range(profile.prefixes)))
    total_w = cum[-1]
    last_prefix = profile.prefixes - 1
    turns = profile.turns
    draw = _Turns(
        new=length_table(profile.new_tokens),
        out=length_table(profile.output_tokens),
        prefix_tokens=profile.prefix_tokens,
        max_prompt=profile.max_prompt_tokens,
        p_end=1.0 / turns,  # geometric turns: after each, the session ends with this probability
        think_rate=1.0 / profile.think_s if profile.think_s > 0 else 0.0,
        sessions=turns > 1.0,
    )
    # sessions already under way at 0: start them earlier, keep their turns from 0 on
    warmup = 5.0 * turns * profile.think_s if turns > 1.0 else 0.0
    rand, expo = rng.random, rng.expovariate
    sid = 0
    for ri, name in enumerate(names):
        rate = rates[name] * scale
        bursting = profile.burst_regions is None or name in profile.burst_regions
        segments = _segments(windows if bursting else (), factor, duration)
        if warmup > 0:
            segments.insert(0, (-warmup, 0.0, 1.0))
        for a, b, mult in segments:
            lam = rate / turns * mult
            if lam <= 0:
                continue
            t = a + expo(lam)
            while t < b:  # a session starts at t
                pid = bisect(cum, rand() * total_w)
                pid = pid if pid <= last_prefix else last_prefix
                _add_session(w, draw, ri, pid, sid if draw.sessions else -1, t, duration, rng)
                sid += 1
                t += expo(lam)
    w.sort()
    return w


def _add_session(
    w: Workload,
    draw: _Turns,
    region: int,
    pid: int,
    session: int,
    t: float,
    duration: float,
    rng: random.Random,
) -> None:
    """The turns of one session (prefix ``pid``, id ``session``, -1: a single request) from ``t``
    to the end of the run appended to ``w``; its turns
    before 0 only build its history."""
    t_, reg_, mod_, pr_, out_, pf_, pft_, ses_, hist_ = (w.t, *w.columns())
    rand, expo = rng.random, rng.expovariate
    new_t, out_t, prefix_tokens, max_prompt = draw.new, draw.out, draw.prefix_tokens, draw.max_prompt
    p_end, think_rate = draw.p_end, draw.think_rate
    hist, tt = 0, t
    while tt < duration:
        new, out = new_t[int(rand() * QUANTILES)], out_t[int(rand() * QUANTILES)]
        if tt < 0.0:  # a turn before the run: only its history counts
            hist = (hist or prefix_tokens) + new + out
            if hist > max_prompt:
                hist = 0
            if rand() < p_end:
                break
            tt += expo(think_rate) if think_rate else 0.0
            continue
        prompt = (hist or prefix_tokens) + new
        if prompt > max_prompt:
            hist, prompt = 0, prefix_tokens + new
        t_.append(tt)
        reg_.append(region)
        mod_.append(0)
        pr_.append(prompt)
        out_.append(out)
        pf_.append(pid if prefix_tokens > 0 else -1)
        pft_.append(prefix_tokens)
        ses_.append(session)
        hist_.append(hist)
        if session < 0 or rand() < p_end:
            break
        hist = prompt + out
        tt += expo(think_rate) if think_rate else 0.0
