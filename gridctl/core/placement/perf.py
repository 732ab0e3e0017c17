"""How fast a site serves a model: the GPU table and the timing model. Pure.

The one source of GPU speed for the placement predictor, the lab's simulated
sites and the simulator (each *true* lab or simulated site is this row times a
hidden per-site factor; placement sees only the row and what it observes).

Figures are for an 8B-class model in BF16 (llama-3.1-8b-instruct) on one
replica of one GPU, one request alone on it; they are round numbers in line
with public vLLM benchmarks, meant to make sites differ plausibly, not to
predict a real deployment. ``gpus:`` in grid.yaml adds rows or overrides these
(matched before the built-in ones)::

    gpus:
      - {name: B200, ttft_ms: 15, prefill_tok_s: 45000, decode_tok_s: 260, kv_tokens: 1500000}

================  ========  ===========  ==========  ==========
GPU               TTFT ms   prefill t/s  decode t/s  KV tokens
================  ========  ===========  ==========  ==========
H200              20        32,000       190         1,000,000
H100              25        25,000       150           450,000
A100              40        12,000       100           450,000
RTX PRO 6000      35        15,000       120           600,000
L40S              45         9,000        75           220,000
L4                90         3,000        30            60,000
(any other)       60         8,000        60           200,000
================  ========  ===========  ==========  ==========

- TTFT ms: the fixed part of the time to first token (scheduling, a short
  prompt, the first decode step).
- prefill t/s: prompt tokens processed per second; tokens found in the prefix
  cache are not processed again.
- decode t/s: output tokens per second for one request.
- KV tokens: KV-cache capacity per GPU (memory left after the weights, at
  about 128 KiB per token). It bounds the prefix cache and gives
  ``gpu_cache_usage_perc``.

How a model is served on a site (:func:`build_serving`): by the nodes whose GPU
is ``models[].gpu`` (default: the site's most numerous GPU model), each node
running ``GPUs // tensor_parallel`` replicas (``tensor_parallel`` default: the
node's GPU count, as provisioning renders ``--tensor-parallel-size``). The
site's ``capacity`` slots for the model are shared evenly by its replicas. A
replica over ``tp`` GPUs runs ``tp ** TP_EXPONENT`` times faster than one GPU
(0.8: the all-reduce between GPUs costs a fifth of the gain). A model whose
name gives a size over 8B ("llama-3.1-70b-instruct") is slower: both times are
multiplied by ``sqrt(size / 8)`` (70B: about 3x). Together::

    factor = sqrt(size / 8) / tp ** TP_EXPONENT          (1.0 for an 8B model on one GPU)

Load, from the requests running on the model's slots (``running`` out of
``capacity``, counted when a request is admitted, itself included)::

    ttft_ms     = (TTFT + uncached_prompt / prefill * 1000) * factor * (1 + LOAD_TTFT * running / capacity)
    interval_ms = 1000 / decode * factor * (1 + LOAD_DECODE * running / capacity)

so a full site takes twice as long per token as an idle one. A request beyond
``capacity`` waits in a FIFO queue first; its time there adds to its TTFT.

Tokens are counted as 4 characters each (OpenAI's rule of thumb).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gridctl.core.inventory.model import GpuRow, Inventory, Site

LOAD_TTFT = 1.0
LOAD_DECODE = 1.0
TP_EXPONENT = 0.8
CHARS_PER_TOKEN = 4

GpuPerf = GpuRow  # one row of the table (the inventory's own rows are the same data)

GPU_TABLE: tuple[GpuPerf, ...] = (
    GpuPerf("H200", 20.0, 32_000.0, 190.0, 1_000_000),
    GpuPerf("H100", 25.0, 25_000.0, 150.0, 450_000),
    GpuPerf("A100", 40.0, 12_000.0, 100.0, 450_000),
    GpuPerf("RTX PRO 6000", 35.0, 15_000.0, 120.0, 600_000),
    GpuPerf("L40S", 45.0, 9_000.0, 75.0, 220_000),
    GpuPerf("L4", 90.0, 3_000.0, 30.0, 60_000),
)
DEFAULT_GPU = GpuPerf("default", 60.0, 8_000.0, 60.0, 200_000)


def _words(name: str) -> str:
    return " " + " ".join(re.findall(r"[A-Z0-9]+", name.upper())) + " "


_MATCHERS = tuple((_words(g.name), g) for g in GPU_TABLE)


def find_gpu(model: str | None, rows: Sequence[GpuPerf] = ()) -> GpuPerf | None:
    """The row for a GPU model as the inventory names it ("H100", "NVIDIA H100 80GB HBM3",
    "RTX PRO 6000 Blackwell"...): the inventory's ``rows`` first, then the built-in table;
    None when no row names it."""
    if not model:
        return None
    words = _words(model)
    for row in rows:
        if _words(row.name) in words:
            return row
    for key, perf in _MATCHERS:
        if key in words:
            return perf
    return None


def gpu_perf(model: str | None, rows: Sequence[GpuPerf] = ()) -> GpuPerf:
    """:func:`find_gpu`, or the default row for a GPU no row names."""
    return find_gpu(model, rows) or DEFAULT_GPU


def choose_site_gpu(gpus: Sequence[tuple[str, int]]) -> tuple[GpuPerf, int]:
    """A site's GPUs as (model, count) per node -> the row for its most numerous model, and
    the site's GPU count (at least 1: a site with no GPUs listed is simulated as one default GPU)."""
    totals: dict[str, int] = {}
    for model, count in gpus:
        totals[model] = totals.get(model, 0) + count
    if not totals:
        return DEFAULT_GPU, 1
    model = max(totals, key=lambda m: (totals[m], m))
    return gpu_perf(model), max(1, sum(totals.values()))


