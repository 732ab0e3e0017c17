"""A lab site's ``GET /metrics``: vLLM's Prometheus names, one series per model (label
``model_name``), and the lab's own (requests received, the failure mode). Pure: the models'
state in, the text out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from gridctl.lab.formats import Metric, render_metrics
from gridctl.lab.gpu import ModelState

# name, type, help, the value of one model
_PerModel = tuple[str, str, str, Callable[[ModelState], float]]

_VLLM: tuple[_PerModel, ...] = (
    (
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        lambda m: m.replicas.running,
    ),
    (
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        lambda m: m.replicas.waiting,
    ),
    (
        "vllm:gpu_cache_usage_perc",
        "gauge",
        "GPU KV-cache usage. 1 means 100 percent usage.",
        lambda m: m.kv_usage,
    ),
    ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", lambda m: m.kv_usage),
    (
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        lambda m: m.stats.prefix_queries,
    ),
    (
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        lambda m: m.stats.prefix_hits,
    ),
    (
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        lambda m: m.stats.prompt_tokens,
    ),
    (
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        lambda m: m.stats.generation_tokens,
    ),
)
_REQUESTS: _PerModel = (
    "gridctl_lab_requests_total",
    "counter",
    "Requests received for the model.",
    lambda m: m.stats.requests,
)


def _per_model(metric: _PerModel, models: Mapping[str, ModelState]) -> Metric:
    name, kind, help_text, get = metric
    return Metric(name, kind, help_text, [({"model_name": n}, float(get(m))) for n, m in models.items()])


def render_site_metrics(models: Mapping[str, ModelState], mode: str, modes: Sequence[str]) -> bytes:
    """The /metrics text of a site serving ``models``, in failure ``mode`` (one of ``modes``)."""
    success = [
        ({"finished_reason": reason, "model_name": n}, float(count))
        for n, m in models.items()
        for reason, count in sorted(m.stats.success.items())
    ]
    return render_metrics(
        [
            *(_per_model(metric, models) for metric in _VLLM),
            Metric(
                "vllm:request_success_total", "counter", "Count of successfully processed requests.", success
            ),
            _per_model(_REQUESTS, models),
            Metric(
                "gridctl_lab_failure_mode",
                "gauge",
                "The lab failure mode (1: current).",
                [({"mode": m}, 1.0 if m == mode else 0.0) for m in modes],
            ),
        ]
    )
