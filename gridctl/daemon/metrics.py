"""Prometheus metrics of the daemon, in the text exposition format (no dependency)."""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(**kv: str) -> str:
    if not kv:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(kv.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value
        self.n += 1


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (site, status) -> count
        self.latency: dict[str, Histogram] = defaultdict(Histogram)
        self.ttft: dict[str, Histogram] = defaultdict(Histogram)
        self.failovers = 0
        self.shed: dict[str, int] = defaultdict(int)  # reason -> count
        self.stream_cuts = 0

    def render(self, in_flight: dict[str, int], up: dict[str, int], queued: int) -> str:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        head("gridctl_requests_total", "counter", "Requests answered, by site and HTTP status.")
        for (site, status), n in sorted(self.requests.items()):
            out.append(f"gridctl_requests_total{_labels(site=site, status=status)} {n}")
        for name, hists, text in (
            (
                "gridctl_request_duration_seconds",
                self.latency,
                "Time from request to the last byte, by site.",
            ),
            (
                "gridctl_time_to_first_byte_seconds",
                self.ttft,
                "Time to the first response byte (TTFT), by site.",
            ),
        ):
            head(name, "histogram", text)
            for site, h in sorted(hists.items()):
                cumulative = 0
                for bound, count in zip((*LATENCY_BUCKETS, float("inf")), h.counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    out.append(f"{name}_bucket{_labels(site=site, le=le)} {cumulative}")
                out.append(f"{name}_sum{_labels(site=site)} {h.total:.6f}")
                out.append(f"{name}_count{_labels(site=site)} {h.n}")
        head("gridctl_in_flight", "gauge", "Requests in flight to each site.")
        for site, n in sorted(in_flight.items()):
            out.append(f"gridctl_in_flight{_labels(site=site)} {n}")
        head("gridctl_site_up", "gauge", "1 when the site is eligible for traffic (healthy, circuit closed).")
        for site, n in sorted(up.items()):
            out.append(f"gridctl_site_up{_labels(site=site)} {n}")
        head("gridctl_failovers_total", "counter", "Requests retried on another site before the first byte.")
        out.append(f"gridctl_failovers_total {self.failovers}")
        head("gridctl_stream_cuts_total", "counter", "Responses cut by a site after the first byte.")
        out.append(f"gridctl_stream_cuts_total {self.stream_cuts}")
        head(
            "gridctl_shed_total",
            "counter",
            "Requests refused: 429 when every site is full, 503 when none is eligible.",
        )
        for reason, n in sorted(self.shed.items()):
            out.append(f"gridctl_shed_total{_labels(reason=reason)} {n}")
        head("gridctl_queued", "gauge", "Requests waiting for a site with room.")
        out.append(f"gridctl_queued {queued}")
        return "\n".join(out) + "\n"
