"""One simulated OpenAI-compatible inference site, behaving like the inventory site it stands for.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streaming and
not), ``GET /v1/models``, ``GET /health`` (and the site's ``health_path``),
``GET /metrics`` (vLLM's Prometheus names, with a ``model_name`` label), and the
lab's own ``GET /lab/state`` and ``POST /lab/fail`` ``{"mode": ..., "delay_ms": ...}``.

Behaviour, every duration divided by the lab's ``speed``:

- network: the round trip between the client region (header
  ``x-grid-client-region``, else ``x-grid-region`` as clients send it to the
  daemon, else the lab's default region) and the site, from the placement
  latency model, is waited before the site sees the request (all routes but
  ``/lab/``); an unknown region gets 400;
- compute: per model, ``capacity`` slots; requests beyond them wait in a FIFO
  queue; TTFT and the time between tokens come from the site's GPUs, its load
  and the prefix cache (see :mod:`gridctl.placement.perf` and :mod:`gridctl.lab.prefix`);
- output: ``max_tokens`` (or ``max_completion_tokens``; default 16) filler tokens.

Failure modes, switched at any time: ``ok``; ``503`` (every route answers 503);
``hang`` (requests are read and never answered); ``drop`` (streams are cut after
half their tokens, with no final chunk and no ``[DONE]``; non-streaming requests
are cut before any answer); ``slow`` (``delay_ms``, default 1000, added to TTFT).

Non-streaming answers carry ``x-lab-ttft-ms`` (the model's TTFT before scaling,
queueing excluded) and every inference answer ``x-lab-rtt-ms``, so tests can check
the model without timing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridctl.inventory.model import Inventory, ModelServing
from gridctl.lab.formats import (
    DONE,
    BadRequest,
    Completion,
    Metric,
    StreamFormat,
    completion_body,
    error_body,
    filler_tokens,
    models_body,
    parse_completion,
    render_metrics,
)
from gridctl.placement.perf import (
    DEFAULT_GPU,
    GpuPerf,
    choose_site_gpu,
    model_factor,
    token_interval_ms,
    ttft_ms,
)
from gridctl.lab.prefix import BLOCK_TOKENS, PrefixCache
from gridctl.net.server import DropConnection, Request, Response, StreamingResponse, json_response
from gridctl.placement.latency import region_site_latency

REGION_HEADER = "x-grid-client-region"
DAEMON_REGION_HEADER = "x-grid-region"  # what clients send the placement daemon; honoured if passed on
FAIL_MODES = ("ok", "503", "hang", "drop", "slow")
DEFAULT_SLOW_MS = 1000.0
OWNER = "gridctl-lab"
_INFERENCE = {"/v1/chat/completions": True, "/v1/completions": False}  # path -> chat


@dataclass(frozen=True)
class SiteSpec:
    """What a lab site simulates. Built from the inventory by :func:`build_site_specs`, or by hand."""

    name: str
    models: tuple[ModelServing, ...]
    gpu: GpuPerf = DEFAULT_GPU
    gpu_count: int = 1
    rtt_ms: Mapping[str, float] = field(default_factory=dict, hash=False)  # client region -> round trip
    default_region: str | None = None  # when a request names none
    health_paths: tuple[str, ...] = ("/health",)
    port: int = 0  # 0: any free port


def build_site_specs(
    inv: Inventory, default_region: str | None = None, port_base: int | None = None
) -> list[SiteSpec]:
    """One spec per inventory site, in name order; ``default_region``: the first region of grid.yaml
    when None. ``port_base``: site i listens on port_base + i (else any free port)."""
    regions = inv.grid.regions
    region = default_region or (regions[0].name if regions else None)
    specs = []
    for i, site in enumerate(inv.sites):
        gpu, count = choose_site_gpu([(n.gpus.model, n.gpus.count) for n in site.nodes if n.gpus])
        rtt = {
            r.name: region_site_latency(
                r.location, site.location, site.kind, inventory_ms=r.latency_ms.get(site.name)
            ).rtt_ms
            for r in regions
        }
        paths = ("/health",) if site.health_path == "/health" else ("/health", site.health_path)
        port = port_base + i if port_base else 0
        specs.append(SiteSpec(site.name, site.models, gpu, count, rtt, region, paths, port))
    return specs


class Slots:
    """A model's concurrent slots, with a FIFO queue of waiters beyond them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.capacity and not self._waiters:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # a slot was handed to us as we left: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot goes straight to the next in line
                return
        self.running -= 1


