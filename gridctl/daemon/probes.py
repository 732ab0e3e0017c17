"""The daemon's probe rounds: each site's health route, its /metrics (its own load) and, where
traffic teaches nothing, a tiny completion that calibration learns from.

A round probes every site at once, then decays every site's calibration toward its table
row (a site predicted too slow to get traffic comes back) and, every
``calibration_save_s``, keeps what calibration learned in ``.state``. Rounds are jittered so
that daemons do not probe in step. The /metrics text is read by the pure
:func:`gridctl.core.metrics.parse_site_metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Mapping

from gridctl.core.errors import GridctlError
from gridctl.core.metrics import NO_LOAD, parse_site_metrics
from gridctl.core.placement.predict import Shape, predict
from gridctl.core.sitestate import GridState, SiteState
from gridctl.daemon.config import DaemonConfig
from gridctl.daemon.loading import save_calibration
from gridctl.daemon.metrics import Metrics
from gridctl.daemon.relay import completion_tokens
from gridctl.net.client import Pool
from gridctl.net.errors import UpstreamError

CALIBRATION_PROMPT = "Say OK."  # the calibration probe's completion: a short prompt, 4 tokens
CALIBRATION_PROMPT_TOKENS = 2
CALIBRATION_TOKENS = 4


class Prober:
    """Probes the sites of ``book`` (the current :class:`GridState`; a reload replaces it)
    through ``pool``, with each site's key from ``environ``; counts its calibration probes in
    ``metrics``. ``started_at``: the daemon's start (a model never answered is as old)."""

    def __init__(
        self,
        book: Callable[[], GridState],
        pool: Pool,
        config: DaemonConfig,
        environ: Mapping[str, str],
        metrics: Metrics,
        started_at: float,
    ) -> None:
        self.book = book
        self.pool = pool
        self.config = config
        self.environ = environ
        self.metrics = metrics
        self.started_at = started_at

    async def run(self) -> None:
        """Probe rounds until cancelled."""
        saved = time.monotonic()
        while True:
            state = self.book()
            await asyncio.gather(*(self.probe(name) for name in list(state.sites)), return_exceptions=True)
            now = time.monotonic()
            state = self.book()
            state.refresh_factors(now)  # corrections decay toward the table without traffic
            if now - saved >= self.config.calibration_save_s:
                saved = now
                with contextlib.suppress(OSError, GridctlError):
                    await asyncio.to_thread(save_calibration, state)
            interval = self.config.probe_interval_s
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # jitter: daemons do not probe in step

    async def probe(self, name: str) -> None:
        """One site: its health route, then (healthy) its load and its calibration probes."""
        st = self.book().sites.get(name)
        if st is None:
            return
        problem = st.site.api_key_problem(self.environ)
        if problem is not None:  # never sent: the site is out until its key is fixed
            st.probe_ok, st.probe_error, st.probe_rtt_ms = False, problem, None
            return
        headers = list(st.site.auth_headers(self.environ).items())
        ok = await self._health(st, headers)
        if ok and st.metrics_supported:
            if not await self._scrape(st, headers):
                return  # no /metrics: no calibration probe this round either
        elif not ok:
            st.set_load(NO_LOAD)
        if ok:
            await self._calibration_probe(st, headers)

    async def _get(self, st: SiteState, path: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
        """``GET path`` at the site, within the probe timeout: (status, body)."""
        timeout = self.config.probe_timeout_s
        async with asyncio.timeout(timeout):
            r = await self.pool.request(
                "GET",
                st.site.endpoint.rstrip("/") + path,
                headers,
                head_timeout=timeout,
                connect_timeout=timeout,
                tls=st.tls,
            )
            return r.status, await r.read()

    async def _health(self, st: SiteState, headers: list[tuple[str, str]]) -> bool:
        """The site's health route: ``probe_ok``, ``probe_error`` and ``probe_rtt_ms`` set."""
        start = time.monotonic()
        try:
            status, _ = await self._get(st, st.site.health_path, headers)
            ok = 200 <= status < 300
            st.probe_error = None if ok else f"health route returned HTTP {status}"
        except TimeoutError:
            ok = False
            st.probe_error = f"no answer from its health route within {self.config.probe_timeout_s:g} s"
        except UpstreamError as exc:
            ok = False
            st.probe_error = f"{type(exc).__name__}: {exc}"
        st.probe_ok = ok
        st.probe_rtt_ms = round((time.monotonic() - start) * 1000, 3) if ok else None
        return ok

    async def _scrape(self, st: SiteState, headers: list[tuple[str, str]]) -> bool:
        """The site's own load from its /metrics; False when it has none (a 404: never asked
        again)."""
        try:
            status, data = await self._get(st, "/metrics", headers)
            if status == 404:
                st.metrics_supported = False
                st.set_load(NO_LOAD)
                return False
            st.set_load(parse_site_metrics(data.decode("utf-8", "replace")))
        except (UpstreamError, TimeoutError, ValueError):
            st.set_load(NO_LOAD)
        return True

    async def _calibration_probe(self, st: SiteState, headers: list[tuple[str, str]]) -> None:
        """Evidence for calibration where traffic gives none: each model of the site whose last
        answer is older than ``calibration_probe_s`` (or, before any, the daemon's age) gets a
        4-token completion, timed and learnt from like any answer (a site faster than its table
        row, or recovered, is found even though placement stopped choosing it)."""
        cfg = self.config
        every = cfg.calibration_probe_s
        if every <= 0 or st.probe_rtt_ms is None:
            return
        now = time.monotonic()
        for model in list(st.signals):
            cal = st.cal(model)
            last = cal.at if cal.at is not None else self.started_at
            serving = self.book().planner.serving(st.site.name, model)
            if now - last < every or serving is None:
                continue
            sig = st.signals[model]
            shape = Shape(CALIBRATION_PROMPT_TOKENS, CALIBRATION_TOKENS, "given")
            load = max(sig.in_flight, sig.running)
            predicted = predict(serving, shape, st.probe_rtt_ms, load, sig.waiting)
            ask = {"model": model, "prompt": CALIBRATION_PROMPT, "max_tokens": CALIBRATION_TOKENS}
            body = json.dumps({**ask, "stream": False}).encode()
            region = [("x-grid-client-region", cfg.region)] if cfg.region else []
            send = [*headers, ("content-type", "application/json"), *region]
            start = time.monotonic()
            timeout = cfg.probe_timeout_s + predicted.e2e_ms * 3 / 1000.0
            try:
                async with asyncio.timeout(timeout):
                    r = await self.pool.request(
                        "POST",
                        st.site.endpoint.rstrip("/") + "/v1/completions",
                        send,
                        body,
                        head_timeout=timeout,
                        connect_timeout=cfg.probe_timeout_s,
                        tls=st.tls,
                    )
                    data = await r.read()
            except (TimeoutError, UpstreamError):
                continue  # the health probe and the breaker judge the site; this only measures
            if 200 <= r.status < 300:
                end = time.monotonic()
                tokens = completion_tokens(data)
                st.learn(model, predicted, end, None, (end - start) * 1000.0, tokens)
                self.metrics.calibration_probes[(st.site.name, model)] += 1
