"""How fast a lab site serves: the GPU table and the timing model. Pure.

Figures are for an 8B-class model in BF16 (llama-3.1-8b-instruct), one
replica per GPU, one request alone on it; they are round numbers in line with
public vLLM benchmarks, meant to make sites differ plausibly, not to predict a
real deployment.

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
  about 128 KiB per token); a site has this times its GPU count. It bounds the
  prefix cache and gives ``gpu_cache_usage_perc``.

Load, from the requests running on the site's slots for that model (``running``
out of ``capacity``, counted when a request is admitted)::

    ttft_ms     = (TTFT + uncached_prompt_tokens / prefill * 1000) * (1 + LOAD_TTFT * running / capacity)
    interval_ms = 1000 / decode * (1 + LOAD_DECODE * running / capacity)

so a full site takes twice as long per token as an idle one. A request beyond
``capacity`` waits in a FIFO queue first; its time there adds to its TTFT.

A model whose name gives a size over 8B ("llama-3.1-70b-instruct") is slower:
both times are multiplied by ``sqrt(size / 8)`` (70B: about 3x).

Tokens are counted as 4 characters each (OpenAI's rule of thumb); the output
is deterministic filler text, one word per token.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

LOAD_TTFT = 1.0
LOAD_DECODE = 1.0
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class GpuPerf:
    name: str  # the table's name for it, or "default"
    ttft_ms: float
    prefill_tok_s: float
    decode_tok_s: float
    kv_tokens: int


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


def gpu_perf(model: str | None) -> GpuPerf:
    """The table row for a GPU model as the inventory names it ("H100", "NVIDIA H100 80GB HBM3",
    "RTX PRO 6000 Blackwell"...); the default row for anything else."""
    if not model:
        return DEFAULT_GPU
    words = _words(model)
    for key, perf in _MATCHERS:
        if key in words:
            return perf
    return DEFAULT_GPU


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


_FILLER = (
    " The", " grid", " routes", " each", " request", " to", " a", " nearby", " site", " with",
    " free", " capacity", ",", " keeping", " its", " data", " where", " it", " may", " go", ".",
)  # fmt: skip


def filler_tokens(prompt: str, n: int) -> list[str]:
    """``n`` deterministic tokens; the same prompt always gets the same text."""
    start = zlib.crc32(prompt.encode("utf-8", "surrogatepass")) % len(_FILLER)
    k = len(_FILLER)
    return [_FILLER[(start + i) % k] for i in range(n)]
