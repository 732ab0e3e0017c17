"""The inventory schema: plain YAML values -> model objects, or located problems.

Pure: no files. Each ``build_*`` function takes a parsed document and returns
the model object (``None`` when too broken) plus every issue it found, each
with its path inside the document; ``load`` turns paths into line numbers.
The README's inventory reference documents exactly these fields.
"""

from __future__ import annotations

from typing import Any

from gridctl.core.inventory.checks import (
    GPU_MODEL,
    MAX_SLO_MS,
    TLS_KEYS,
    USER,
    Checker,
    Issue,
    check_jump,
    check_key_path,
    check_tls_files,
    show,
)
from gridctl.core.inventory.jurisdictions import expand_jurisdictions
from gridctl.core.inventory.model import (
    GpuRow,
    Grid,
    Region,
    SshDefaults,
    TlsFiles,
    Weights,
)
from gridctl.core.inventory.yamldoc import Path

GRID_KEYS = {"name": True, "defaults": False, "regions": False, "gpus": False}
GPU_ROW_KEYS = {"name": True, "ttft_ms": True, "prefill_tok_s": True, "decode_tok_s": True, "kv_tokens": True}
DEFAULTS_KEYS = {"ssh": False, "slo_ms": False, "weights": False, **dict.fromkeys(TLS_KEYS, False)}
SSH_KEYS = {"user": False, "port": False, "key": False, "jump": False}
WEIGHT_KEYS = {"latency": False, "cost": False, "headroom": False}
REGION_KEYS = {
    "name": True,
    "location": True,
    "jurisdiction": True,
    "allowed_jurisdictions": False,
    "latency_ms": False,
}


def build_grid(doc: Any) -> tuple[Grid | None, list[Issue]]:
    ck = Checker()
    top = ck.want_mapping(doc, (), GRID_KEYS)
    if top is None:
        return None, ck.issues
    name = ck.want_name(top.get("name"), ("name",)) if "name" in top else None
    ssh, slo_ms, weights = SshDefaults(), 500.0, Weights()
    if "defaults" in top and (d := ck.want_mapping(top["defaults"], ("defaults",), DEFAULTS_KEYS)):
        if "ssh" in d:
            ssh = _ssh_defaults(ck, d["ssh"], ("defaults", "ssh")) or ssh
        if "slo_ms" in d:
            slo = ck.want_number(d["slo_ms"], ("defaults", "slo_ms"), 1, MAX_SLO_MS, "milliseconds")
            slo_ms = slo if slo is not None else slo_ms
        if "weights" in d:
            weights = _weights(ck, d["weights"], ("defaults", "weights")) or weights
    tls = (
        check_tls_files(ck, top["defaults"], ("defaults",))
        if isinstance(top.get("defaults"), dict)
        else TlsFiles()
    )
    regions: list[Region] = []
    if "regions" in top and (items := ck.want_list(top["regions"], ("regions",))) is not None:
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            region = _region(ck, item, ("regions", i))
            if region is None:
                continue
            if region.name in seen:
                ck.fail(
                    ("regions", i, "name"),
                    f"duplicate region name '{region.name}' (also regions[{seen[region.name]}])",
                )
                continue
            seen[region.name] = i
            regions.append(region)
    gpus = _gpu_rows(ck, top["gpus"]) if top.get("gpus") is not None else []
    if name is None or ck.issues:
        return None, ck.issues
    given = "defaults" in top and isinstance(top["defaults"], dict) and "weights" in top["defaults"]
    grid = Grid(
        name=name,
        ssh=ssh,
        slo_ms=slo_ms,
        weights=weights,
        regions=tuple(regions),
        gpus=tuple(gpus),
        weights_given=given,
        tls=tls,
    )
    return grid, ck.issues


