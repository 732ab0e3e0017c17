"""The circuit breaker (gridctl/core/breaker.py) as pure data: its trial ends in every outcome.

Attempts are driven as the proxy drives them (``Proxy._forward`` and ``_Relay``): each
``on_attempt`` when it goes out, its verdict when one comes, and ``on_end`` with its trial
number however it ends (a ``finally``). Some attempts never end at all (a leak the breaker
must survive)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.core.breaker import Breaker

# what each way an attempt can end tells the breaker, as the proxy reports it
SUCCESS = "success"  # an answer: _account -> on_success
FAILURE = "failure"  # a connect error or 5xx (_failed), a cut stream (_account) -> on_failure
TIMEOUT = "timeout"  # the site's head timeout: an UpstreamError -> _failed -> on_failure
CLIENT_GONE = "client_gone"  # before the head (CancelledError) or mid-stream (_Relay.aclose): no verdict
DRAIN = "drain"  # SIGTERM's drain aborts the connection: the handler is cancelled: no verdict
EXCEPTION = "exception"  # an error in the proxy path: only the finally runs: no verdict
VERDICT = {SUCCESS: True, FAILURE: False, TIMEOUT: False, CLIENT_GONE: None, DRAIN: None, EXCEPTION: None}
HEALTHY = [SUCCESS, CLIENT_GONE, DRAIN, EXCEPTION]  # what a site that answers sees
ANY = list(VERDICT)


def finish(b: Breaker, trial: int | None, outcome: str, now: float) -> None:
    """One attempt ended with ``outcome``, reported as the proxy reports it."""
    verdict = VERDICT[outcome]
    if verdict is True:
        b.on_success()
    elif verdict is False:
        b.on_failure(now)
    b.on_end(trial)  # the finally


@dataclass
class Run:
    """The breaker, the attempts still out (their trial numbers) and what the model expects."""

    b: Breaker
    now: float = 0.0
    out: list[int | None] = field(default_factory=list)
    consecutive: int = 0  # failures since the last success
    trials: list[int] = field(default_factory=list)  # the numbers on_attempt gave, in order

    def step(self, event: tuple, outcomes: list[str]) -> str | None:
        """Play one event; the outcome when an attempt ended."""
        kind = event[0]
        if kind == "advance":
            self.now += event[1]
        elif kind == "attempt":
            forced = event[1]  # sent without asking (a failover order decided earlier)
            if forced or self.b.allows(self.now):
                trial = self.b.on_attempt(self.now)
                if trial is not None:
                    self.trials.append(trial)
                self.out.append(trial)
        elif kind == "end" and self.out:
            trial = self.out.pop(event[1] % len(self.out))
            outcome = outcomes[event[2] % len(outcomes)]
            finish(self.b, trial, outcome, self.now)
            if VERDICT[outcome] is True:
                self.consecutive = 0
            elif VERDICT[outcome] is False:
                self.consecutive += 1
            return outcome
        return None

    def check(self) -> None:
        """What holds after every event, whatever the outcomes."""
        b, now = self.b, self.now
        state = b.state(now)
        assert b.failures == self.consecutive
        assert (b.opened_at is not None) == (b.failures >= b.failures_to_open)
        assert b.trials == len(self.trials) and self.trials == list(range(1, len(self.trials) + 1))
        assert b.trial in (None, b.trials)  # the trial out is the latest one given
        if state == "closed":
            assert b.trial is None and b.allows(now)
        if state == "open":
            assert not b.allows(now)
        if state == "half-open" and not b.allows(now):  # never half-open with a trial forever
            assert b.trial is not None and 0 <= now - b.trial_at < b.cooldown_s


# times in quarters of a second: exact in binary, so a boundary is where the breaker puts it
quarters = st.integers(2, 120).map(lambda q: q / 4)
breakers = st.builds(Breaker, failures_to_open=st.integers(1, 4), cooldown_s=quarters)


def events(cooldown_s: float) -> st.SearchStrategy[list[tuple]]:
    event = st.one_of(
        st.tuples(st.just("advance"), st.integers(0, int(8 * cooldown_s)).map(lambda q: q / 4)),
        st.tuples(st.just("attempt"), st.booleans()),
        st.tuples(st.just("end"), st.integers(0, 20), st.integers(0, 20)),
    )
    return st.lists(event, max_size=60)


@st.composite
def histories(draw: st.DrawFn) -> tuple[Breaker, list[tuple], list[tuple]]:
    """A breaker, events with any outcome, then events where the site is healthy."""
    b = draw(breakers)
    return b, draw(events(b.cooldown_s)), draw(events(b.cooldown_s))


@settings(max_examples=400, deadline=None)
@given(histories())
def test_a_healthy_site_comes_back_within_one_cooldown_plus_one_trial(history) -> None:  # type: ignore[no-untyped-def]
    b, before, healthy = history
    run = Run(b)
    for event in before:
        run.step(event, ANY)
        run.check()
    t0 = run.now  # from here on every attempt's outcome is a success or no verdict
    closed_since = None
    for event in healthy:
        outcome = run.step(event, HEALTHY)
        run.check()
        now = run.now
        if outcome == SUCCESS:
            closed_since = now
        if closed_since is not None:  # once a trial (or any attempt) succeeded: closed for good
            assert b.state(now) == "closed" and b.allows(now)
        if now >= t0 + b.cooldown_s and not b.allows(now):
            # back within one cooldown: it is out only while a trial sent since then is out
            assert b.trial is not None and b.trial_at >= t0 and now - b.trial_at < b.cooldown_s
    # whatever is still out (attempts that will never end included), one cooldown on it is back
    run.step(("advance", b.cooldown_s), HEALTHY)
    run.check()
    assert b.allows(run.now)
    # a trial that ends without a verdict leaves it half-open, and the next request is the trial
    if b.state(run.now) == "half-open":
        trial = b.on_attempt(run.now)
        assert trial is not None and not b.allows(run.now)
        finish(b, trial, CLIENT_GONE, run.now)
        assert b.state(run.now) == "half-open" and b.allows(run.now)
    # ...and one that succeeds closes it
    trial = b.on_attempt(run.now)
    finish(b, trial, SUCCESS, run.now)
    assert b.state(run.now) == "closed" and b.allows(run.now) and b.failures == 0


@settings(max_examples=400, deadline=None)
@given(histories())
def test_any_outcomes_keep_the_counts_consistent_and_never_hold_a_trial_forever(history) -> None:  # type: ignore[no-untyped-def]
    b, first, second = history
    run = Run(b)
    for event in first + second:
        run.step(event, ANY)
        run.check()


def opened(cooldown_s: float = 10.0) -> Breaker:
    b = Breaker(failures_to_open=3, cooldown_s=cooldown_s)
    for t in (0.0, 0.1, 0.2):
        b.on_failure(t)
    assert b.state(0.2) == "open" and not b.allows(10.1)
    return b


def test_each_way_a_trial_can_end() -> None:
    """The half-open trial at t=10.2, ended each way: what the breaker says just after."""
    table = {
        SUCCESS: ("closed", True),
        FAILURE: ("open", False),  # another cooldown from its failure
        TIMEOUT: ("open", False),
        CLIENT_GONE: ("half-open", True),  # no verdict: the next request is the trial
        DRAIN: ("half-open", True),
        EXCEPTION: ("half-open", True),
    }
    for outcome, (state, allows) in table.items():
        b = opened()
        trial = b.on_attempt(10.2)
        assert trial == 1 and not b.allows(10.2)
        assert b.on_attempt(10.3) is None  # a second attempt meanwhile is not a trial
        finish(b, trial, outcome, 10.5)
        assert (b.state(10.5), b.allows(10.5)) == (state, allows), outcome
        assert b.failures == (0 if outcome == SUCCESS else 4 if VERDICT[outcome] is False else 3)


def test_a_trial_that_never_ends_is_over_after_its_bound_and_its_late_end_frees_nothing_newer() -> None:
    b = opened()
    lost = b.on_attempt(10.2)  # never reported (say the server dropped the stream unclosed)
    assert not b.allows(20.1)
    assert b.allows(20.2)  # out for one cooldown: over
    newer = b.on_attempt(20.2)
    assert newer == 2 and not b.allows(20.3)
    b.on_end(lost)  # the lost one turns up after all, without a verdict: the newer stays out
    assert not b.allows(20.3)
    b.on_end(newer)
    assert b.allows(20.3)
    short = Breaker(failures_to_open=1, cooldown_s=10.0, trial_s=2.0)
    short.on_failure(0.0)
    assert short.on_attempt(10.0) == 1 and not short.allows(11.9) and short.allows(12.0)


def test_a_late_verdict_of_an_expired_trial_still_counts() -> None:
    b = opened()
    late = b.on_attempt(10.2)
    newer = b.on_attempt(20.2)
    assert newer == 2
    finish(b, late, SUCCESS, 21.0)  # the long first trial's answer completes: the site answers
    assert b.state(21.0) == "closed" and b.trial is None
    finish(b, newer, CLIENT_GONE, 21.5)
    assert b.state(21.5) == "closed" and b.allows(21.5)
