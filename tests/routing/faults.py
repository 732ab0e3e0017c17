"""The data-plane fault matrix: one fault at a time, requests through a real data plane, counted.

A case is (data plane, fault, streaming or not). Each runs on a fresh lab grid and a fresh
data plane, so that what one case taught the data plane (a site marked down) does not
help the next. The route is lab-east's llama: primaries east-1 (weight 75) and east-2
(25), backups west-1 and west-2. The faults, made once the data plane runs with every
site healthy (except ``unresolvable``, which is in the rendered file from the start):

- ``503-one``: east-1 answers 503 to every completion (its health checks still pass);
- ``503-all``: east-1 and east-2 do;
- ``drop``: east-1 reads each request and closes the connection without answering;
- ``hang``: east-1 reads each request and never answers;
- ``killed``: east-1 is stopped (connections refused, open ones cut);
- ``unresolvable``: east-1's endpoint is ``east-1.invalid`` (never resolves, RFC 6761).

Counted per case: sent; answered, by site (the site the client's answer came from); lost
(an answer that is not a whole 200, or no answer); duplicated (a request that two sites
both answered with a 200 head, or a stream mixing two sites' chunks); tries (requests the
sites received beyond one per request sent: failovers). Used by tests/routing/test_faults.py
(which asserts lost = duplicated = 0) and bench/dataplane_faults.py (which prints them).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fleet.sshd import free_port
from tests.routing.conftest import (
    LLAMA,
    SITES,
    STARTERS,
    Proxy,
    lab_table,
    short_tempdir,
    wait_listening,
    write_lab_inventory,
)
from tests.routing.upstream import Upstream

FAULTS = ("503-one", "503-all", "drop", "hang", "killed", "unresolvable")
REGION = "lab-east"
FAULTY = {"503-all": ("east-1", "east-2")}  # the sites each fault breaks; the others: east-1
READ_TIMEOUT_S = 1  # rendered with --read-timeout: a hung site costs a request 1 s, then it fails over
REQUESTS = 10

# What a data plane is known to lose, with a healthy site left: nothing, now. (HAProxy 2.6
# judges a server by a request's last answer only, so with both primaries answering 503 it lost
# the first two requests until its routes got a tier for their backups: templates/routing/haproxy.cfg.j2.)
KNOWN_LOSS: dict[tuple[str, str], int] = {}


def faulty_sites(fault: str) -> tuple[str, ...]:
    return FAULTY.get(fault, ("east-1",))


def check_case(plane: str, fault: str, stream: bool) -> Counts:
    """Run one case and assert what the suite holds every data plane to."""
    counts = run_case(plane, fault, stream)
    assert counts.sent == REQUESTS
    assert counts.lost == KNOWN_LOSS.get((plane, fault), 0), counts
    assert counts.duplicated == 0, counts
    assert sum(counts.answered.values()) == counts.sent - counts.lost, counts
    # never the broken site; the other primary while one is left, else the backups
    assert set(counts.answered) <= expected_answerers(fault), counts
    return counts


LONG_CHAT = "x" * (100 * 1024)  # one message past HAProxy's own 16 kB buffer, within the rendered 128 kB
LONG_FAULTS = ("503-one", "503-all", "hang")  # a data plane learns of these from an answer only


def check_long_case(plane: str, fault: str, n: int = 4, **render: Any) -> Counts:
    """A case whose failover sends a long chat again after an answer: nothing lost."""
    counts = run_case(plane, fault, False, n, prompt=LONG_CHAT, **render)
    assert (counts.sent, counts.lost, counts.duplicated) == (n, 0, 0), counts
    assert set(counts.answered) <= expected_answerers(fault), counts
    return counts


def expected_answerers(fault: str) -> set[str]:
    """Who may answer: the primaries left healthy, else the backups."""
    return {"west-1", "west-2"} if fault == "503-all" else {"east-2"}


@dataclass
class Counts:
    plane: str
    fault: str
    stream: bool
    sent: int = 0
    answered: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: int = 0
    duplicated: int = 0
    tries: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # what the lost requests got

    def answered_text(self) -> str:
        return ", ".join(f"{site} {n}" for site, n in sorted(self.answered.items())) or "-"


def run_case(
    plane: str,
    fault: str,
    stream: bool,
    n: int = REQUESTS,
    workdir: Path | None = None,
    prompt: str = "hi",
    **render: Any,
) -> Counts:
    """One case of the matrix, on its own lab grid and data plane (both stopped after).
    ``prompt``: each request's one message (a long chat's, past a data plane's buffer);
    ``render``: more RenderOptions for the data plane's config."""
    scratch = workdir or short_tempdir(f"grid-fault-{plane}-")
    sites = {name: Upstream(name) for name in SITES}
    proxy = None
    try:
        endpoints = {s: u.url for s, u in sites.items()}
        if fault == "unresolvable" and plane == "daemon":
            endpoints["east-1"] = endpoints["east-1"].replace("127.0.0.1", "east-1.invalid")
        inventory = write_lab_inventory(scratch / "inventory", endpoints)
        if plane == "daemon":
            proxy = start_daemon(inventory, scratch)
        else:
            table = lab_table(inventory)
            if fault == "unresolvable":
                _rename(table, "east-1", "east-1.invalid")
            proxy = STARTERS[plane](table, scratch, read_timeout_s=READ_TIMEOUT_S, **render)
        for name in faulty_sites(fault):
            if fault in ("503-one", "503-all"):
                sites[name].fault = "503"
            elif fault in ("drop", "hang"):
                sites[name].fault = fault
            elif fault == "killed":
                sites[name].stop()
        started = time.monotonic()
        counts = _send(plane, fault, stream, n, proxy.url, prompt)
        counts.seconds = time.monotonic() - started
        _count_sites(counts, sites, n)
        return counts
    finally:
        if proxy is not None:
            proxy.stop()
        for upstream in sites.values():
            upstream.stop()
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)