def _gpu_rows(ck: Checker, value: Any) -> list[GpuRow]:
    """grid.yaml ``gpus:``: rows that add to (or override) the built-in GPU table."""
    items = ck.want_list(value, ("gpus",))
    out: list[GpuRow] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items or []):
        path: Path = ("gpus", i)
        m = ck.want_mapping(item, path, GPU_ROW_KEYS)
        if m is None:
            continue
        name = (
            ck.want_str(m["name"], (*path, "name"), GPU_MODEL, "a GPU model such as B200")
            if "name" in m
            else None
        )
        nums = [
            ck.want_number(m[k], (*path, k), 0.001, 1e9, what) if k in m else None
            for k, what in (
                ("ttft_ms", "milliseconds"),
                ("prefill_tok_s", "tokens per second"),
                ("decode_tok_s", "tokens per second"),
            )
        ]
        kv = (
            ck.want_int(m["kv_tokens"], (*path, "kv_tokens"), 1, 10**12, "a number of tokens")
            if "kv_tokens" in m
            else None
        )
        if name is not None and name.upper() in seen:
            ck.fail((*path, "name"), f"GPU row '{name}' is listed twice (also gpus[{seen[name.upper()]}])")
            continue
        if name is None or kv is None or any(n is None for n in nums):
            continue
        seen[name.upper()] = i
        out.append(GpuRow(name, nums[0], nums[1], nums[2], kv))  # type: ignore[arg-type]
    return out


def _ssh_defaults(ck: Checker, value: Any, path: Path) -> SshDefaults | None:
    m = ck.want_mapping(value, path, SSH_KEYS)
    if m is None:
        return None
    user = ck.want_str(m["user"], (*path, "user"), USER, "a user name") if "user" in m else None
    port = ck.want_int(m["port"], (*path, "port"), 1, 65535, "a port") if "port" in m else 22
    key = check_key_path(ck, m["key"], (*path, "key")) if "key" in m else None
    jump = check_jump(ck, m["jump"], (*path, "jump")) if m.get("jump") is not None else None
    return SshDefaults(user=user, port=port or 22, key=key, jump=jump)


def _weights(ck: Checker, value: Any, path: Path) -> Weights | None:
    m = ck.want_mapping(value, path, WEIGHT_KEYS)
    if m is None:
        return None
    base = Weights()
    got = {
        k: ck.want_number(m[k], (*path, k), 0, 1000, "a weight") if k in m else getattr(base, k)
        for k in WEIGHT_KEYS
    }
    if any(v is None for v in got.values()):
        return None
    if sum(got.values()) <= 0:  # type: ignore[arg-type]
        ck.fail(path, "at least one weight must be above 0")
        return None
    return Weights(**got)  # type: ignore[arg-type]


def _region(ck: Checker, value: Any, path: Path) -> Region | None:
    m = ck.want_mapping(value, path, REGION_KEYS)
    if m is None:
        return None
    name = ck.want_name(m["name"], (*path, "name")) if "name" in m else None
    loc = ck.want_location(m["location"], (*path, "location")) if "location" in m else None
    code = ck.want_code(m["jurisdiction"], (*path, "jurisdiction")) if "jurisdiction" in m else None
    allowed: list[str] | None = [code] if code else None
    if "allowed_jurisdictions" in m:
        apath = (*path, "allowed_jurisdictions")
        items = ck.want_list(m["allowed_jurisdictions"], apath)
        if items is not None and not items:
            ck.fail(apath, "must name at least one jurisdiction (or group such as EU)")
            items = None
        if items is not None:
            codes = [ck.want_code(c, (*apath, i), groups=True) for i, c in enumerate(items)]
            allowed = [c for c in codes if c] if all(codes) else None
    latency: dict[str, float] = {}
    if "latency_ms" in m:
        lpath = (*path, "latency_ms")
        lat = m["latency_ms"]
        if not isinstance(lat, dict):
            ck.fail(lpath, f"must be a mapping of site name to milliseconds (got {show(lat)})")
        else:
            for site, ms in lat.items():
                if ck.want_name(site, (*lpath, str(site))) is None:
                    continue
                v = ck.want_number(ms, (*lpath, site), 0, MAX_SLO_MS, "milliseconds")
                if v is not None:
                    latency[site] = v
    if name is None or loc is None or code is None or allowed is None:
        return None
    return Region(
        name=name,
        location=loc,
        jurisdiction=code,
        allowed_jurisdictions=tuple(allowed),
        allowed=expand_jurisdictions(allowed),
        latency_ms=latency,
    )
