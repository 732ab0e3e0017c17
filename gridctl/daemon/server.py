"""The daemon process: load -> serve -> reload on SIGHUP or inventory change -> drain on SIGTERM.

uvicorn's shape: ``Daemon(config)`` holds plain data until ``serve()``;
``startup()`` loads the inventory and binds; the main loop runs probes and
watches the inventory; a signal sets a flag and ``shutdown()`` drains.

A reload goes per file: a file broken on disk keeps its last good version while the
other files' changes take effect (an incident drain reaches the daemon past an unrelated
typo); ``/grid/status`` lists such files under ``stale``, with their problems.

What calibration learns (per site and model) is kept across a reload (the new
``GridState`` takes the old one's) and across restarts in the inventory's
``.state/calibration.json``: written every ``calibration_save_s`` and on
shutdown, read at start-up. Each probe round also decays every site's factors
toward its table row, so a site predicted too slow to get traffic comes back.

SIGHUP also rereads the front door's files: ``--tokens`` (a token is rotated without a restart)
and ``--tls-cert``/``--tls-key``/``--tls-client-ca`` (new connections get the new ones). A file
that fails to load keeps what was loaded before, and the log says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from gridctl.core.metrics import NO_LOAD, parse_site_metrics
from gridctl.daemon.accesslog import (
    AccessLog,
    Trace,
    new_request_id,
    open_access_log,
    parse_request_id,
    say,
    stderr_writer,
)
from gridctl.daemon.admission import RoomQueue, parse_count, parse_placement
from gridctl.daemon.config import DaemonConfig
from gridctl.daemon.metrics import Metrics, alive, load_snapshots, sum_gauges, write_snapshot
from gridctl.daemon.openai_api import (
    MODELS_PATH,
    build_created,
    build_model,
    error_json,
    model_id,
    models_response,
)
from gridctl.daemon.proxy import INFERENCE_PATHS, Proxy
from gridctl.daemon.relay import completion_tokens
from gridctl.daemon.state import GridState, SiteState, parse_calibration
from gridctl.daemon.tokens import Tokens, load_tokens
from gridctl.errors import GridctlError, InventoryError, UsageError
from gridctl.net.client import Pool, UpstreamError
from gridctl.net.server import HttpServer, Request, Response, ServerConfig, StreamingResponse, json_response
from gridctl.net.tls import RotatingContext, TlsFileError, load_server_context
from gridctl.placement.engine import DEFAULT_SHAPE, decision_dict
from gridctl.placement.predict import MAX_TOKENS, OutputTokens, Shape, predict

CALIBRATION_PROMPT = "Say OK."  # the calibration probe's completion: a short prompt, 4 tokens
CALIBRATION_PROMPT_TOKENS = 2
CALIBRATION_TOKENS = 4

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


def load_state(config: DaemonConfig, previous: GridState | None = None) -> GridState:
    """The inventory and what ``.state`` holds; a first load (no ``previous``) also reads
    the calibration an earlier run wrote, a reload keeps the running one's.

    A first load must be valid as a whole. A reload goes per file: a file that is broken on
    disk runs on its last good version (the one ``previous`` was built from; a new broken file
    is left out) while the other files' changes take effect; ``GridState.stale`` says which
    and why. When even that does not validate, InventoryError, and the caller keeps running."""
    from gridctl.inventory.load import load_keeping_last_good, load_partial
    from gridctl.inventory.state import health_by_site, load_calibration, probe_rtts

    stale: dict[str, dict[str, Any]] = {}
    if previous is None:
        loaded = load_partial(config.inventory)
        if loaded.problems:
            raise InventoryError(list(loaded.problems), str(config.inventory))
    else:
        loaded, broken = load_keeping_last_good(config.inventory, previous.files)
        for rel, problems in broken.items():
            kept = "last good version" if rel in previous.files else "left out (no good version yet)"
            stale[rel] = {"file": rel, "running": kept, "problems": [str(p) for p in problems]}
    inv = loaded.inventory
    assert inv is not None
    if config.region and inv.region(config.region) is None:
        raise GridctlError(
            f"no client region '{config.region}' in {config.inventory}",
            hint=f"regions: {', '.join(r.name for r in inv.grid.regions)}",
        )
    calibration = None
    if previous is None:
        calibration = parse_calibration(load_calibration(inv.root), time.monotonic(), time.time())
    return GridState(
        inv,
        config,
        probe_rtts(inv.root),
        health_by_site(inv.root),
        previous,
        calibration,
        files=loaded.texts,
        stale=stale,
    )


def load_listener_tls(config: DaemonConfig) -> ssl.SSLContext | None:
    """The listener's TLS context from --tls-cert/--tls-key/--tls-client-ca; None without them."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    ca = str(config.tls_client_ca) if config.tls_client_ca is not None else None
    try:
        return load_server_context(str(config.tls_cert), str(config.tls_key), ca)
    except TlsFileError as exc:
        raise UsageError(
            str(exc), hint="give PEM files: the certificate chain, its key, the client CA"
        ) from None


