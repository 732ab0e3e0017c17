"""Per-site circuit breaker and moving averages. Pure: ``now`` is passed in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Breaker:
    """closed -> (N consecutive failures) -> open -> (cooldown) -> half-open -> one trial."""

    failures_to_open: int = 3
    cooldown_s: float = 10.0
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at < self.cooldown_s:
            return "open"
        return "half-open"

    def allows(self, now: float) -> bool:
        state = self.state(now)
        return state == "closed" or (state == "half-open" and not self.trial_in_flight)

    def on_attempt(self, now: float) -> None:
        if self.state(now) == "half-open":
            self.trial_in_flight = True

    def on_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def on_failure(self, now: float) -> None:
        self.failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.failures >= self.failures_to_open:
            self.opened_at = now


@dataclass
class Ewma:
    alpha: float = 0.2
    value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.alpha * sample + (1 - self.alpha) * self.value
