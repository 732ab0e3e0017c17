"""``gridctl health``: probe nodes and site endpoints, classify, record.

The service behind the command: it returns rows (one per node, one per site)
and writes the verdicts to the inventory's state so ``site ls`` and the router
know each site's last health.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gridctl.core.health import (
    EndpointProbe,
    Health,
    NodeProbe,
    Status,
    classify_endpoint,
    classify_node,
    unreachable,
)
from gridctl.core.health.rollup import rollup_site
from gridctl.core.health.thresholds import DEFAULT, Thresholds
from gridctl.core.inventory.model import Inventory, Node, Site
from gridctl.fleet.fanout import run_on_nodes, session_task
from gridctl.fleet.probes import probe_endpoints, probe_gpus
from gridctl.fleet.ssh import Session, SshOptions


@dataclass(frozen=True)
class HealthRow:
    kind: str  # "node" | "site"
    site: str
    node: str | None
    health: Health
    seconds: float
    summary: str = ""  # sites: how the status rolls up from endpoint and nodes

    @property
    def status(self) -> Status:
        return self.health.status

    @property
    def name(self) -> str:
        return f"{self.site}/{self.node}" if self.node else self.site

    def to_dict(self, checked_at: str) -> dict[str, Any]:
        readings = self.health.to_dict()
        status, reasons, notes = readings.pop("status"), readings.pop("reasons"), readings.pop("notes")
        return {
            "kind": self.kind,
            "site": self.site,
            "node": self.node,
            "status": status,
            "reasons": reasons,
            "notes": notes,
            "summary": self.summary or None,
            "checked_at": checked_at,
            "seconds": round(self.seconds, 3),
            "readings": readings,
        }


def _node_row(
    node: Node, probe: NodeProbe | None, error: str | None, seconds: float, th: Thresholds
) -> HealthRow:
    if probe is None:
        health = unreachable(error or "unreachable")
    else:
        gpus = node.gpus
        health = classify_node(probe, gpus.model if gpus else None, gpus.count if gpus else None, th)
    return HealthRow("node", node.site, node.name, health, seconds)


class EndpointCheck:
    """The site endpoints' probes, running on a thread of their own while the nodes are
    probed. Start it as soon as the sites are known: before the SSH fan-out's threads
    compete for the interpreter its requests run unhurried, and their round trips
    overlap gridctl's own start-up."""

    def __init__(self, sites: Sequence[Site], environ: Mapping[str, str], timeout: float) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._done = 0
        self._tick: Callable[[], None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gridctl-endpoints")
        self._pending = self._pool.submit(probe_endpoints, sites, environ, timeout, 32, self._one_done)

    def _one_done(self, _site: Site, _probe: EndpointProbe) -> None:
        with self._lock:
            self._done += 1
            tick = self._tick
        if tick is not None:
            tick()

    def watch(self, tick: Callable[[], None]) -> None:
        """Call ``tick`` once per endpoint probed: now for those done already."""
        with self._lock:
            self._tick, done = tick, self._done
        for _ in range(done):
            tick()

    def result(self) -> list[EndpointProbe]:
        return self._pending.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def check_health(
    inv: Inventory,
    nodes: Sequence[Node],
    sites: Sequence[Site],
    opts: SshOptions,
    environ: Mapping[str, str],
    forks: int,
    timeout: float,
    thresholds: Thresholds = DEFAULT,
    on_done: Callable[[], None] | None = None,
    endpoints: EndpointCheck | None = None,
) -> list[HealthRow]:
    """Rows for every node, then every site (its endpoint, rolled up with its checked nodes).

    ``endpoints``: the sites' probes, started earlier (else started here); collected and closed."""
    tick = on_done or (lambda: None)

    def work(session: Session, deadline: float) -> NodeProbe:
        return probe_gpus(session, deadline, thresholds)

    # site endpoints are probed while the nodes are, not after them
    endpoints = endpoints or EndpointCheck(sites, environ, timeout)
    endpoints.watch(tick)
    try:
        node_results = run_on_nodes(
            nodes, session_task(opts, work), forks=forks, timeout=timeout, on_done=lambda _r: tick()
        )
        probes = endpoints.result()
    finally:
        endpoints.close()
    elapsed = time.monotonic() - endpoints.started
    node_rows = [
        _node_row(r.node, r.value, r.unreachable.message if r.unreachable else None, r.seconds, thresholds)
        for r in node_results
    ]
    site_rows = []
    for site, probe in zip(sites, probes, strict=True):
        endpoint = classify_endpoint(probe, [m.name for m in site.models], thresholds)
        mine = [r.status for r in node_rows if r.site == site.name]
        status, why = rollup_site(endpoint.status, mine)
        reasons = list(endpoint.reasons)
        if status != endpoint.status:
            reasons.append(why)
        health = Health(status, tuple(reasons), endpoint.notes, endpoint=probe)
        site_rows.append(HealthRow("site", site.name, None, health, elapsed, summary=why))
    return node_rows + site_rows


def now_iso(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def record_health(inv: Inventory, rows: Sequence[HealthRow], checked_at: str) -> None:
    from gridctl.inventory.state import write_health

    sites = {r.site: _entry(r, checked_at) for r in rows if r.kind == "site"}
    nodes = {r.name: _entry(r, checked_at) for r in rows if r.kind == "node"}
    write_health(inv.root, sites, nodes)


def _entry(row: HealthRow, checked_at: str) -> dict[str, Any]:
    return {"status": row.status.value, "reasons": list(row.health.reasons), "checked_at": checked_at}
