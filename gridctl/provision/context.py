"""What a node's templates see: its effective ``provision:`` settings and the context.

Pure: the inventory in, plain dicts out. Variables, lowest priority first:
the profile's ``defaults``; facts from the inventory (``gpu_count``,
``gpu_model``, ``tensor_parallel_size``, ``models``, ``port``); the site's
``provision.vars``; the node's ``provision.vars``. ``node``, ``site``,
``grid``, ``profile``, ``prefix``, ``owner``, ``path()`` and ``gridctl`` are
set by gridctl and cannot be overridden.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gridctl import __version__
from gridctl.core.inventory.model import Node, Site

DEFAULT_PREFIX = "/"


@dataclass(frozen=True)
class Settings:
    """A node's provision settings: its own over its site's (vars merged)."""

    profile: str | None
    prefix: str
    owner: str | None
    vars: dict[str, Any]


def build_settings(site: Site, node: Node) -> Settings:
    s, n = site.provision, node.provision
    merged: dict[str, Any] = {}
    for p in (s, n):
        if p is not None:
            merged.update(p.vars)

    def pick(attr: str) -> Any:
        for p in (n, s):
            if p is not None and getattr(p, attr) is not None:
                return getattr(p, attr)
        return None

    return Settings(
        profile=pick("profile"),
        prefix=pick("prefix") or DEFAULT_PREFIX,
        owner=pick("owner"),
        vars=merged,
    )


def endpoint_port(url: str) -> int:
    """The port of the site's endpoint URL (443/80 by scheme when not written)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def remote_path(prefix: str, rel: str) -> str:
    """``rel`` under the node's prefix, as an absolute path."""
    return posixpath.join(prefix, rel.lstrip("/"))


def parallel_sizes(site: Site, node: Node, served: Any = None) -> tuple[int, int]:
    """(tensor parallel, data parallel) sizes for the model a node serves (``served_model_name``,
    else the site's first model): its ``tensor_parallel`` (default: the node's GPU count) and as
    many replicas as fit on the node's GPUs, as placement times them (README: placement)."""
    count = node.gpus.count if node.gpus else 0
    model = next((m for m in site.models if m.name == served), site.models[0] if site.models else None)
    tp = model.tensor_parallel if model is not None and model.tensor_parallel else max(1, count)
    return tp, max(1, count // tp) if count else 1


def build_context(
    grid: str, site: Site, node: Node, settings: Settings, defaults: dict[str, Any]
) -> dict[str, Any]:
    prefix = settings.prefix
    path: Callable[[str], str] = lambda rel: remote_path(prefix, rel)  # noqa: E731
    gpus = node.gpus
    tp, dp = parallel_sizes(site, node, settings.vars.get("served_model_name"))
    facts: dict[str, Any] = {
        "gpu_count": gpus.count if gpus else 0,
        "gpu_model": gpus.model if gpus else None,
        "tensor_parallel_size": tp,
        "data_parallel_size": dp,
        "models": [m.name for m in site.models],
        "port": endpoint_port(site.endpoint),
    }
    fixed: dict[str, Any] = {
        "node": {
            "name": node.name,
            "site": node.site,
            "host": node.host,
            "address": node.address,
            "user": node.user,
            "gpus": {"model": gpus.model, "count": gpus.count} if gpus else None,
        },
        "site": {
            "name": site.name,
            "kind": site.kind,
            "region": site.region,
            "jurisdiction": site.jurisdiction,
            "location": {"lat": site.location.lat, "lon": site.location.lon},
            "endpoint": site.endpoint,
            "health_path": site.health_path,
            "api_key_env": site.api_key_env,
            "labels": dict(site.labels),
            "models": [{"name": m.name, "capacity": m.capacity} for m in site.models],
        },
        "grid": {"name": grid},
        "profile": settings.profile,
        "prefix": prefix,
        "owner": settings.owner,
        "path": path,
        "gridctl": {"version": __version__},
    }
    return {**defaults, **facts, **settings.vars, **fixed}