@dataclass
class ModelStats:
    requests: int = 0
    success: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0})
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of which found


@dataclass(frozen=True)
class _Admission:
    ttft_ms: float
    interval_ms: float
    cached: int
    blocks: int


_MIN_SLEEP_S = 0.0005  # shorter waits are skipped (at high --speed): a stream's late tokens go out together


async def _pause(seconds: float) -> None:
    if seconds > _MIN_SLEEP_S:
        await asyncio.sleep(seconds)


def _error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    return json_response(error_body(message, kind, param, code), status, headers)


class SimSite:
    """The handler of one lab site: ``await site.handle(request)``."""

    def __init__(self, spec: SiteSpec, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.spec = spec
        self.speed = speed
        self.url = ""  # set once listening
        self.mode = "ok"
        self.slow_ms = DEFAULT_SLOW_MS
        self.slots = {m.name: Slots(m.capacity) for m in spec.models}
        self.factors = {m.name: model_factor(m.name) for m in spec.models}
        self.stats = {m.name: ModelStats() for m in spec.models}
        self.kv_blocks = max(1, spec.gpu.kv_tokens * spec.gpu_count // BLOCK_TOKENS)
        self.kv_used = 0
        self.cache = PrefixCache(self.kv_blocks)
        self.requests = self.served = self.failed = self.in_flight = 0
        self.created = int(time.time())
        self._ids = itertools.count(1)

    # -- control ---------------------------------------------------------------------------------

    def set_mode(self, mode: str, delay_ms: float | None = None) -> str:
        """Switch the failure mode; return the previous one. ValueError for an unknown mode."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown failure mode {mode!r} (modes: {', '.join(FAIL_MODES)})")
        if delay_ms is not None:
            if delay_ms < 0:
                raise ValueError("delay_ms must not be negative")
            self.slow_ms = float(delay_ms)
        previous, self.mode = self.mode, mode
        return previous

    def state(self) -> dict[str, Any]:
        models = [
            {
                "name": m.name,
                "capacity": m.capacity,
                "running": self.slots[m.name].running,
                "waiting": self.slots[m.name].waiting,
            }
            for m in self.spec.models
        ]
        return {
            "name": self.spec.name,
            "url": self.url,
            "mode": self.mode,
            "slow_ms": self.slow_ms,
            "gpu": self.spec.gpu.name,
            "gpu_count": self.spec.gpu_count,
            "models": models,
            "requests": self.requests,
            "served": self.served,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "running": sum(m["running"] for m in models),
            "waiting": sum(m["waiting"] for m in models),
            "prefix_cache": {
                "queries": sum(s.prefix_queries for s in self.stats.values()),
                "hits": sum(s.prefix_hits for s in self.stats.values()),
                "blocks": len(self.cache),
            },
            "kv_cache_usage": round(self.kv_used / self.kv_blocks, 6),
        }

    # -- requests ----------------------------------------------------------------------------------

    async def handle(self, req: Request) -> Response | StreamingResponse:
        path = req.path
        if path.startswith("/lab/"):
            return self._admin(req)
        chat = _INFERENCE.get(path)
        if chat is None:
            return await self._other(req)
        self.requests += 1
        self.in_flight += 1
        ok = False
        try:
            resp = await self._inference(req, chat)
            ok = isinstance(resp, StreamingResponse) or resp.status == 200
            if ok and isinstance(resp, Response):
                self.served += 1
            return resp
        finally:
            self.in_flight -= 1
            if not ok:
                self.failed += 1

    async def _network(self, req: Request) -> float | Response:
        """Wait the round trip from the client's region; its RTT, or the error to answer."""
        if self.mode == "hang":
            await asyncio.get_running_loop().create_future()  # never resolves; cancelled when the client goes
        region = (
            req.headers.get(REGION_HEADER)
            or req.headers.get(DAEMON_REGION_HEADER)
            or self.spec.default_region
        )
        rtt = self.spec.rtt_ms.get(region) if region else 0.0
        if rtt is None:
            known = ", ".join(sorted(self.spec.rtt_ms)) or "none"
            return _error(
                400,
                f"unknown client region '{region}' in {REGION_HEADER} (known: {known})",
                code="unknown_region",
            )
        await _pause(rtt / 1000.0 / self.speed)
        if self.mode == "503":
            return _error(
                503, f"site {self.spec.name} is unavailable (lab failure mode 503)", "server_error", code=503
            )
        return rtt

    async def _other(self, req: Request) -> Response:
        path = req.path
        known = path in self.spec.health_paths or path in ("/v1/models", "/metrics")
        if not known:
            return _error(404, f"no route {req.method} {path} on this site", code=404)
        if req.method not in ("GET", "HEAD"):
            return _error(405, f"{path} takes GET", code=405)
        net = await self._network(req)
        if isinstance(net, Response):
            return net
        if path == "/v1/models":
            return json_response(models_body(self.slots, self.created, OWNER))
        if path == "/metrics":
            return Response(200, self._metrics(), "text/plain; version=0.0.4; charset=utf-8")
        return Response(200)

    async def _inference(self, req: Request, chat: bool) -> Response | StreamingResponse:
        if req.method != "POST":
            return _error(405, f"{req.path} takes POST", code=405)
        net = await self._network(req)
        if isinstance(net, Response):
            return net
        headers = (("x-lab-site", self.spec.name), ("x-lab-rtt-ms", f"{net:.3f}"))
        try:
            c = parse_completion(req.json(), chat)
        except ValueError as exc:
            return _error(400, f"the request body is not valid JSON: {exc}", headers=headers)
        except BadRequest as exc:
            return _error(400, exc.message, param=exc.param, headers=headers)
        slots = self.slots.get(c.model)
        if slots is None:
            serves = ", ".join(self.slots) or "no models"
            return _error(
                404,
                f"The model `{c.model}` does not exist on site {self.spec.name} (it serves: {serves}).",
                param="model",
                code="model_not_found",
                headers=headers,
            )
        self.stats[c.model].requests += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-lab{next(self._ids):08x}"
        created = int(time.time())
        if c.stream:
            hdrs = (("cache-control", "no-cache"), *headers)
            return StreamingResponse(self._stream(c, slots, StreamFormat(c, rid, created)), headers=hdrs)
        await slots.acquire()
        adm: _Admission | None = None
        try:
            adm = self._admit(c, slots)
            await _pause((adm.ttft_ms + adm.interval_ms * (c.max_tokens - 1)) / 1000.0 / self.speed)
            if self.mode == "drop":
                raise DropConnection
            text = "".join(filler_tokens(c.prompt, c.max_tokens))
            self._finish(c, c.max_tokens)
            body = completion_body(c, rid, created, text, c.max_tokens, adm.cached)
            return json_response(body, headers=(*headers, ("x-lab-ttft-ms", f"{adm.ttft_ms:.3f}")))
        finally:
            self._leave(slots, adm)

    def _admit(self, c: Completion, slots: Slots) -> _Admission:
        """A request takes its slot: look up the prefix cache and compute its timing."""
        st = self.stats[c.model]
        cached = max(0, min(self.cache.lookup(c.prompt), c.prompt_tokens - 1))
        st.prompt_tokens += c.prompt_tokens
        st.prefix_queries += c.prompt_tokens
        st.prefix_hits += cached
        gpu, factor = self.spec.gpu, self.factors[c.model]
        first = ttft_ms(gpu, c.prompt_tokens, cached, slots.running, slots.capacity) * factor
        if self.mode == "slow":
            first += self.slow_ms
        interval = token_interval_ms(gpu, slots.running, slots.capacity) * factor
        blocks = -(-(c.prompt_tokens + c.max_tokens) // BLOCK_TOKENS)
        self.kv_used += blocks
        return _Admission(first, interval, cached, blocks)

    def _leave(self, slots: Slots, adm: _Admission | None) -> None:
        slots.release()
        if adm is not None:
            self.kv_used -= adm.blocks

    def _finish(self, c: Completion, n_tokens: int) -> None:
        st = self.stats[c.model]
        st.generation_tokens += n_tokens
        st.success[c.finish_reason] = st.success.get(c.finish_reason, 0) + 1

    async def _stream(self, c: Completion, slots: Slots, fmt: StreamFormat) -> AsyncIterator[bytes]:
        """Tokens at their due times; tokens already due go out in one write."""
        self.in_flight += 1
        loop = asyncio.get_running_loop()
        acquired, done, adm = False, False, None
        try:
            await slots.acquire()
            acquired = True
            adm = self._admit(c, slots)
            tokens = filler_tokens(c.prompt, c.max_tokens)
            drop_after = max(1, len(tokens) // 2)
            start, scale = loop.time(), 1.0 / 1000.0 / self.speed
            pending: list[bytes] = [fmt.role()] if c.chat else []
            for i, token in enumerate(tokens):
                delay = start + (adm.ttft_ms + i * adm.interval_ms) * scale - loop.time()
                if delay > _MIN_SLEEP_S:
                    if pending:
                        yield b"".join(pending)
                        pending = []
                    await asyncio.sleep(delay)
                pending.append(fmt.token(token))
                if i + 1 >= drop_after and self.mode == "drop":
                    yield b"".join(pending)
                    raise DropConnection
            self._finish(c, len(tokens))
            pending.append(fmt.final())
            if c.include_usage:
                pending.append(fmt.usage(len(tokens), adm.cached))
            pending.append(DONE)
            yield b"".join(pending)
            done = True
            self.served += 1
        finally:
            if acquired:
                self._leave(slots, adm)
            self.in_flight -= 1
            if not done:
                self.failed += 1

    # -- lab routes and metrics ---------------------------------------------------------------------------

    def _admin(self, req: Request) -> Response:
        if req.path == "/lab/state" and req.method == "GET":
            return json_response(self.state())
        if req.path == "/lab/fail" and req.method == "POST":
            try:
                body = req.json()
                mode, delay = body["mode"], body.get("delay_ms")
                previous = self.set_mode(str(mode), None if delay is None else float(delay))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                return _error(
                    400, f'expected {{"mode": one of {", ".join(FAIL_MODES)}}}: {exc}', param="mode"
                )
            return json_response({"site": self.spec.name, "mode": self.mode, "previous": previous})
        return _error(404, f"no lab route {req.method} {req.path}", code=404)

    def _metrics(self) -> bytes:
        models = list(self.slots)
        usage = self.kv_used / self.kv_blocks

        def per_model(get: Any) -> list[tuple[dict[str, str], float]]:
            return [({"model_name": m}, float(get(m))) for m in models]

        success = [
            ({"finished_reason": reason, "model_name": m}, float(n))
            for m in models
            for reason, n in sorted(self.stats[m].success.items())
        ]
        return render_metrics(
            [
                Metric(
                    "vllm:num_requests_running",
                    "gauge",
                    "Number of requests in model execution batches.",
                    per_model(lambda m: self.slots[m].running),
                ),
                Metric(
                    "vllm:num_requests_waiting",
                    "gauge",
                    "Number of requests waiting to be processed.",
                    per_model(lambda m: self.slots[m].waiting),
                ),
                Metric(
                    "vllm:gpu_cache_usage_perc",
                    "gauge",
                    "GPU KV-cache usage. 1 means 100 percent usage.",
                    per_model(lambda m: usage),
                ),
                Metric(
                    "vllm:kv_cache_usage_perc",
                    "gauge",
                    "KV-cache usage. 1 means 100 percent usage.",
                    per_model(lambda m: usage),
                ),
                Metric(
                    "vllm:prefix_cache_queries_total",
                    "counter",
                    "Prefix cache queries, in terms of number of queried tokens.",
                    per_model(lambda m: self.stats[m].prefix_queries),
                ),
                Metric(
                    "vllm:prefix_cache_hits_total",
                    "counter",
                    "Prefix cache hits, in terms of number of cached tokens.",
                    per_model(lambda m: self.stats[m].prefix_hits),
                ),
                Metric(
                    "vllm:prompt_tokens_total",
                    "counter",
                    "Number of prefill tokens processed.",
                    per_model(lambda m: self.stats[m].prompt_tokens),
                ),
                Metric(
                    "vllm:generation_tokens_total",
                    "counter",
                    "Number of generation tokens processed.",
                    per_model(lambda m: self.stats[m].generation_tokens),
                ),
                Metric(
                    "vllm:request_success_total",
                    "counter",
                    "Count of successfully processed requests.",
                    success,
                ),
                Metric(
                    "gridctl_lab_requests_total",
                    "counter",
                    "Requests received for the model.",
                    per_model(lambda m: self.stats[m].requests),
                ),
                Metric(
                    "gridctl_lab_failure_mode",
                    "gauge",
                    "The lab failure mode (1: current).",
                    [({"mode": mode}, 1.0 if mode == self.mode else 0.0) for mode in FAIL_MODES],
                ),
            ]
        )
