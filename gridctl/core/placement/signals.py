"""Live signals: what is known of each site for one model at decision time (health, the
breaker, load, calibration), kept in place by the daemon and the simulator and read by a
decision as its snapshot. Pure data.
"""

from __future__ import annotations

from collections.abc import Mapping

from gridctl.core.placement.predict import Calibration


class SiteSignals:
    """What is known of one site for one model at decision time; every field optional.

    The daemon and the simulator each keep one per (model, site) and update it in
    place as requests start and end, probes answer and calibration learns; a
    decision reads them as its snapshot."""

    __slots__ = ("health", "open", "in_flight", "running", "waiting", "first_factor", "decode_factor")

    def __init__(
        self,
        health: str | None = None,
        open: bool = False,
        in_flight: int = 0,
        running: int = 0,
        waiting: int = 0,
        first_factor: float = 1.0,
        decode_factor: float = 1.0,
    ) -> None:
        self.health = health  # last status; failed / unreachable exclude the site
        self.open = open  # the circuit breaker refuses requests
        self.in_flight = in_flight  # this daemon's requests in flight there for the model
        self.running = running  # the site's own running count for the model (its /metrics), 0 unknown
        self.waiting = waiting  # the site's own queue for the model
        self.first_factor = first_factor  # calibration at decision time (1.0: the table's row)
        self.decode_factor = decode_factor

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"SiteSignals({fields})"


def write_signals(
    sig: SiteSignals,
    *,
    health: str | None,
    open: bool,
    in_flight: int,
    running: int,
    waiting: int,
    calibration: Calibration,
    now: float,
) -> SiteSignals:
    """Write one site's plain readings for one model into ``sig`` (in place) and return it: the
    one snapshot writer of the daemon and the simulator.

    ``open``: the breaker refuses a request now (open, or half-open with its trial out);
    ``calibration`` is read at ``now`` (decayed toward the prior since its last evidence)."""
    sig.health = health
    sig.open = open
    sig.in_flight = in_flight
    sig.running = running
    sig.waiting = waiting
    sig.first_factor, sig.decode_factor = calibration.factors(now)
    return sig


Live = Mapping[str, SiteSignals]  # site -> signals: the snapshot a decision reads
NO_LIVE: Live = {}
IDLE = SiteSignals()


def health_live(health: Mapping[str, str]) -> dict[str, SiteSignals]:
    """A snapshot with recorded health only (``route test``, ``route render``)."""
    return {name: SiteSignals(health=status) for name, status in health.items()}
