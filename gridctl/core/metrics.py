"""A vLLM (or SGLang, or lab) site's Prometheus ``/metrics`` text, read as its load. Pure.

The daemon scrapes each site at every probe round and hands the
text here; what comes back is what placement reads as the site's own queue
(:meth:`gridctl.core.sitestate.SiteState.set_load`). Standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

_SAMPLE = re.compile(
    r"^vllm:(num_requests_running|num_requests_waiting|gpu_cache_usage_perc|kv_cache_usage_perc)"
    r"(?:\{([^}]*)\})?\s+([0-9.eE+-]+|NaN)\s*$",
    re.M,
)
_MODEL_NAME = re.compile(r'model_name="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class SiteLoad:
    """A site's own load, from its vLLM /metrics: running and waiting requests per model
    (the ``model_name`` label; a sample without it counts for every model), KV-cache usage."""

    running: Mapping[str, int]
    waiting: Mapping[str, int]
    waiting_total: float | None  # None: the site exports no queue
    kv_usage: float | None

    def for_model(self, model: str) -> tuple[int, int]:
        return self.running.get(model, self.running.get("", 0)), self.waiting.get(
            model, self.waiting.get("", 0)
        )


def parse_site_metrics(text: str) -> SiteLoad:
    """The Prometheus text of a vLLM (or lab) site -> its :class:`SiteLoad`. Pure."""
    running: dict[str, int] = {}
    waiting: dict[str, int] = {}
    kv: list[float] = []
    waited = False
    for name, labels, value in _SAMPLE.findall(text):
        x = float(value)
        if not math.isfinite(x):
            continue
        if name in ("gpu_cache_usage_perc", "kv_cache_usage_perc"):
            kv.append(x)
            continue
        found = _MODEL_NAME.search(labels or "")
        model = found.group(1) if found else ""
        into = running if name == "num_requests_running" else waiting
        waited = waited or name == "num_requests_waiting"
        into[model] = into.get(model, 0) + max(0, round(x))
    return SiteLoad(
        running, waiting, float(sum(waiting.values())) if waited else None, max(kv) if kv else None
    )


NO_LOAD = SiteLoad({}, {}, None, None)  # a site whose /metrics could not be read
