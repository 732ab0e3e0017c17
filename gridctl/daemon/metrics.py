"""Prometheus metrics of the daemon, in the text exposition format, one view across workers.

Each worker counts in plain dicts (under a microsecond per request: no lock, no mmap write);
with ``daemon run --workers N`` each also writes its counters to ``<metrics_dir>/<pid>.json``
(atomically: a temporary file, then a rename) once a second and whenever it answers a scrape,
and a scrape sums its own live counters with the other workers' last files. Every worker's
share only grows (a file is replaced by a later one, never removed while the daemon runs; a
worker's live counters are at least what it last wrote), so a total never goes backwards,
whichever worker a scrape reaches; the other workers' shares are at most a second old.
Gauges (in flight, queued) are summed over the workers still alive.

Names follow vLLM's (``vllm:e2e_request_latency_seconds``, ``vllm:time_to_first_token_seconds``,
``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``) under the ``gridctl_`` prefix;
the README maps them to OpenTelemetry GenAI and the Gateway API Inference Extension.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# to the longest a site may take (the read timeout, 300 s)
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

Key = tuple[str, ...] | str  # a label's value alone, or the values of several labels in order


def _key(k: Key) -> tuple[str, ...]:
    return (k,) if isinstance(k, str) else k


# name -> (label names, help): the counters, in the order they are rendered
COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "gridctl_requests_total": (
        ("site", "model", "status"),
        "Inference requests answered, by the site that answered (none: the daemon itself), model"
        " (other: not in the inventory) and status class (499, the client left first, counts as 4xx).",
    ),
    "gridctl_prompt_tokens_total": (
        ("site", "model"),
        "Prompt tokens of the answers, as the site's usage reported them.",
    ),
    "gridctl_generation_tokens_total": (
        ("site", "model"),
        "Completion tokens of the answers (usage, else the stream's token events).",
    ),
    "gridctl_site_failures_total": (
        ("site",),
        "Tries that failed before a byte of the answer reached the client (connect, 5xx, broken"
        " head, a whole answer broken off): each led to a failover or a 502.",
    ),
    "gridctl_failovers_total": (
        ("site",),
        "Requests retried on another site before the first byte, by the site that failed.",
    ),
    "gridctl_stream_cuts_total": (("site", "model"), "Responses cut by a site after the first byte."),
    "gridctl_answers_too_large_total": (
        ("site",),
        "Non-streamed answers over --max-answer, refused with 502 (answer_too_large), by site.",
    ),
    "gridctl_shed_total": (
        ("reason",),
        "Requests refused: 429 when every site is full or (strict SLO policy) none is predicted"
        " to meet the SLO, 503 when none is eligible.",
    ),
    "gridctl_slo_expected_miss_total": (
        ("model",),
        "Answers from a site not predicted to meet the request's SLO (x-grid-slo: expected-miss: none"
        " was, or the ones that were failed before answering), by model.",
    ),
    "gridctl_calibration_probes_total": (
        ("site", "model"),
        "Tiny generations sent to measure a site's model that had no recent answer to learn from.",
    ),
    "gridctl_access_log_dropped_lines_total": (
        (),
        "Access log lines dropped because its reader (a pipe, a file) had not taken the earlier ones.",
    ),
    "gridctl_http_parse_errors_total": (
        ("kind",),
        "Requests and connections the HTTP server refused or ended before routing, by kind: malformed"
        " (400, 501, 505), over a limit (413, 414, 431), too slow (head_timeout, body_timeout,"
        " send_timeout, idle_timeout: a connection that sent nothing), too_many_connections.",
    ),
}
HISTOGRAMS: dict[str, tuple[tuple[str, ...], str]] = {
    "gridctl_e2e_request_latency_seconds": (
        ("site", "model"),
        "Time from the request to the answer's last byte, by the site that answered.",
    ),
    "gridctl_time_to_first_token_seconds": (
        ("site", "model"),
        "Time from the request to a streamed answer's first token event (TTFT).",
    ),
}


def _labels(names: Iterable[str], values: Iterable[str], extra: str = "") -> str:
    pairs = sorted(zip(names, values, strict=True))  # in name order, as before the rename
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    if extra:
        inner = f"{inner},{extra}" if inner else extra
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Histogram:
    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value
        self.n += 1

    def add(self, counts: list[int], total: float, n: int) -> None:
        if len(counts) == len(self.counts):  # a file from a daemon with other buckets: skipped
            self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
            self.total += total
            self.n += n


class Metrics:
    """One worker's counters. The proxy and the daemon update the named dicts directly."""

    def __init__(self) -> None:
        self.counters: dict[str, defaultdict[Key, float]] = {name: defaultdict(int) for name in COUNTERS}
        self.histograms: dict[str, defaultdict[Key, Histogram]] = {
            name: defaultdict(Histogram) for name in HISTOGRAMS
        }
        c, h = self.counters, self.histograms
        self.requests = c["gridctl_requests_total"]  # (site, model, status class)
        self.prompt_tokens = c["gridctl_prompt_tokens_total"]  # (site, model)
        self.generation_tokens = c["gridctl_generation_tokens_total"]  # (site, model)
        self.site_failures = c["gridctl_site_failures_total"]  # (site,)
        self.failovers = c["gridctl_failovers_total"]  # (site,)
        self.stream_cuts = c["gridctl_stream_cuts_total"]  # (site, model)
        self.too_large = c["gridctl_answers_too_large_total"]  # (site,)
        self.shed = c["gridctl_shed_total"]  # (reason,)
        self.expected_miss = c["gridctl_slo_expected_miss_total"]  # (model,)
        self.calibration_probes = c["gridctl_calibration_probes_total"]  # (site, model)
        self.log_dropped = c["gridctl_access_log_dropped_lines_total"]  # ()
        self.e2e = h["gridctl_e2e_request_latency_seconds"]  # (site, model)
        self.ttft = h["gridctl_time_to_first_token_seconds"]  # (site, model)

    def record_request(
        self,
        site: str | None,
        model: str,
        status: int,
        e2e_s: float,
        ttft_s: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        """One inference request ended (its answer complete, cut, or its client gone)."""
        where = site or "none"
        self.requests[(where, model, STATUS_CLASSES.get(status // 100, "5xx"))] += 1
        if site is None:
            return
        key = (site, model)
        self.e2e[key].observe(e2e_s)
        if ttft_s is not None:
            self.ttft[key].observe(ttft_s)
        if prompt_tokens:
            self.prompt_tokens[key] += prompt_tokens
        if completion_tokens:
            self.generation_tokens[key] += completion_tokens

    # -- one view across workers ---------------------------------------------------------

    def snapshot(self, parse_errors: Mapping[str, int], gauges: Mapping[str, Any]) -> dict[str, Any]:
        """What this worker has counted, as JSON-able data (``parse_errors``: the HTTP server's
        refusals; ``gauges``: in_flight, model_in_flight, queued now)."""
        counters = {name: [[*_key(k), v] for k, v in d.items()] for name, d in self.counters.items() if d}
        if parse_errors:
            counters["gridctl_http_parse_errors_total"] = [[k, v] for k, v in parse_errors.items()]
        histograms = {
            name: [[*_key(k), h.counts, h.total, h.n] for k, h in d.items()]
            for name, d in self.histograms.items()
        }
        return {"counters": counters, "histograms": histograms, "gauges": dict(gauges)}

    def merged(self, others: Iterable[Mapping[str, Any]], parse_errors: Mapping[str, int]) -> Metrics:
        """A new Metrics: this worker's counts plus the others' snapshots."""
        total = Metrics()
        for name, d in self.counters.items():
            for k, v in d.items():
                total.counters[name][_key(k)] += v
        for kind, n in parse_errors.items():
            total.counters["gridctl_http_parse_errors_total"][(kind,)] += n
        for name, hists in self.histograms.items():
            for k, h in hists.items():
                total.histograms[name][_key(k)].add(h.counts, h.total, h.n)
        for snap in others:
            for name, rows in snap.get("counters", {}).items():
                if name in total.counters:
                    for *k, v in rows:
                        total.counters[name][tuple(k)] += v
            for name, rows in snap.get("histograms", {}).items():
                if name in total.histograms:
                    for *k, counts, s, n in rows:
                        total.histograms[name][tuple(k)].add(counts, s, n)
        return total

    # -- the exposition ----------------------------------------------------------------

    def render(
        self,
        in_flight: Mapping[str, int],
        up: Mapping[str, int],
        queued: int,
        model_in_flight: Mapping[tuple[str, str], int] | None = None,
        calibration: Mapping[tuple[str, str], tuple[float, float]] | None = None,
    ) -> str:
        """``model_in_flight``: (site, model) -> requests; ``calibration``: (site, model) ->
        (first, decode) factors now. The parse errors are a counter (:meth:`merged`)."""
        out: list[str] = []
        self._render_counters(out)
        self._render_histograms(out)
        _render_gauges(out, in_flight, up, queued, model_in_flight or {}, calibration or {})
        return "\n".join(out) + "\n"

    def _render_counters(self, out: list[str]) -> None:
        for name, (labels, text) in COUNTERS.items():
            _head(out, name, "counter", text)
            for k, n in sorted((_key(k), n) for k, n in self.counters[name].items()):
                out.append(f"{name}{_labels(labels, k)} {int(n) if float(n).is_integer() else n}")

    def _render_histograms(self, out: list[str]) -> None:
        for name, (labels, text) in HISTOGRAMS.items():
            _head(out, name, "histogram", text)
            rows = sorted(((_key(k), h) for k, h in self.histograms[name].items()), key=lambda kh: kh[0])
            for k, h in rows:
                cumulative = 0
                for bound, count in zip((*LATENCY_BUCKETS, float("inf")), h.counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    bucket = _labels(labels, k, f'le="{le}"')
                    out.append(f"{name}_bucket{bucket} {cumulative}")
                out.append(f"{name}_sum{_labels(labels, k)} {h.total:.6f}")
                out.append(f"{name}_count{_labels(labels, k)} {h.n}")


def _head(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")


def _render_gauges(
    out: list[str],
    in_flight: Mapping[str, int],
    up: Mapping[str, int],
    queued: int,
    model_in_flight: Mapping[tuple[str, str], int],
    calibration: Mapping[tuple[str, str], tuple[float, float]],
) -> None:
    """The gauges: what is in flight now (all workers), calibration, which sites are up, the queue."""
    _head(out, "gridctl_in_flight", "gauge", "Requests in flight to each site (all workers).")
    for site, n in sorted(in_flight.items()):
        out.append(f"gridctl_in_flight{_labels(('site',), (site,))} {n}")
    _head(out, "gridctl_model_in_flight", "gauge", "Requests in flight to each site, by model (all workers).")
    for (site, model), n in sorted(model_in_flight.items()):
        out.append(f"gridctl_model_in_flight{_labels(('site', 'model'), (site, model))} {n}")
    _head(
        out,
        "gridctl_calibration_factor",
        "gauge",
        "Observed over table-predicted time at each site (part: first token, decode); 1 is the table.",
    )
    for (site, model), (first, decode) in sorted(calibration.items()):
        for part, value in (("first", first), ("decode", decode)):
            where = _labels(("site", "model", "part"), (site, model, part))
            out.append(f"gridctl_calibration_factor{where} {value:.4f}")
    _head(
        out, "gridctl_site_up", "gauge", "1 when the site is eligible for traffic (healthy, circuit closed)."
    )
    for site, n in sorted(up.items()):
        out.append(f"gridctl_site_up{_labels(('site',), (site,))} {n}")
    _head(out, "gridctl_queued", "gauge", "Requests waiting for a site with room (all workers).")
    out.append(f"gridctl_queued {queued}")


def sum_gauges(
    own: Mapping[str, Any], others: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, int], dict[tuple[str, str], int], int]:
    """(in flight by site, in flight by site and model, queued) summed over workers' gauges."""
    in_flight: dict[str, int] = defaultdict(int)
    by_model: dict[tuple[str, str], int] = defaultdict(int)
    queued = 0
    for g in (own, *others):
        for site, n in g.get("in_flight", {}).items():
            in_flight[site] += n
        for site, model, n in g.get("model_in_flight", []):
            by_model[(site, model)] += n
        queued += g.get("queued", 0)
    return dict(in_flight), dict(by_model), queued


# -- the shared directory (``--workers``) -------------------------------------------------


def write_snapshot(directory: Path, pid: int, snapshot: Mapping[str, Any]) -> None:
    """This worker's snapshot as ``<pid>.json``, whole or not at all (rename)."""
    tmp = directory / f".{pid}.tmp"
    tmp.write_text(json.dumps(snapshot, separators=(",", ":")))
    os.replace(tmp, directory / f"{pid}.json")


def load_snapshots(directory: Path, pid: int) -> list[tuple[int, dict[str, Any]]]:
    """The other workers' snapshots: (their pid, snapshot); an unreadable one is skipped."""
    out = []
    for path in directory.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            other = int(path.stem)
            if other != pid:
                out.append((other, json.loads(path.read_text())))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
