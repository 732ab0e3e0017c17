"""The documented JSON/YAML shapes of inventory objects, and the Ansible export."""

from __future__ import annotations

import re
from typing import Any

from gridctl.core.inventory.model import Inventory, Node, Region, Site


def node_dict(node: Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "site": node.site,
        "host": node.host,
        "port": node.port,
        "user": node.user,
        "key": node.key,
        "jump": node.jump,
        "gpus": {"model": node.gpus.model, "count": node.gpus.count} if node.gpus else None,
    }


def site_dict(site: Site, health: dict[str, Any] | None = None) -> dict[str, Any]:
    """``health``: the site's last recorded verdict (status, reasons, checked_at), if any."""
    return {
        "name": site.name,
        "kind": site.kind,
        "region": site.region,
        "jurisdiction": site.jurisdiction,
        "location": {"lat": site.location.lat, "lon": site.location.lon},
        "endpoint": site.endpoint,
        "health_path": site.health_path,
        "api_key_env": site.api_key_env,
        "cost_per_gpu_hour": site.cost_per_gpu_hour,
        "drain": site.drain,
        "labels": dict(site.labels),
        "models": [
            {"name": m.name, "capacity": m.capacity, "tensor_parallel": m.tensor_parallel, "gpu": m.gpu}
            for m in site.models
        ],
        "nodes": [node_dict(n) for n in site.nodes],
        "gpus": site.gpu_count,
        "file": site.file,
        "health": health,
    }


def region_dict(region: Region) -> dict[str, Any]:
    return {
        "name": region.name,
        "location": {"lat": region.location.lat, "lon": region.location.lon},
        "jurisdiction": region.jurisdiction,
        "allowed_jurisdictions": list(region.allowed_jurisdictions),
        "allowed": sorted(region.allowed),
        "latency_ms": dict(region.latency_ms),
    }


def inventory_dict(inv: Inventory) -> dict[str, Any]:
    g = inv.grid
    return {
        "grid": {
            "name": g.name,
            "defaults": {
                "ssh": {"user": g.ssh.user, "port": g.ssh.port, "key": g.ssh.key, "jump": g.ssh.jump},
                "slo_ms": g.slo_ms,
                "weights": {
                    "latency": g.weights.latency,
                    "cost": g.weights.cost,
                    "headroom": g.weights.headroom,
                },
            },
            "gpus": [
                {
                    "name": r.name,
                    "ttft_ms": r.ttft_ms,
                    "prefill_tok_s": r.prefill_tok_s,
                    "decode_tok_s": r.decode_tok_s,
                    "kv_tokens": r.kv_tokens,
                }
                for r in g.gpus
            ],
            "regions": [region_dict(r) for r in g.regions],
        },
        "sites": [site_dict(s) for s in inv.sites],
    }


def _group(prefix: str, value: str) -> str:
    """Ansible group names: letters, digits and underscores only."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', value).lower()}"


def build_ansible_inventory(inv: Inventory) -> dict[str, Any]:
    """A YAML inventory for ``ansible-inventory -i FILE``: groups per site, region, kind, jurisdiction."""
    children: dict[str, Any] = {}
    parents: dict[str, dict[str, Any]] = {}
    for site in inv.sites:
        site_group = _group("site", site.name)
        hosts: dict[str, Any] = {}
        for node in site.nodes:
            hv: dict[str, Any] = {"ansible_host": node.host, "ansible_port": node.port}
            if node.user:
                hv["ansible_user"] = node.user
            if node.key:
                hv["ansible_ssh_private_key_file"] = node.key
            if node.jump:
                hv["ansible_ssh_common_args"] = f"-o ProxyJump={node.jump}"
            if node.gpus:
                hv["gridctl_gpu_model"] = node.gpus.model
                hv["gridctl_gpu_count"] = node.gpus.count
            hosts[node.name] = hv
        children[site_group] = {
            "hosts": hosts,
            "vars": {
                "gridctl_site": site.name,
                "gridctl_endpoint": site.endpoint,
                "gridctl_drain": site.drain,
            },
        }
        for prefix, value in (
            ("region", site.region),
            ("kind", site.kind),
            ("jurisdiction", site.jurisdiction),
        ):
            parents.setdefault(_group(prefix, value), {"children": {}})["children"][site_group] = {}
    for name in sorted(parents):
        children[name] = parents[name]
    return {"all": {"vars": {"gridctl_grid": inv.grid.name}, "children": children}}
