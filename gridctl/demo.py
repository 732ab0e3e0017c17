"""``gridctl demo``: the whole grid on one machine, in a minute.

Starts the lab grid for the example inventory (or the one given) and the
placement daemon, both in this process; sends a short burst of real requests
from two client regions, one in the EU; shows where each went and why; then a
short simulation of grid vs central placement. Everything it starts stops
when it ends, on an error, or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridctl.core.errors import GridctlError

MODEL = "llama-3.1-8b-instruct"
REGIONS = ("us-east", "eu-de")


@dataclass
class Sent:
    region: str
    prompt: str
    status: int
    site: str
    ttft_ms: float | None
    total_ms: float
    why: str


class DaemonThread:
    """The placement daemon on its own event loop in a thread."""

    def __init__(self, inventory: Path, region: str, environ: Mapping[str, str]) -> None:
        from gridctl.daemon.config import DaemonConfig
        from gridctl.daemon.server import Daemon

        config = DaemonConfig(
            inventory=inventory,
            host="127.0.0.1",
            port=0,
            region=region,
            probe_interval_s=1.0,
            access_log="off",  # the demo prints its own table of the requests
        )
        self.daemon = Daemon(config, environ, log=lambda _text: None)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gridctl-demo-daemon", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        ready = asyncio.Event()

        async def main() -> None:
            task = asyncio.create_task(self.daemon.serve(ready))
            await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            await task

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # reported to the caller by start()
            self._error = exc
        finally:
            self._ready.set()
            self._loop.close()

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None or self.daemon.bound_port is None:
            raise GridctlError(f"the demo's daemon did not start: {self._error}")
        return f"http://127.0.0.1:{self.daemon.bound_port}"

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.daemon.request_exit)
            self._thread.join(30)


@contextlib.contextmanager
def running_grid(source: Path, environ: Mapping[str, str], speed: float) -> Iterator[tuple[Path, str]]:
    """A private copy of the inventory, its lab sites and a daemon; (overlay inventory, daemon URL)."""
    from gridctl.inventory.load import load_inventory
    from gridctl.lab.grid import run_lab

    work = Path(tempfile.mkdtemp(prefix="gridctl-demo-"))
    try:
        inv_dir = work / "inventory"
        shutil.copytree(source, inv_dir, ignore=shutil.ignore_patterns(".state", ".gridctl.lock"))
        inv = load_inventory(inv_dir)
        with run_lab(inv, speed=speed, default_region=REGIONS[0], overlay=work / "overlay") as lab:
            assert lab.overlay is not None
            daemon = DaemonThread(lab.overlay, REGIONS[0], environ)
            try:
                yield lab.overlay, daemon.start()
            finally:
                daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def explain_route(base: str, region: str, prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    params: dict[str, str | int] = {
        "model": MODEL,
        "region": region,
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
    }
    # trust_env=False: an HTTP(S)_PROXY in the environment must not catch requests to the local daemon
    return dict(httpx.get(f"{base}/grid/route", params=params, timeout=10, trust_env=False).json())


REASON_KINDS = {"does": "model not served", "round": "over SLO", "last": "unhealthy"}


def _reason_kind(reason: str) -> str:
    if reason.startswith("jurisdiction"):
        return "sovereignty"
    first = reason.split(" ", 1)[0] or "-"
    return REASON_KINDS.get(first, first)


def build_excluded_summary(excluded: list[Mapping[str, Any]]) -> str:
    """ "N excluded (kind n, ...)": N counts each site once; a site excluded for two
    reasons is under both kinds, and the note after ';' says how many are."""
    per_site = [{_reason_kind(r) for r in e["reasons"]} or {"-"} for e in excluded]
    kinds: dict[str, int] = {}
    for site_kinds in per_site:
        for kind in site_kinds:
            kinds[kind] = kinds.get(kind, 0) + 1
    parts = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    several = sum(1 for site_kinds in per_site if len(site_kinds) > 1)
    if several:
        parts += f"; {several} for {'both' if len(kinds) == 2 else 'more than one reason'}"
    return f"{len(excluded)} excluded ({parts})" if excluded else "0 excluded"


def _why(route: Mapping[str, Any], site: str) -> str:
    ranked = route["ranked"]
    pos = next((i for i, r in enumerate(ranked) if r["site"] == site), None)
    out = build_excluded_summary(route["excluded"])
    if pos is None:
        return f"not in the ranking now; {out}"
    r = ranked[pos]
    feasible = sum(1 for x in ranked if x["feasible"])
    if pos == 0:
        lead = "cheapest within the SLO" if r["feasible"] else "fastest (none expected within the SLO)"
    else:
        lead = f"rank {pos + 1} (load moved it)"
    return (
        f"{lead}: {r['gpu']}, predicted {r['predicted_ms']:.0f} ms (rtt {r['rtt_ms']:.1f} ms), "
        f"{r['jurisdiction']}; {feasible} of {len(ranked)} feasible; {out}"
    )


def send_burst(base: str, per_region: int, on_sent: Callable[[Sent], None] | None = None) -> list[Sent]:
    """``per_region`` streaming chat requests from each demo region, all at once."""
    import httpx

    from gridctl.core.placement.perf import count_tokens

    system = "You are the voice agent of a telco. Answer in one short sentence. " * 8
    max_tokens = 12
    shape = count_tokens(f"system:{system}\nuser:caller 0: where is my nearest store?\n")
    routes = {r: explain_route(base, r, shape, max_tokens) for r in REGIONS}

    def one(region: str, i: int) -> Sent:
        prompt = f"caller {i}: where is my nearest store?"
        body = {
            "model": MODEL,
            "stream": True,
            "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        }
        start = time.perf_counter()
        ttft = None
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            json=body,
            headers={"x-grid-region": region},
            timeout=60,
            trust_env=False,
        ) as resp:
            site = resp.headers.get("x-grid-site", "-")
            for chunk in resp.iter_raw():
                if ttft is None and chunk:
                    ttft = (time.perf_counter() - start) * 1000
        sent = Sent(
            region,
            prompt,
            resp.status_code,
            site,
            ttft,
            (time.perf_counter() - start) * 1000,
            _why(routes[region], site),
        )
        if on_sent is not None:
            on_sent(sent)
        return sent

    from concurrent.futures import ThreadPoolExecutor

    jobs = [(r, i) for i in range(per_region) for r in REGIONS]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(lambda job: one(*job), jobs))


def short_simulation(inventory: Path, duration_s: float, seed: int = 1) -> dict[str, Any]:
    """The reference voice-burst scenario, briefly: grid vs central."""
    from gridctl.inventory.load import load_inventory
    from gridctl.sim.compare import SimOptions, plan_run, run_plan

    inv = load_inventory(inventory)
    plan = plan_run(
        inv,
        {},
        SimOptions(profile="voice-burst", policies=("grid", "central"), duration_s=duration_s, seed=seed),
    )
    result, _series = run_plan(plan)
    return result
