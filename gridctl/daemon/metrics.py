"""Prometheus metrics of the daemon, in the text exposition format (no dependency)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping

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
        self.expected_miss: dict[str, int] = defaultdict(int)  # model -> requests sent predicted to miss
        self.calibration_probes: dict[tuple[str, str], int] = defaultdict(int)  # (site, model) -> probes

    def render(
        self,
        in_flight: Mapping[str, int],
        up: Mapping[str, int],
        queued: int,
        model_in_flight: Mapping[tuple[str, str], int] | None = None,
        calibration: Mapping[tuple[str, str], tuple[float, float]] | None = None,
        parse_errors: Mapping[str, int] | None = None,
    ) -> str:
        """``model_in_flight``: (site, model) -> requests; ``calibration``: (site, model) ->
        (first, decode) factors now; ``parse_errors``: kind -> requests the HTTP server refused
        before a handler saw them (``HttpServer.parse_errors``)."""
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
        head("gridctl_model_in_flight", "gauge", "Requests in flight to each site, by model.")
        for (site, model), n in sorted((model_in_flight or {}).items()):
            out.append(f"gridctl_model_in_flight{_labels(site=site, model=model)} {n}")
        head(
            "gridctl_calibration_factor",
            "gauge",
            "Observed over table-predicted time at each site (part: first token, decode); 1 is the table.",
        )
        for (site, model), (first, decode) in sorted((calibration or {}).items()):
            for part, value in (("first", first), ("decode", decode)):
                out.append(
                    f"gridctl_calibration_factor{_labels(site=site, model=model, part=part)} {value:.4f}"
                )
        head(
            "gridctl_calibration_probes_total",
            "counter",
            "Tiny generations sent to measure a site's model that had no recent answer to learn from.",
        )
        for (site, model), n in sorted(self.calibration_probes.items()):
            out.append(f"gridctl_calibration_probes_total{_labels(site=site, model=model)} {n}")
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
            "Requests refused: 429 when every site is full or (strict SLO policy) none is predicted"
            " to meet the SLO, 503 when none is eligible.",
        )
        for reason, n in sorted(self.shed.items()):
            out.append(f"gridctl_shed_total{_labels(reason=reason)} {n}")
        head(
            "gridctl_slo_expected_miss_total",
            "counter",
            "Answers from a site not predicted to meet the request's SLO (x-grid-slo: expected-miss: none"
            " was, or the ones that were failed before answering), by model.",
        )
        for model, n in sorted(self.expected_miss.items()):
            out.append(f"gridctl_slo_expected_miss_total{_labels(model=model)} {n}")
        head(
            "gridctl_http_parse_errors_total",
            "counter",
            "Requests refused before routing, malformed (400, 501, 505) or over a limit (413, 414, 431),"
            " by kind.",
        )
        for kind, n in sorted((parse_errors or {}).items()):
            out.append(f"gridctl_http_parse_errors_total{_labels(kind=kind)} {n}")
        head("gridctl_queued", "gauge", "Requests waiting for a site with room.")
        out.append(f"gridctl_queued {queued}")
        return "\n".join(out) + "\n"
