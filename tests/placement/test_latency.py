"""The latency model: documented formula, measured values first."""

from __future__ import annotations

import pytest

from gridctl.core.inventory.model import Location
from gridctl.core.placement.latency import (
    FIBRE_KM_PER_MS,
    KIND_OVERHEAD_MS,
    ROUTE_FACTOR,
    estimate_rtt_ms,
    great_circle_km,
    region_site_latency,
)

LONDON, PARIS = Location(51.5074, -0.1278), Location(48.8566, 2.3522)
NYC, LA = Location(40.7128, -74.0060), Location(34.0522, -118.2437)


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [(LONDON, PARIS, 343.6), (NYC, LA, 3935.7), (NYC, NYC, 0.0), (Location(0, 0), Location(0, 180), 20015.1)],
)
def test_great_circle_distance(a: Location, b: Location, km: float) -> None:
    assert great_circle_km(a, b) == pytest.approx(km, abs=1.0)
    assert great_circle_km(b, a) == pytest.approx(great_circle_km(a, b))


def test_estimate_is_the_documented_formula() -> None:
    d = great_circle_km(NYC, LA)
    assert estimate_rtt_ms(NYC, LA, "edge") == pytest.approx(2 * d * ROUTE_FACTOR / FIBRE_KM_PER_MS + 0.5)
    # about 59 ms round trip across the US plus the cloud overhead
    assert estimate_rtt_ms(NYC, LA, "cloud") == pytest.approx(59.04 + KIND_OVERHEAD_MS["cloud"], abs=0.1)
    assert estimate_rtt_ms(NYC, NYC, "central-office") == KIND_OVERHEAD_MS["central-office"]


def test_measured_beats_inventory_beats_estimate() -> None:
    assert region_site_latency(NYC, LA, "edge", inventory_ms=70.0, probe_ms=64.0).source == "probe"
    assert region_site_latency(NYC, LA, "edge", inventory_ms=70.0).rtt_ms == 70.0
    est = region_site_latency(NYC, LA, "edge")
    assert est.source == "estimate" and est.rtt_ms == pytest.approx(
        estimate_rtt_ms(NYC, LA, "edge"), abs=0.001
    )