def main_gpu_model(site: Site) -> str | None:
    """The site's most numerous GPU model (ties: the name that sorts last), None without GPUs."""
    totals: dict[str, int] = {}
    for n in site.nodes:
        if n.gpus:
            totals[n.gpus.model] = totals.get(n.gpus.model, 0) + n.gpus.count
    return max(totals, key=lambda m: (totals[m], m)) if totals else None


@dataclass(frozen=True)
class Serving:
    """How one site serves one model: the inputs of every timing of it."""

    site: str
    model: str
    gpu: GpuPerf
    gpus: int  # GPUs serving the model (at least 1)
    tensor_parallel: int
    replicas: int  # at least 1
    capacity: int  # the model's slots at the site (all replicas)
    factor: float  # time multiplier: model size over tensor-parallel speed-up
    kv_tokens: int  # KV-cache tokens of all the GPUs serving the model

    @property
    def slots_per_replica(self) -> int:
        return max(1, self.capacity // self.replicas)

    def replica_slots(self) -> list[int]:
        """The capacity shared out over the replicas (the first ones take the remainder)."""
        base, extra = divmod(self.capacity, self.replicas)
        return [base + (1 if i < extra else 0) for i in range(self.replicas) if base or i < extra]


def tp_speedup(tp: int) -> float:
    return float(tp) ** TP_EXPONENT if tp > 1 else 1.0


def build_serving(site: Site, model: str, rows: Sequence[GpuPerf] = ()) -> Serving | None:
    """``model`` at ``site`` as the module docstring says; None when the site does not serve it.
    A site with no GPUs listed serves on one GPU of the default row."""
    serving = next((m for m in site.models if m.name == model), None)
    if serving is None:
        return None
    gpu_model = serving.gpu or main_gpu_model(site)
    nodes = [n.gpus for n in site.nodes if n.gpus and gpu_model and n.gpus.model.upper() == gpu_model.upper()]
    tp = serving.tensor_parallel
    if not nodes:
        tp = 1
        gpus, replicas = 1, 1
    else:
        if tp is None:  # each node one replica over all its GPUs (as provisioning renders it)
            tp = max(g.count for g in nodes)
            replicas = len(nodes)
        else:
            replicas = sum(g.count // tp for g in nodes)
        gpus = sum(g.count for g in nodes)
    replicas = max(1, min(replicas, serving.capacity))
    row = gpu_perf(gpu_model, rows)
    return Serving(
        site=site.name,
        model=model,
        gpu=row,
        gpus=max(1, gpus),
        tensor_parallel=tp,
        replicas=replicas,
        capacity=serving.capacity,
        factor=model_factor(model) / tp_speedup(tp),
        kv_tokens=row.kv_tokens * max(1, gpus),
    )


def ttft_ms(perf: GpuPerf, prompt_tokens: int, cached_tokens: int, running: int, capacity: int) -> float:
    uncached = max(0, prompt_tokens - cached_tokens)
    load = min(running, capacity) / capacity if capacity > 0 else 1.0
    return (perf.ttft_ms + uncached / perf.prefill_tok_s * 1000.0) * (1.0 + LOAD_TTFT * load)


def token_interval_ms(perf: GpuPerf, running: int, capacity: int) -> float:
    load = min(running, capacity) / capacity if capacity > 0 else 1.0
    return 1000.0 / perf.decode_tok_s * (1.0 + LOAD_DECODE * load)


_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)b(?![a-z0-9])", re.IGNORECASE)


def model_factor(model: str) -> float:
    """How much slower than the table a model is, from the size in its name (1.0 up to 8B)."""
    m = _SIZE.search(model)
    return max(1.0, math.sqrt(float(m.group(1)) / 8.0)) if m else 1.0


def count_tokens(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def gpu_warnings(inv: Inventory) -> list[str]:
    """What ``inventory validate`` warns about placement's inputs: each GPU model no row names
    (placement then assumes the default row, named in the message), a ``tensor_parallel`` that
    leaves GPUs idle, and the old score weights."""
    out: list[str] = []
    if inv.grid.weights_given:
        out.append(
            "grid.yaml: defaults.weights: no longer used: placement sends each request to the "
            "cheapest site predicted to meet its SLO (README: placement); remove the key"
        )
    rows = inv.grid.gpus
    d = DEFAULT_GPU
    for site in inv.sites:
        for i, m in enumerate(site.models):
            sv = build_serving(site, m.name, rows)
            if sv is not None and m.tensor_parallel and sv.replicas * sv.tensor_parallel < sv.gpus:
                idle = sv.gpus - sv.replicas * sv.tensor_parallel
                where = f"{site.file or site.name}: models[{i}].tensor_parallel"
                out.append(
                    f"{where}: {m.tensor_parallel} does not divide the {sv.gpus} {sv.gpu.name} GPUs "
                    f"serving {m.name}: {idle} stay idle (and are still counted in its cost)"
                )
        for i, node in enumerate(site.nodes):
            if node.gpus and find_gpu(node.gpus.model, rows) is None:
                out.append(
                    f"{site.file or site.name}: nodes[{i}].gpus.model: no GPU row names '{node.gpus.model}'; "
                    f"placement assumes the default row (TTFT {d.ttft_ms:g} ms, prefill "
                    f"{d.prefill_tok_s:g} tok/s, decode {d.decode_tok_s:g} tok/s); add a row under "
                    "'gpus:' in grid.yaml"
                )
    return out
