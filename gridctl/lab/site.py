"""One simulated OpenAI-compatible inference site, behaving like the inventory site it stands for.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streaming and
not), ``GET /v1/models``, ``GET /health`` (and the site's ``health_path``),
``GET /metrics`` (vLLM's Prometheus names, with a ``model_name`` label: :mod:`gridctl.lab.metrics`), and the
lab's own ``GET /lab/state`` and ``POST /lab/fail`` ``{"mode": ..., "delay_ms": ...}``.

Behaviour, every duration divided by the lab's ``speed``:

- network: the round trip between the client region (header
  ``x-grid-client-region``, else ``x-grid-region`` as clients send it to the
  daemon, else the lab's default region) and the site, from the placement
  latency model, is waited before the site sees the request (all routes but
  ``/lab/``); an unknown region gets 400;
- compute: each model is served as its replicas (:func:`gridctl.core.placement.perf.build_serving`:
  the GPUs that serve it, ``tensor_parallel``, the capacity shared out over the
  replicas). A request goes to the replica with the fewest requests running
  (ties: the first); beyond every replica's slots it waits in one FIFO queue for
  the next slot to free. Its timing is the table's, on that replica's own load, times
  ``truth``, the site's hidden speed (:mod:`gridctl.lab.gpu` has the model of the GPUs)::

      truth    = lab.truth.speed_factor(seed, site) x lab.truth.noise(rnd)   (one draw per request)

  (seed ``hidden_speed``, default 1; None: 1.0 and no noise, the table exactly).
  Placement never sees it: it has to learn it;
- prefix cache and KV usage: one per model, sized by the KV tokens of the GPUs
  serving it (:mod:`gridctl.core.placement.prefix`, in blocks of ``gpu.BLOCK_TOKENS``, vLLM's default);
- output: ``max_tokens`` (or ``max_completion_tokens``; default 16) filler tokens,
  with ``usage`` in the answer (and in a last chunk with ``stream_options.include_usage``).

Failure modes, switched at any time: ``ok``; ``503`` (every route answers 503);
``hang`` (requests are read and never answered); ``drop`` (streams are cut after
half their tokens, with no final chunk and no ``[DONE]``; non-streaming requests
are cut before any answer); ``slow`` (``delay_ms``, default 1000, added to TTFT).

Non-streaming answers carry ``x-lab-ttft-ms`` (the request's true TTFT before the
``speed`` scaling, queueing excluded) and ``x-lab-replica``, every inference
answer ``x-lab-rtt-ms``, so tests can check the model without timing it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridctl.core.inventory.model import Inventory
from gridctl.core.placement.latency import region_site_latency
from gridctl.core.placement.perf import Serving, build_serving
from gridctl.lab.formats import (
    DONE,
    BadRequest,
    Completion,
    StreamFormat,
    completion_body,
    error_body,
    filler_tokens,
    models_body,
    parse_completion,
)
from gridctl.lab.gpu import Admission, ModelState
from gridctl.lab.metrics import render_site_metrics
from gridctl.lab.truth import DEFAULT_SEED, noise, speed_factor
from gridctl.net.messages import DropConnection, Request, Response, StreamingResponse, json_response

REGION_HEADER = "x-grid-client-region"
DAEMON_REGION_HEADER = "x-grid-region"  # what clients send the placement daemon; honoured if passed on
FAIL_MODES = ("ok", "503", "hang", "drop", "slow")
DEFAULT_SLOW_MS = 1000.0
OWNER = "gridctl-lab"
_INFERENCE = {"/v1/chat/completions": True, "/v1/completions": False}  # path -> chat


@dataclass(frozen=True)
class SiteSpec:
    """What a lab site simulates. Built from the inventory by :func:`build_site_specs`, or by hand
    (``Serving`` from :func:`gridctl.core.placement.perf.build_serving`, or written out)."""

    name: str
    models: tuple[Serving, ...]  # how the site serves each of its models
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
        models = tuple(
            sv for m in site.models if (sv := build_serving(site, m.name, inv.grid.gpus)) is not None
        )
        rtt = {
            r.name: region_site_latency(
                r.location, site.location, site.kind, inventory_ms=r.latency_ms.get(site.name)
            ).rtt_ms
            for r in regions
        }
        paths = ("/health",) if site.health_path == "/health" else ("/health", site.health_path)
        port = port_base + i if port_base else 0
        specs.append(SiteSpec(site.name, models, rtt, region, paths, port))
    return specs


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
    """The handler of one lab site: ``await site.handle(request)``.

    ``hidden_speed``: the seed of the site's true speed (:mod:`gridctl.lab.truth`); None times
    requests by the table exactly (no hidden factor, no noise)."""

    def __init__(self, spec: SiteSpec, speed: float = 1.0, hidden_speed: int | None = DEFAULT_SEED) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.spec = spec
        self.speed = speed
        self.hidden_speed = hidden_speed
        self.speed_factor = speed_factor(hidden_speed, spec.name)
        self._rnd = random.Random(f"{hidden_speed}\0{spec.name}") if hidden_speed is not None else None
        self.url = ""  # set once listening
        self.mode = "ok"
        self.slow_ms = DEFAULT_SLOW_MS
        self.models = {sv.model: ModelState(sv) for sv in spec.models}
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
        models = []
        for name, m in self.models.items():
            sv, r = m.serving, m.replicas
            models.append(
                {
                    "name": name,
                    "capacity": sv.capacity,
                    "running": r.running,
                    "waiting": r.waiting,
                    "gpu": sv.gpu.name,
                    "gpus": sv.gpus,
                    "tensor_parallel": sv.tensor_parallel,
                    "replicas": len(r.slots),
                    "replica_slots": list(r.slots),
                    "replica_running": list(r.running_on),
                    "kv_cache_usage": round(m.kv_usage, 6),
                }
            )
        stats = [m.stats for m in self.models.values()]
        kv_blocks = sum(m.kv_blocks for m in self.models.values()) or 1
        return {
            "name": self.spec.name,
            "url": self.url,
            "mode": self.mode,
            "slow_ms": self.slow_ms,
            "gpu": ",".join(sorted({m.serving.gpu.name for m in self.models.values()})),
            "speed_factor": round(self.speed_factor, 6),  # the hidden truth: for tests and benches only
            "hidden_speed": self.hidden_speed,
            "models": models,
            "requests": self.requests,
            "served": self.served,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "running": sum(m["running"] for m in models),
            "waiting": sum(m["waiting"] for m in models),
            "prefix_cache": {
                "queries": sum(s.prefix_queries for s in stats),
                "hits": sum(s.prefix_hits for s in stats),
                "blocks": sum(len(m.cache) for m in self.models.values()),
            },
            "kv_cache_usage": round(sum(m.kv_used for m in self.models.values()) / kv_blocks, 6),
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
            return json_response(models_body(self.models, self.created, OWNER))
        if path == "/metrics":
            return Response(
                200,
                render_site_metrics(self.models, self.mode, FAIL_MODES),
                "text/plain; version=0.0.4; charset=utf-8",
            )
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
        model = self.models.get(c.model)
        if model is None:
            serves = ", ".join(self.models) or "no models"
            return _error(
                404,
                f"The model `{c.model}` does not exist on site {self.spec.name} (it serves: {serves}).",
                param="model",
                code="model_not_found",
                headers=headers,
            )
        model.stats.requests += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-lab{next(self._ids):08x}"
        created = int(time.time())
        if c.stream:
            hdrs = (("cache-control", "no-cache"), *headers)
            return StreamingResponse(self._stream(c, model, StreamFormat(c, rid, created)), headers=hdrs)
        replica = await model.replicas.acquire()
        adm: Admission | None = None
        try:
            adm = model.admit(c, replica, self._truth(), self._extra_ms())
            await _pause((adm.ttft_ms + adm.interval_ms * (c.max_tokens - 1)) / 1000.0 / self.speed)
            if self.mode == "drop":
                raise DropConnection
            text = "".join(filler_tokens(c.prompt, c.max_tokens))
            model.finish(c, c.max_tokens)
            body = completion_body(c, rid, created, text, c.max_tokens, adm.cached)
            timing = (("x-lab-ttft-ms", f"{adm.ttft_ms:.3f}"), ("x-lab-replica", str(replica)))
            return json_response(body, headers=(*headers, *timing))
        finally:
            model.leave(replica, adm)

    def _truth(self) -> float:
        """This request's true speed multiplier: the site's hidden factor times its own noise."""
        return self.speed_factor * noise(self._rnd) if self._rnd is not None else 1.0

    def _extra_ms(self) -> float:
        """What the ``slow`` failure mode adds to a request's TTFT now (0: another mode)."""
        return self.slow_ms if self.mode == "slow" else 0.0

    async def _stream(self, c: Completion, model: ModelState, fmt: StreamFormat) -> AsyncIterator[bytes]:
        """Tokens at their due times; tokens already due go out in one write."""
        self.in_flight += 1
        loop = asyncio.get_running_loop()
        replica, done, adm = None, False, None
        try:
            replica = await model.replicas.acquire()
            adm = model.admit(c, replica, self._truth(), self._extra_ms())
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
            model.finish(c, len(tokens))
            pending.append(fmt.final())
            if c.include_usage:
                pending.append(fmt.usage(len(tokens), adm.cached))
            pending.append(DONE)
            yield b"".join(pending)
            done = True
            self.served += 1
        finally:
            if replica is not None:
                model.leave(replica, adm)
            self.in_flight -= 1
            if not done:
                self.failed += 1

    # -- lab routes ---------------------------------------------------------------------------------------

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
