"""Per-site circuit breaker and moving averages. Pure: ``now`` is passed in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Breaker:
    """closed -> (N consecutive failures) -> open -> (cooldown) -> half-open -> one trial.

    The trial is the attempt :meth:`on_attempt` numbers, and it is over when that attempt
    is, however it ends; its owner calls :meth:`on_end` in a ``finally``. A success closes
    the circuit; a failure (an error, a 5xx, the site's timeout, a cut stream) opens it
    for another cooldown; an end that says nothing about the site (the client gone before
    the head or mid-stream, the daemon draining or reloading, an error of the daemon's own,
    a cancellation) leaves it half-open, and the next request is the trial. A trial out
    for ``trial_s`` (None: the cooldown) is over whatever became of it, a bound on an
    attempt that never ends: the next request is a new trial, and the old one's verdict
    still counts if it comes. So a site that answers again is back within one cooldown of
    its last failure plus one trial, and the breaker is never half-open with a trial out
    for longer than ``trial_s``.
    """

    failures_to_open: int = 3
    cooldown_s: float = 10.0
    trial_s: float | None = None  # how long a trial may stay out; None: the cooldown
    failures: int = 0  # consecutive failures
    opened_at: float | None = None
    trial: int | None = None  # the number of the trial out; None: none
    trial_at: float = 0.0  # when it went out
    trials: int = 0  # trials sent (numbers them)

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at < self.cooldown_s:
            return "open"
        return "half-open"

    def trial_out(self, now: float) -> bool:
        """A trial is out and within its bound."""
        bound = self.cooldown_s if self.trial_s is None else self.trial_s
        return self.trial is not None and now - self.trial_at < bound

    def allows(self, now: float) -> bool:
        state = self.state(now)
        return state == "closed" or (state == "half-open" and not self.trial_out(now))

    def on_attempt(self, now: float) -> int | None:
        """An attempt goes out: the trial's number when it is the half-open trial (give it
        to :meth:`on_end` when the attempt ends), else None."""
        if self.state(now) != "half-open" or self.trial_out(now):
            return None
        self.trials += 1
        self.trial, self.trial_at = self.trials, now
        return self.trial

    def on_end(self, trial: int | None) -> None:
        """The attempt that :meth:`on_attempt` numbered ``trial`` ended, however it ended.
        If it is still the trial out (no verdict came: a success or failure ended it
        already), the trial is over without one: the site is half-open again."""
        if trial is not None and trial == self.trial:
            self.trial = None

    def on_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial = None

    def on_failure(self, now: float) -> None:
        self.failures += 1
        self.trial = None
        if self.opened_at is not None or self.failures >= self.failures_to_open:
            self.opened_at = now


@dataclass
class Ewma:
    alpha: float = 0.2
    value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.alpha * sample + (1 - self.alpha) * self.value