def start_daemon(inventory: Path, workdir: Path) -> Proxy:
    """gridctl's own daemon as the fourth "data plane" (bench/dataplane_faults.py --planes
    ...,daemon): the same inventory, lab-east as its clients' region. It ranks sites by its
    own prediction, not by the rendered table's primaries, so who answers is reported, not
    held to the table's order."""
    port = free_port()
    log = workdir / "daemon.log"
    argv = [sys.executable, "-m", "gridctl", "-i", str(inventory), "daemon", "run"]
    argv += ["--listen", f"127.0.0.1:{port}", "--region", REGION, "--probe-interval", "0.5"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"}
        )
    proxy = Proxy("daemon", f"http://127.0.0.1:{port}", inventory, log, proc)
    try:
        wait_listening(port, proc, log, timeout=30.0)
    except RuntimeError:
        proxy.stop()
        raise
    return proxy


def _rename(table: dict[str, Any], site: str, host: str) -> None:
    for r in table["routes"]:
        for s in r["primary"] + r["backup"]:
            if s["site"] == site:
                s["endpoint"]["host"] = host
                s["endpoint"]["url"] = f"{s['endpoint']['scheme']}://{host}:{s['endpoint']['port']}"


def _send(plane: str, fault: str, stream: bool, n: int, url: str, prompt: str) -> Counts:
    counts = Counts(plane, fault, stream)
    body = {"model": LLAMA, "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    with httpx.Client(base_url=url, trust_env=False, timeout=20) as client:
        for i in range(n):
            headers = {
                "x-grid-region": REGION,
                "x-grid-model": LLAMA,
                "x-test-id": f"{plane}/{fault}/{'stream' if stream else 'whole'}/{i}",
            }
            counts.sent += 1
            answer = _one(client, body, headers, stream)
            if isinstance(answer, str):
                counts.lost += 1
                counts.errors.append(answer)
            elif len(answer) > 1:
                counts.duplicated += 1
                counts.answered.update(answer)
            else:
                counts.answered.update(answer)
    return counts


def _one(client: httpx.Client, body: dict[str, Any], headers: dict[str, str], stream: bool) -> set[str] | str:
    """The sites the client's answer came from, or what went wrong."""
    try:
        if not stream:
            resp = client.post("/v1/chat/completions", json=body, headers=headers)
            if resp.status_code != 200:
                return f"{resp.status_code} {resp.text[:120]}"
            return {resp.json()["site"]}
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                resp.read()
                return f"{resp.status_code} {resp.text[:120]}"
            events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return f"stream cut after {len(events)} events"
        return {json.loads(e)["site"] for e in events[:-1]}
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


def _count_sites(counts: Counts, sites: dict[str, Upstream], n: int) -> None:
    answered_by: collections.Counter[str] = collections.Counter()
    for upstream in sites.values():
        answered_by.update(set(upstream.answered))
    counts.duplicated += sum(1 for times in answered_by.values() if times > 1)
    received = sum(len(u.completions()) for u in sites.values())
    counts.tries = max(0, received - n)


def run_matrix(
    planes: tuple[str, ...], n: int = REQUESTS, on_case: Callable[[Counts], None] | None = None
) -> list[Counts]:
    out = []
    for plane in planes:
        for fault in FAULTS:
            for stream in (False, True):
                counts = run_case(plane, fault, stream, n)
                if on_case is not None:
                    on_case(counts)
                out.append(counts)
    return out