def load_client_tokens(config: DaemonConfig) -> Tokens:
    """The tokens that let a client in: GRIDCTL_DAEMON_TOKEN's and --tokens' hashes."""
    digests = load_tokens(config.tokens_file) if config.tokens_file is not None else ()
    return Tokens(digests, config.token)


def save_calibration(state: GridState) -> None:
    """What calibration learned, into ``.state/calibration.json`` (merged with other workers')."""
    from gridctl.inventory.state import write_calibration

    now, wall = time.monotonic(), round(time.time(), 3)
    entries = {
        site: {model: {**entry, "written_at": wall} for model, entry in models.items()}
        for site, models in state.calibration_dict(now).items()
    }
    if entries:
        write_calibration(state.inv.root, entries)


def raise_file_limit() -> tuple[int, int]:
    """RLIMIT_NOFILE's soft limit raised to its hard limit (systemd and most shells start a
    process at 1,024 whatever the hard limit): (the soft limit before, after)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    target = hard if hard != infinite else 1 << 20
    if soft != infinite and soft < target:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS caps it below the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    after = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft, (1 << 20 if after == infinite else after)


def client_connections(files: int) -> int:
    """Client connections served at once under a limit of ``files`` open files: half, less a
    reserve for the listening sockets, the inventory and logs; each client in flight holds a
    connection to its site too (and the pool keeps some idle)."""
    return max(16, (files - 64) // 2)


def inventory_signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    paths = [root / "grid.yaml", *sorted((root / "sites").glob("*.y*ml"))]
    sig = []
    for p in paths:
        with contextlib.suppress(OSError):
            st = p.stat()
            sig.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(sig)


class Daemon:
    def __init__(
        self, config: DaemonConfig, environ: Mapping[str, str] | None = None, log: Any = None
    ) -> None:
        self.config = config
        self.environ = dict(environ if environ is not None else os.environ)
        self.log = log or _log_line
        self._log_handler = _SayHandler()
        self.metrics = Metrics()
        self.room = RoomQueue(config.queue_max)  # requests waiting for a site with room
        self.outputs = OutputTokens()  # each model's observed answer lengths
        self.state: GridState
        self.should_exit: asyncio.Event | None = None  # created in serve(), inside the loop
        self.reload_requested = False
        self.started = False
        self.started_at = time.monotonic()
        self.bound_port: int | None = None
        self.access_log: AccessLog | None = None
        self.tokens = Tokens()
        self.tls: RotatingContext | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        self.should_exit = asyncio.Event()
        logging.getLogger("gridctl").addHandler(self._log_handler)
        self.access_log = open_access_log(self.config.access_log)
        self.state = load_state(self.config)
        self._signature = inventory_signature(self.config.inventory)
        cfg = self.config
        self.tokens = load_client_tokens(cfg)
        listener = load_listener_tls(cfg)
        self.tls = RotatingContext(listener) if listener is not None else None
        before, files = raise_file_limit()
        clients = client_connections(files)
        self.pool = Pool(connect_timeout=cfg.connect_timeout_s)
        self.proxy = Proxy(
            lambda: self.state, self.metrics, self.pool, cfg, self.environ, self.room, self.outputs
        )
        self.routes = self._routes()
        self.http = HttpServer(
            self._dispatch,
            ServerConfig(
                cfg.host,
                cfg.port,
                max_body=cfg.max_body_bytes,
                reuse_port=cfg.workers > 1,
                gate=self._gate if cfg.gated else None,
                head_timeout_s=cfg.client_head_s,
                body_timeout_s=cfg.client_body_s,
                send_timeout_s=cfg.send_timeout_s,
                max_connections=clients,
                error_headers=_request_id_header,
                tls=self.tls,
            ),
        )
        await self.http.start()
        self.bound_port = self.http.port
        # what start-up built (modules, inventory, tables) lives as long as the process: out of
        # the collector's sight, the collections each request's garbage triggers stay small
        gc.collect()
        gc.freeze()
        self.log(
            f"gridctl daemon listening on {self.http.url} "
            f"(region {cfg.region or '-'}, {len(self.state.sites)} sites, pid {os.getpid()})"
        )
        raised = f"raised from {before}" if files > before else "its soft limit was not raised"
        self.log(
            f"open files: up to {files} ({raised}); up to {clients} client connections, then 503 to new ones"
        )
        self._install_signals()
        tasks = [
            asyncio.create_task(self._probe_loop()),
            asyncio.create_task(self._watch_loop()),
            asyncio.create_task(self._flush_loop()),
        ]
        self.started = True
        if ready is not None:
            ready.set()
        try:
            await self.should_exit.wait()  # set by a signal or request_exit()
        finally:
            for t in tasks:
                t.cancel()
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish within the bound, close."""
        left = await self.http.stop(grace=self.config.drain_timeout_s)
        pid = os.getpid()
        self.log(
            f"gridctl daemon stopped (pid {pid}; {left} requests still in flight were cut)"
            if left
            else f"gridctl daemon stopped (pid {pid})"
        )
        self.pool.close()
        self._save_calibration()
        self._publish_metrics()  # this worker's last counts, for the workers still serving
        if self.access_log is not None:
            self.access_log.close()
        writer = stderr_writer()
        if writer is not None:  # the last lines out (bounded: a stalled reader keeps none of them)
            writer.close()
        logging.getLogger("gridctl").removeHandler(self._log_handler)

    def _save_calibration(self) -> None:
        """Keep what calibration learned for the next start (a failure is logged, not fatal)."""
        try:
            save_calibration(self.state)
        except (OSError, GridctlError) as exc:
            self.log(f"could not keep calibration in {self.state.inv.root}/.state: {exc}")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        # only the main thread can take signals (the demo runs the daemon in a thread)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, self.request_exit)
            loop.add_signal_handler(signal.SIGINT, self.request_exit)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def request_exit(self) -> None:
        if self.should_exit is not None:
            self.should_exit.set()

    def request_reload(self) -> None:
        self.reload_requested = True

    async def reload(self, why: str) -> None:
        try:
            new = await asyncio.to_thread(load_state, self.config, self.state)
        except GridctlError as exc:
            self.log(f"reload ({why}) failed, keeping the running inventory: {exc.message}")
            for problem in getattr(exc, "problems", [])[:20]:
                self.log(f"  {problem}")
            return
        self.state = new  # in-flight requests keep the snapshot they started with
        for entry in new.stale.values():
            n = len(entry["problems"])
            self.log(
                f"{entry['file']} is broken on disk ({n} problem{'s' if n != 1 else ''}); "
                f"running: {entry['running']}"
            )
            for problem in entry["problems"][:20]:
                self.log(f"  {problem}")
        stale = f", {len(new.stale)} stale file{'s' if len(new.stale) != 1 else ''}" if new.stale else ""
        self.log(f"reloaded inventory ({why}): {len(new.sites)} sites{stale}")

    def reload_front(self) -> None:
        """Reread --tokens and the listener's TLS files; one that fails keeps the running one."""
        cfg = self.config
        if cfg.tokens_file is not None:
            try:
                self.tokens = load_client_tokens(cfg)
                self.log(f"reloaded {len(self.tokens.digests)} token hashes from {cfg.tokens_file}")
            except GridctlError as exc:
                self.log(f"reload of --tokens failed, keeping the running tokens: {exc.message}")
        if self.tls is not None:
            try:
                listener = load_listener_tls(cfg)
            except GridctlError as exc:
                self.log(f"reload of the TLS files failed, keeping the running certificate: {exc.message}")
            else:
                assert listener is not None
                self.tls.current = listener  # for new connections; open ones keep theirs
                self.log(f"reloaded the TLS certificate from {cfg.tls_cert}")

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_poll_s if not self.reload_requested else 0.05)
            sig = inventory_signature(self.config.inventory)
            if self.reload_requested:
                self.reload_requested = False
                self._signature = sig
                self.reload_front()
                await self.reload("SIGHUP")
            elif sig != self._signature:
                self._signature = sig
                await self.reload("inventory changed")

    async def _flush_loop(self) -> None:
        """Write the access log's gathered lines, and this worker's counters for the others."""
        published = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            if self.access_log is not None:
                self.access_log.flush()
            now = time.monotonic()
            if self.config.metrics_dir is not None and now - published >= self.config.metrics_publish_s:
                published = now
                self._publish_metrics()

    def _publish_metrics(self) -> None:
        if self.config.metrics_dir is None:
            return
        try:
            write_snapshot(self.config.metrics_dir, os.getpid(), self._snapshot())
        except OSError as exc:
            self.log(f"could not write this worker's metrics to {self.config.metrics_dir}: {exc}")

    def _snapshot(self) -> dict[str, Any]:
        state = self.state
        gauges = {
            "in_flight": {n: s.in_flight for n, s in state.sites.items()},
            "model_in_flight": [
                [n, m, sig.in_flight] for n, s in state.sites.items() for m, sig in s.signals.items()
            ],
            "queued": self.room.queued,
        }
        if self.access_log is not None:
            self.metrics.log_dropped[()] = self.access_log.dropped
        return self.metrics.snapshot(self.http.parse_errors, gauges)

    # -- each inference request: its id, its counters, its access log line ----------------

    async def _inference(self, request: Request) -> Response | StreamingResponse:
        headers = request.headers
        rid = parse_request_id(headers.get("x-request-id")) or new_request_id()
        headers["x-request-id"] = rid  # what the site gets
        region = headers.get("x-grid-region") or self.config.region
        trace = Trace(rid, region[:200] if region else None, self._request_done)
        try:
            resp = await self.proxy.handle(request, trace)
        except asyncio.CancelledError:  # the client left before the answer's head
            trace.end(499)
            raise
        except Exception:
            trace.end(500)  # the server answers 500 and logs the traceback
            raise
        resp.headers = (*(h for h in resp.headers if h[0] != "x-request-id"), ("x-request-id", rid))
        if not isinstance(resp, StreamingResponse):  # a stream ends when its relay does
            trace.end(resp.status)
        return resp

    def _request_done(self, trace: Trace) -> None:
        model = trace.model
        label = model if model in self.state.models else "other" if model is not None else "none"
        # a request whose client left counts as 499 (nginx's "client closed request"), one a site
        # cut after its head as 502: neither succeeded, whatever status its head said
        outcome = trace.outcome
        status = 499 if outcome == "client-gone" else 502 if outcome == "cut" else trace.status
        self.metrics.record_request(
            trace.site,
            label,
            status,
            trace.total_s,
            trace.ttft_s,
            trace.prompt_tokens,
            trace.completion_tokens,
        )
        if self.access_log is not None:
            self.access_log.write(trace)

    async def _probe_loop(self) -> None:
        saved = time.monotonic()
        while True:
            await asyncio.gather(
                *(self._probe(name) for name in list(self.state.sites)), return_exceptions=True
            )
            now = time.monotonic()
            self.state.refresh_factors(now)  # corrections decay toward the table without traffic
            if now - saved >= self.config.calibration_save_s:
                saved = now
                with contextlib.suppress(OSError, GridctlError):
                    await asyncio.to_thread(save_calibration, self.state)
            interval = self.config.probe_interval_s
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # jitter: daemons do not probe in step

    async def _probe(self, name: str) -> None:
        st = self.state.sites.get(name)
        if st is None:
            return
        site = st.site
        base = site.endpoint.rstrip("/")
        timeout = self.config.probe_timeout_s
        problem = site.api_key_problem(self.environ)
        if problem is not None:  # never sent: the site is out until its key is fixed
            st.probe_ok, st.probe_error, st.probe_rtt_ms = False, problem, None
            return
        headers = list(site.auth_headers(self.environ).items())
        start = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                r = await self.pool.request(
                    "GET",
                    base + site.health_path,
                    headers,
                    head_timeout=timeout,
                    connect_timeout=timeout,
                    tls=st.tls,
                )
                await r.read()
            ok = 200 <= r.status < 300
            st.probe_error = None if ok else f"health route returned HTTP {r.status}"
        except TimeoutError:
            ok = False
            st.probe_error = f"no answer from its health route within {timeout:g} s"
        except UpstreamError as exc:
            ok = False
            st.probe_error = f"{type(exc).__name__}: {exc}"
        st.probe_ok = ok
        st.probe_rtt_ms = round((time.monotonic() - start) * 1000, 3) if ok else None
        if ok and st.metrics_supported:
            try:
                async with asyncio.timeout(timeout):
                    r = await self.pool.request(
                        "GET",
                        base + "/metrics",
                        headers,
                        head_timeout=timeout,
                        connect_timeout=timeout,
                        tls=st.tls,
                    )
                    data = await r.read()
                if r.status == 404:
                    st.metrics_supported = False
                    st.set_load(NO_LOAD)
                    return
                st.set_load(parse_site_metrics(data.decode("utf-8", "replace")))
            except (UpstreamError, TimeoutError, ValueError):
                st.set_load(NO_LOAD)
        elif not ok:
            st.set_load(NO_LOAD)
        if ok:
            await self._calibration_probe(st, headers)

    async def _calibration_probe(self, st: SiteState, headers: list[tuple[str, str]]) -> None:
        """Evidence for calibration where traffic gives none: each model of the site whose last
        answer is older than ``calibration_probe_s`` (or, before any, the daemon's age) gets a
        4-token completion, timed and learnt from like any answer (a site faster than its table
        row, or recovered, is found even though placement stopped choosing it)."""
        every = self.config.calibration_probe_s
        if every <= 0 or st.probe_rtt_ms is None:
            return
        now = time.monotonic()
        for model in list(st.signals):
            cal = st.cal(model)
            last = cal.at if cal.at is not None else self.started_at
            serving = self.state.planner.serving(st.site.name, model)
            if now - last < every or serving is None:
                continue
            sig = st.signals[model]
            shape = Shape(CALIBRATION_PROMPT_TOKENS, CALIBRATION_TOKENS, "given")
            load = max(sig.in_flight, sig.running)
            predicted = predict(serving, shape, st.probe_rtt_ms, load, sig.waiting)
            ask = {"model": model, "prompt": CALIBRATION_PROMPT, "max_tokens": CALIBRATION_TOKENS}
            body = json.dumps({**ask, "stream": False}).encode()
            region = [("x-grid-client-region", self.config.region)] if self.config.region else []
            send = [*headers, ("content-type", "application/json"), *region]
            start = time.monotonic()
            timeout = self.config.probe_timeout_s + predicted.e2e_ms * 3 / 1000.0
            try:
                async with asyncio.timeout(timeout):
                    r = await self.pool.request(
                        "POST",
                        st.site.endpoint.rstrip("/") + "/v1/completions",
                        send,
                        body,
                        head_timeout=timeout,
                        connect_timeout=self.config.probe_timeout_s,
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

    # -- the HTTP surface ----------------------------------------------------------------

    def _routes(self) -> dict[str, dict[str, Handler]]:
        routes: dict[str, dict[str, Handler]] = {path: {"POST": self._inference} for path in INFERENCE_PATHS}
        routes[MODELS_PATH] = {"GET": self._models}
        routes["/grid/status"] = {"GET": self._status}
        routes["/grid/route"] = {"GET": self._route}
        routes["/metrics"] = {"GET": self._metrics}
        routes["/healthz"] = {"GET": self._healthz}
        return routes

    def _gate(self, method: str, path: str, headers: dict[str, str]) -> Response | None:
        """The token, checked on the request's head: a stranger's body is never read."""
        if path != "/healthz" and not self.tokens.allows(headers.get("authorization", "")):
            return _with_request_id(
                error_json(401, "missing or wrong bearer token", "authentication_error"), headers
            )
        return None

    async def _dispatch(self, request: Request) -> Response | StreamingResponse:
        methods = self.routes.get(request.path)
        if methods is None and model_id(request.path) is not None:
            methods = {"GET": self._models}  # GET /v1/models/{id}
        if methods is None:
            resp: Response | StreamingResponse = error_json(
                404, f"no such route: {request.path}", "not_found_error"
            )
        elif (handler := methods.get(request.method)) is None:
            allowed = ", ".join(methods)
            resp = error_json(
                405,
                f"{request.path} takes {allowed}, not {request.method}",
                "invalid_request_error",
                headers=(("allow", allowed),),
            )
        elif handler == self._inference:
            return await handler(request)  # its id goes to the site too, and into the access log
        else:
            resp = await handler(request)
        return _with_request_id(resp, request.headers)

    async def _models(self, request: Request) -> Response:
        """``GET /v1/models`` and ``GET /v1/models/{id}`` (gridctl/daemon/openai_api.py)."""
        state, created = self.state, build_created(self._signature)
        models = {
            model: build_model(
                model,
                created,
                state.inv.grid.name,
                (n for n, s in state.sites.items() if s.site.serves(model)),
            )
            for model in state.models
        }
        return models_response(models, model_id(request.path))

    async def _status(self, request: Request) -> Response:
        now = time.monotonic()
        sites = [s.to_dict(self.state.recorded.get(n), now) for n, s in sorted(self.state.sites.items())]
        return json_response(
            {
                "grid": self.state.inv.grid.name,
                "region": self.config.region,
                "listen": f"{self.config.host}:{self.bound_port}",
                "pid": os.getpid(),
                "queued": self.room.queued,
                "slo_policy": self.config.slo_policy,
                "stale": [self.state.stale[rel] for rel in sorted(self.state.stale)],
                "sites": sites,
            }
        )

    async def _route(self, request: Request) -> Response:
        q = dict(parse_qsl(request.query))
        model = q.get("model")
        region = q.get("region") or request.headers.get("x-grid-region") or self.config.region
        if not model or not region:
            return error_json(
                400,
                "give ?model=... (and ?region=... unless the daemon has --region)",
                "invalid_request_error",
            )
        if region not in self.state.planner.regions:
            return error_json(400, f"unknown client region '{region}'", "invalid_request_error")
        try:
            req = parse_placement(region, model, q.get("jurisdiction"), q.get("slo_ms"))
        except ValueError:
            return error_json(400, "slo_ms must be a positive number", "invalid_request_error")
        try:
            prompt = parse_count(q.get("prompt_tokens", str(DEFAULT_SHAPE.prompt_tokens)))
            output = parse_count(q["max_tokens"]) if "max_tokens" in q else None
        except ValueError:
            return error_json(
                400,
                f"prompt_tokens and max_tokens must be whole numbers from 0 to {MAX_TOKENS:,}",
                "invalid_request_error",
            )
        if output is None:  # as a request without max_tokens: the model's observed quantile
            shape = Shape(prompt, *self.outputs.estimate(model))
        else:
            shape = Shape(prompt, output, "max_tokens")
        decision = self.state.explain(req, shape, None, time.monotonic(), q.get("session") or None)
        return json_response(decision_dict(decision, self.state.planner.sites))

    async def _metrics(self, request: Request) -> Response:
        now = time.monotonic()
        state = self.state
        up = {
            n: int(s.status(state.recorded.get(n), now) not in ("failed", "unreachable"))
            for n, s in state.sites.items()
        }
        snapshot = self._snapshot()
        metrics, others = self.metrics, []
        if self.config.metrics_dir is not None:  # --workers: this one's counts plus the others'
            self._publish_metrics()  # first, so that a later scrape at another worker sees as much
            others = load_snapshots(self.config.metrics_dir, os.getpid())
        metrics = self.metrics.merged([snap for _, snap in others], self.http.parse_errors)
        live = [snap["gauges"] for pid, snap in others if "gauges" in snap and alive(pid)]
        in_flight, by_model, queued = sum_gauges(snapshot["gauges"], live)
        calibration = {
            (n, m): cal.factors(now)
            for n, s in state.sites.items()
            for m, cal in s.calibration.items()
            if m in s.signals
        }
        text = metrics.render(in_flight, up, queued, by_model, calibration)
        return Response(
            200,
            text.encode(),
            "text/plain; version=0.0.4; charset=utf-8",
            (("x-content-type-options", "nosniff"),),
        )

    async def _healthz(self, request: Request) -> Response:
        return json_response({"status": "ok", "sites": len(self.state.sites)})


def _log_line(text: str) -> None:
    # one write per line (--workers processes share stderr), from a thread: a stalled reader of
    # stderr must not stop the event loop, nor a gone one the shutdown (accesslog.FdWriter)
    say(text)


class _SayHandler(logging.Handler):
    """The ``gridctl`` loggers' records (a handler's traceback...) through :func:`say`, not
    logging's blocking write to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            say(self.format(record))


R = TypeVar("R", bound=Response | StreamingResponse)


def _request_id_header(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The client's x-request-id when usable, else a new one, as a header to answer with."""
    return (("x-request-id", parse_request_id(headers.get("x-request-id")) or new_request_id()),)


def _with_request_id(resp: R, headers: Mapping[str, str]) -> R:
    """Every answer names its request (the server's own refusals too: ServerConfig.error_headers)."""
    resp.headers = (*resp.headers, *_request_id_header(headers))
    return resp


def _loop_factory(environ: Mapping[str, str]) -> Any:
    """uvloop's event loop when it is installed (bench/README.md: about 20-25% less CPU per
    request); GRIDCTL_DAEMON_LOOP=asyncio keeps the standard one."""
    if environ.get("GRIDCTL_DAEMON_LOOP", "auto") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_daemon(config: DaemonConfig, environ: Mapping[str, str]) -> None:
    """Run in the foreground until SIGTERM/SIGINT; raises GridctlError on start-up problems."""
    daemon = Daemon(config, environ)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(environ)) as runner:
            runner.run(daemon.serve())
    except OSError as exc:
        raise GridctlError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
            hint="is another daemon running? pick another port with --listen",
        ) from None
