"""The latency model: round-trip time from a client region to a site.

Measured beats estimated. In order:

1. a probe result (``gridctl route probe --from REGION``), else
2. the region's ``latency_ms`` for the site in grid.yaml, else
3. an estimate from great-circle distance::

       rtt_ms = 2 * distance_km * ROUTE_FACTOR / FIBRE_KM_PER_MS + KIND_OVERHEAD_MS[site.kind]

   Light in fibre covers about 200 km per millisecond (refractive index ~1.47);
   fibre routes are longer than the great circle, by a route factor of 1.5 by
   default; each kind of site adds a fixed overhead for the access and
   aggregation hops in front of it (edge sites sit closest to users).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gridctl.core.inventory.model import Location

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
FIBRE_KM_PER_MS = 200.0  # one way, light in glass
ROUTE_FACTOR = 1.5  # fibre path length / great-circle distance
KIND_OVERHEAD_MS = {"edge": 0.5, "central-office": 1.0, "regional-pop": 2.0, "cloud": 5.0}


@dataclass(frozen=True)
class Latency:
    rtt_ms: float
    source: str  # "probe" | "inventory" | "estimate"


def radians_of(loc: Location) -> tuple[float, float, float]:
    """(lat, lon, cos lat) in radians: what the haversine needs, computed once per place."""
    lat = math.radians(loc.lat)
    return lat, math.radians(loc.lon), math.cos(lat)


def haversine_km(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Great-circle distance between two places given by ``radians_of``."""
    h = math.sin((b[0] - a[0]) / 2) ** 2 + a[2] * b[2] * math.sin((b[1] - a[1]) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def great_circle_km(a: Location, b: Location) -> float:
    """Haversine distance on a sphere of the Earth's mean radius."""
    return haversine_km(radians_of(a), radians_of(b))


def rtt_for_km(distance_km: float, kind: str, route_factor: float = ROUTE_FACTOR) -> float:
    return 2 * distance_km * route_factor / FIBRE_KM_PER_MS + KIND_OVERHEAD_MS.get(kind, 0.0)


def estimate_rtt_ms(client: Location, site: Location, kind: str, route_factor: float = ROUTE_FACTOR) -> float:
    return rtt_for_km(great_circle_km(client, site), kind, route_factor)


def region_site_latency(
    client: Location,
    site: Location,
    kind: str,
    inventory_ms: float | None = None,
    probe_ms: float | None = None,
) -> Latency:
    if probe_ms is not None:
        return Latency(probe_ms, "probe")
    if inventory_ms is not None:
        return Latency(inventory_ms, "inventory")
    return Latency(round(estimate_rtt_ms(client, site, kind), 3), "estimate")
