"""CPU per request of the daemon's observability (issue 13 item 4), in process, with timeit.

  .venv/bin/python bench/metrics_cost.py

Rows: the per-request metrics update as the daemon does it (plain dicts, shared across
--workers by a snapshot file apart from requests); the same updates with prometheus_client in
multiprocess mode (PROMETHEUS_MULTIPROC_DIR: an mmap write per value), with ``labels()`` each
time and with the labelled children cached; the request id and the access log line. Printed
in microseconds per request (the best of 5 repeats of 100,000, three times). prometheus_client
is optional (``pip install prometheus_client``); its rows are left out without it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SITE, MODEL = "nwk-co-03", "llama-3.1-8b-instruct"
N = 100_000


def best_us(fn: Callable[[], object]) -> str:
    fn()
    runs = [min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e6 for _ in range(3)]
    return " ".join(f"{r:.2f}" for r in runs)


def ours() -> dict[str, Callable[[], object]]:
    from gridctl.daemon.accesslog import (
        _ENCODE,
        Trace,
        build_line,
        format_line,
        new_request_id,
        parse_request_id,
    )
    from gridctl.daemon.metrics import Metrics

    m = Metrics()

    def update() -> None:  # what Daemon._request_done does to the metrics for one answer
        m.record_request(SITE, MODEL, 200, 0.123, 0.023, 12, 8)

    trace = Trace("0" * 32, "us-east", lambda t: None)
    trace.answered(SITE, trace.start + 0.02, 12, 8, "ok", False)
    trace.finished, trace.model, trace.slo_ms, trace.tried = trace.start + 0.1, MODEL, 500.0, [SITE]

    def line() -> None:  # what the daemon writes
        format_line(trace)

    def line_json() -> None:  # the same text by json (what the daemon did before)
        _ENCODE(build_line(trace))

    def rid() -> None:
        parse_request_id("client-abc.123") or new_request_id()

    return {
        "gridctl metrics update (5 values)": update,
        "request id: the client's, validated": lambda: parse_request_id("client-abc.123"),
        "request id: generated (128 random bits, hex)": new_request_id,
        "access log line (format_line, as the daemon writes it)": line,
        "access log line (build_line + json encode: the same text)": line_json,
        "all of it: request id, trace, metrics, log line": lambda: (
            rid(),
            Trace("0" * 32, "us-east", lambda t: None),
            update(),
            line(),
        ),
    }


def prometheus() -> dict[str, Callable[[], object]]:
    shared = tempfile.mkdtemp(prefix="bench-prom-")  # set before the import: the library reads it then
    atexit.register(shutil.rmtree, shared, True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
    try:
        from prometheus_client import CollectorRegistry, Counter, Histogram
    except ImportError:
        return {}
    from gridctl.daemon.metrics import LATENCY_BUCKETS

    reg = CollectorRegistry()
    req = Counter("r", "r", ["site", "model", "status"], registry=reg)
    prompt = Counter("p", "p", ["site", "model"], registry=reg)
    gen = Counter("g", "g", ["site", "model"], registry=reg)
    e2e = Histogram("e", "e", ["site", "model"], buckets=LATENCY_BUCKETS, registry=reg)
    ttft = Histogram("f", "f", ["site", "model"], buckets=LATENCY_BUCKETS, registry=reg)

    def labelled() -> None:
        req.labels(SITE, MODEL, "2xx").inc()
        prompt.labels(SITE, MODEL).inc(12)
        gen.labels(SITE, MODEL).inc(8)
        e2e.labels(SITE, MODEL).observe(0.123)
        ttft.labels(SITE, MODEL).observe(0.023)

    cache: dict[tuple[str, str], tuple] = {}

    def cached() -> None:
        c = cache.get((SITE, MODEL))
        if c is None:
            c = cache[(SITE, MODEL)] = (
                req.labels(SITE, MODEL, "2xx"),
                prompt.labels(SITE, MODEL),
                gen.labels(SITE, MODEL),
                e2e.labels(SITE, MODEL),
                ttft.labels(SITE, MODEL),
            )
        c[0].inc()
        c[1].inc(12)
        c[2].inc(8)
        c[3].observe(0.123)
        c[4].observe(0.023)

    return {
        "prometheus_client multiprocess, labels() each time (5 values)": labelled,
        "prometheus_client multiprocess, children cached (5 values)": cached,
    }


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; microseconds per request")
    rows = {**ours(), **prometheus()}
    for name, fn in rows.items():
        print(f"| {name} | {best_us(fn)} |")


if __name__ == "__main__":
    main()
