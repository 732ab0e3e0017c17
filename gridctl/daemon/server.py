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

Its parts: ``loading.py`` (what is loaded and reloaded), ``probes.py`` (the probe rounds),
``proxy.py`` (the inference path); here the lifecycle and the HTTP surface.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from gridctl.core.errors import GridctlError
from gridctl.core.placement.decision import DEFAULT_SHAPE, decision_dict
from gridctl.core.placement.predict import MAX_TOKENS, OutputTokens, Shape
from gridctl.core.sitestate import GridState
from gridctl.daemon.accesslog import (
    AccessLog,
    SayHandler,
    Trace,
    new_request_id,
    open_access_log,
    parse_request_id,
    say,
    stderr_writer,
)
from gridctl.daemon.admission import RoomQueue, parse_count, parse_placement
from gridctl.daemon.config import DaemonConfig
from gridctl.daemon.loading import (
    client_connections,
    inventory_signature,
    load_client_tokens,
    load_listener_tls,
    load_state,
    raise_file_limit,
    reload_front,
    reload_state,
    save_calibration,
)
from gridctl.daemon.metrics import Metrics, alive, load_snapshots, sum_gauges, write_snapshot
from gridctl.daemon.openai_api import (
    MODELS_PATH,
    build_created,
    build_model,
    error_json,
    model_id,
    models_response,
)
from gridctl.daemon.probes import Prober
from gridctl.daemon.proxy import INFERENCE_PATHS, Proxy
from gridctl.daemon.tokens import Tokens
from gridctl.net.client import Pool
from gridctl.net.messages import Request as HttpRequest
from gridctl.net.messages import Response, ServerConfig, StreamingResponse, json_response
from gridctl.net.server import HttpServer
from gridctl.net.tls import RotatingContext

Handler = Callable[[HttpRequest], Awaitable[Response | StreamingResponse]]


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        environ: Mapping[str, str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.environ = dict(environ if environ is not None else os.environ)
        # one write per line (--workers processes share stderr), from a thread: a stalled reader of
        # stderr must not stop the event loop, nor a gone one the shutdown (accesslog.FdWriter)
        self.log = log or say
        self._log_handler = SayHandler()
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
        before, files, clients = await self._start_up()
        # what start-up built (modules, inventory, tables) lives as long as the process: out of
        # the collector's sight, the collections each request's garbage triggers stay small
        gc.collect()
        gc.freeze()
        self.log(
            f"gridctl daemon listening on {self.http.url} "
            f"(region {self.config.region or '-'}, {len(self.state.sites)} sites, pid {os.getpid()})"
        )
        raised = f"raised from {before}" if files > before else "its soft limit was not raised"
        self.log(
            f"open files: up to {files} ({raised}); up to {clients} client connections, then 503 to new ones"
        )
        self._install_signals()
        tasks = [
            asyncio.create_task(self.prober.run()),
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

    async def _start_up(self) -> tuple[int, int, int]:
        """Load what the daemon runs on and bind its listener: (the open-file limit before it
        was raised, after, the client connections served at once)."""
        cfg = self.config
        self.access_log = open_access_log(cfg.access_log)
        self.state = load_state(cfg)
        self._signature = inventory_signature(cfg.inventory)
        self.tokens = load_client_tokens(cfg)
        listener = load_listener_tls(cfg)
        self.tls = RotatingContext(listener) if listener is not None else None
        before, files = raise_file_limit()
        clients = client_connections(files)
        self.pool = Pool(connect_timeout=cfg.connect_timeout_s)
        book = self._book
        self.proxy = Proxy(book, self.metrics, self.pool, cfg, self.environ, self.room, self.outputs)
        self.prober = Prober(book, self.pool, cfg, self.environ, self.metrics, self.started_at)
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
        return before, files, clients

    def _book(self) -> GridState:
        """The current state (a reload replaces it; a request keeps the one it started with)."""
        return self.state

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
        self.state = await reload_state(self.config, self.state, why, self.log)

    def reload_front(self) -> None:
        """Reread --tokens and the listener's TLS files; one that fails keeps the running one."""
        self.tokens = reload_front(self.config, self.tokens, self.tls, self.log)

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

    async def _inference(self, request: HttpRequest) -> Response | StreamingResponse:
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
        answer = resp.headers
        for name, _ in answer:  # a site's own id gives way to the daemon's (most answers have none)
            if name == "x-request-id":
                answer = tuple(h for h in answer if h[0] != "x-request-id")
                break
        resp.headers = (*answer, ("x-request-id", rid))
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

    async def _dispatch(self, request: HttpRequest) -> Response | StreamingResponse:
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

    async def _models(self, request: HttpRequest) -> Response:
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

    async def _status(self, request: HttpRequest) -> Response:
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

    async def _route(self, request: HttpRequest) -> Response:
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

    async def _metrics(self, request: HttpRequest) -> Response:
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

    async def _healthz(self, request: HttpRequest) -> Response:
        return json_response({"status": "ok", "sites": len(self.state.sites)})


R = TypeVar("R", bound=Response | StreamingResponse)


def _request_id_header(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The client's x-request-id when usable, else a new one, as a header to answer with."""
    return (("x-request-id", parse_request_id(headers.get("x-request-id")) or new_request_id()),)


def _with_request_id(resp: R, headers: Mapping[str, str]) -> R:
    """Every answer names its request (the server's own refusals too: ServerConfig.error_headers)."""
    resp.headers = (*resp.headers, *_request_id_header(headers))
    return resp


def _loop_factory(environ: Mapping[str, str]) -> Callable[[], asyncio.AbstractEventLoop] | None:
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
