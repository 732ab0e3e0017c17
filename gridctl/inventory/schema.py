"""The inventory schema: plain YAML values -> model objects, or located problems.

Pure: no files. Each ``build_*`` function takes a parsed document and returns
the model object (``None`` when too broken) plus every issue it found, each
with its path inside the document; ``load`` turns paths into line numbers.
The README's inventory reference documents exactly these fields.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gridctl.inventory.jurisdictions import GROUPS, expand_jurisdictions, is_code
from gridctl.inventory.model import (
    SITE_KINDS,
    GpuRow,
    Gpus,
    Grid,
    Location,
    ModelServing,
    Node,
    Provision,
    Region,
    Site,
    SshDefaults,
    TlsFiles,
    Weights,
)
from gridctl.inventory.yamldoc import Path

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")
USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
JUMP = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_.-]{0,31}@)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$"
)
HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{0,200}$")
GPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
PREFIX = re.compile(r"^/$|^(/[A-Za-z0-9._@+-]+)+/?$")
OWNER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}(:[A-Za-z_][A-Za-z0-9_.-]{0,31})?$")
VAR_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
# Names the provisioning templates get from gridctl itself; a var may not take them.
RESERVED_VARS = frozenset({"node", "site", "grid", "profile", "prefix", "owner", "path", "gridctl"})
MAX_VAR_TEXT = 4096

MAX_GPUS_PER_NODE = 256
MAX_COST_PER_GPU_HOUR = 1000.0
MAX_CAPACITY = 1_000_000
MAX_SLO_MS = 600_000.0

GRID_KEYS = {"name": True, "defaults": False, "regions": False, "gpus": False}
GPU_ROW_KEYS = {"name": True, "ttft_ms": True, "prefill_tok_s": True, "decode_tok_s": True, "kv_tokens": True}
TLS_KEYS = ("tls_ca", "tls_cert", "tls_key")
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
LOCATION_KEYS = {"lat": True, "lon": True}
SITE_KEYS = {
    "name": True,
    "kind": True,
    "region": True,
    "jurisdiction": True,
    "location": True,
    "endpoint": True,
    "health_path": False,
    "api_key_env": False,
    "cost_per_gpu_hour": False,
    "drain": False,
    "labels": False,
    "models": False,
    "nodes": False,
    "provision": False,
    **dict.fromkeys(TLS_KEYS, False),
}
MODEL_KEYS = {"name": True, "capacity": True, "tensor_parallel": False, "gpu": False}
NODE_KEYS = {
    "name": True,
    "host": True,
    "port": False,
    "user": False,
    "key": False,
    "jump": False,
    "gpus": False,
    "provision": False,
}
GPUS_KEYS = {"model": True, "count": True}
PROVISION_KEYS = {"profile": False, "prefix": False, "owner": False, "vars": False}


@dataclass(frozen=True)
class Issue:
    path: Path
    message: str
    at_key: bool = False  # point at the key's line rather than the value's


class Checker:
    """Collects issues; each ``want_*`` returns the value or None when invalid. The schema's
    checks of one document's values, public for other documents read the same way (scenario
    files: ``gridctl.sim.profiles``)."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def fail(self, path: Path, message: str, at_key: bool = False) -> None:
        self.issues.append(Issue(path, message, at_key))

    def want_mapping(self, value: Any, path: Path, keys: dict[str, bool]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of {', '.join(keys)} (got {show(value)})")
            return None
        for key in value:
            if not isinstance(key, str) or key not in keys:
                near = difflib.get_close_matches(str(key), list(keys), n=1, cutoff=0.6)
                hint = f"did you mean '{near[0]}'?" if near else f"expected one of: {', '.join(keys)}"
                self.fail((*path, str(key)), f"unknown key; {hint}", at_key=True)
        for key, required in keys.items():
            if required and key not in value:
                self.fail((*path, key), "missing (required)")
        return value

    def want_list(self, value: Any, path: Path) -> list[Any] | None:
        if not isinstance(value, list):
            self.fail(path, f"must be a list (got {show(value)})")
            return None
        return value

    def want_str(self, value: Any, path: Path, pattern: re.Pattern[str], what: str) -> str | None:
        if not isinstance(value, str):
            extra = _bool_hint(value)
            self.fail(path, f"must be {what} (got {show(value)}){extra}")
            return None
        if not pattern.match(value):
            self.fail(path, f"must be {what} (got {show(value)})")
            return None
        return value

    def want_name(self, value: Any, path: Path) -> str | None:
        what = "a DNS label: lowercase letters, digits and '-', at most 63 characters"
        return self.want_str(value, path, DNS_LABEL, what)

    def want_int(self, value: Any, path: Path, lo: int, hi: int, what: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be {what} (got {show(value)})")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"must be {what} between {lo} and {hi} (got {value})")
            return None
        return value

    def want_number(self, value: Any, path: Path, lo: float, hi: float, what: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            self.fail(path, f"must be {what} (got {show(value)})")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"must be {what} between {lo:g} and {hi:g} (got {value:g})")
            return None
        return float(value)

    def want_bool(self, value: Any, path: Path) -> bool | None:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false (got {show(value)})")
            return None
        return value

    def want_code(self, value: Any, path: Path, groups: bool = False) -> str | None:
        what = "an ISO 3166-1 alpha-2 country code such as US or DE"
        if isinstance(value, str) and (is_code(value) or (groups and value in GROUPS)):
            return value
        if isinstance(value, str) and (is_code(value.upper()) or (groups and value.upper() in GROUPS)):
            self.fail(path, f"must be {what} (got {show(value)}); write it in capitals: {value.upper()}")
        else:
            groups_txt = f", or a group: {', '.join(GROUPS)}" if groups else ""
            self.fail(path, f"must be {what}{groups_txt} (got {show(value)}){_bool_hint(value)}")
        return None

    def want_location(self, value: Any, path: Path) -> Location | None:
        loc = self.want_mapping(value, path, LOCATION_KEYS)
        if loc is None:
            return None
        lat = (
            self.want_number(loc.get("lat"), (*path, "lat"), -90, 90, "a latitude") if "lat" in loc else None
        )
        lon = (
            self.want_number(loc.get("lon"), (*path, "lon"), -180, 180, "a longitude")
            if "lon" in loc
            else None
        )
        return Location(lat, lon) if lat is not None and lon is not None else None

    def want_url(self, value: Any, path: Path) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"must be an http(s) URL (got {show(value)})")
            return None
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            parts, port_ok = None, False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(path, f"must be an http(s) URL such as https://site.example.net (got {show(value)})")
            return None
        if not port_ok or any(c.isspace() for c in value):
            self.fail(path, f"is not a valid URL (got {show(value)})")
            return None
        if parts.username or parts.password:
            self.fail(path, "must not carry credentials; name an environment variable in api_key_env")
            return None
        if parts.query or parts.fragment:
            self.fail(path, f"must be a base URL without query or fragment (got {show(value)})")
            return None
        return value.rstrip("/")


def show(value: Any) -> str:
    """How a bad value is quoted in a message: 'four', 12, true, a mapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _bool_hint(value: Any) -> str:
    if isinstance(value, bool):
        return '; YAML reads yes/no/on/off (and NO, Norway) as booleans: quote it, e.g. "NO"'
    return ""


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
        _tls_files(ck, top["defaults"], ("defaults",))
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
    key = _key_path(ck, m["key"], (*path, "key")) if "key" in m else None
    jump = _jump(ck, m["jump"], (*path, "jump")) if m.get("jump") is not None else None
    return SshDefaults(user=user, port=port or 22, key=key, jump=jump)


def _jump(ck: Checker, value: Any, path: Path) -> str | None:
    what = "a jump host as [user@]host[:port]"
    text = ck.want_str(value, path, JUMP, what)
    if text is not None and parse_jump(text)[2] > 65535:
        ck.fail(path, f"must be {what} with a port up to 65535 (got {show(value)})")
        return None
    return text


def parse_jump(text: str) -> tuple[str | None, str, int]:
    """``[user@]host[:port]`` (already validated) -> (user, host, port)."""
    user, _, rest = text.rpartition("@")
    host, _, port = rest.partition(":")
    return (user or None, host, int(port) if port else 22)


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


def _tls_files(ck: Checker, m: dict[str, Any], path: Path) -> TlsFiles:
    """``tls_ca``, ``tls_cert``, ``tls_key`` of a site or of grid.yaml's defaults: file paths as
    written (``load`` resolves them and reads the files). A key alone has no certificate to go with."""
    got: dict[str, str | None] = {}
    for name in TLS_KEYS:
        value = m.get(name)
        if value is None:
            got[name] = None
        elif not isinstance(value, str) or not value or any(c in value for c in "\n\r\0"):
            what = "a PEM file: the CA certificates" if name == "tls_ca" else "a PEM file"
            ck.fail((*path, name), f"must be the path to {what} (got {show(value)}), never its content")
            got[name] = None
        elif "-----BEGIN" in value:
            ck.fail((*path, name), "must be a file path, not PEM text: keep keys out of the inventory")
            got[name] = None
        else:
            got[name] = value
    if got["tls_key"] is not None and got["tls_cert"] is None and "tls_cert" not in m:
        ck.fail((*path, "tls_key"), "needs tls_cert beside it: the client certificate this key is for")
    return TlsFiles(got["tls_ca"], got["tls_cert"], got["tls_key"])


def _key_path(ck: Checker, value: Any, path: Path) -> str | None:
    if not isinstance(value, str) or not value or any(c in value for c in "\n\r\0"):
        ck.fail(path, f"must be a path to a private key file (got {show(value)})")
        return None
    return value


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


def build_site(doc: Any, ssh: SshDefaults) -> tuple[Site | None, list[Issue]]:
    """A site document -> Site; node ports/users fall back to the grid's SSH defaults."""
    ck = Checker()
    m = ck.want_mapping(doc, (), SITE_KEYS)
    if m is None:
        return None, ck.issues
    name = ck.want_name(m["name"], ("name",)) if "name" in m else None
    kind = None
    if "kind" in m:
        kind = m["kind"] if m["kind"] in SITE_KINDS else None
        if kind is None:
            near = difflib.get_close_matches(str(m["kind"]), SITE_KINDS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            ck.fail(("kind",), f"must be one of {', '.join(SITE_KINDS)} (got {show(m['kind'])}){hint}")
    region = ck.want_name(m["region"], ("region",)) if "region" in m else None
    code = ck.want_code(m["jurisdiction"], ("jurisdiction",)) if "jurisdiction" in m else None
    loc = ck.want_location(m["location"], ("location",)) if "location" in m else None
    endpoint = ck.want_url(m["endpoint"], ("endpoint",)) if "endpoint" in m else None
    health_path = "/health"
    if "health_path" in m:
        hp = ck.want_str(m["health_path"], ("health_path",), HEALTH_PATH, "a URL path such as /health")
        health_path = hp or health_path
    key_env = None
    if m.get("api_key_env") is not None:
        key_env = ck.want_str(m["api_key_env"], ("api_key_env",), ENV_VAR, "an environment variable name")
    cost = 0.0
    if "cost_per_gpu_hour" in m:
        c = ck.want_number(m["cost_per_gpu_hour"], ("cost_per_gpu_hour",), 0, MAX_COST_PER_GPU_HOUR, "a cost")
        cost = c if c is not None else cost
    drain = bool(ck.want_bool(m["drain"], ("drain",))) if "drain" in m else False
    labels = _labels(ck, m["labels"]) if m.get("labels") is not None else {}
    models = _models(ck, m["models"]) if m.get("models") is not None else []
    nodes = _nodes(ck, m["nodes"], name or "", ssh) if m.get("nodes") is not None else []
    provision = _provision(ck, m["provision"], ("provision",)) if m.get("provision") is not None else None
    tls = _tls_files(ck, m, ())
    _check_serving(ck, models, nodes)
    if ck.issues or None in (name, kind, region, code, loc, endpoint):
        return None, ck.issues
    site = Site(
        name=name,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        region=region,  # type: ignore[arg-type]
        jurisdiction=code,  # type: ignore[arg-type]
        location=loc,  # type: ignore[arg-type]
        endpoint=endpoint,  # type: ignore[arg-type]
        health_path=health_path,
        api_key_env=key_env,
        cost_per_gpu_hour=cost,
        drain=drain,
        labels=labels,
        models=tuple(models),
        nodes=tuple(nodes),
        provision=provision,
        tls=tls,  # the site's own, as written: load resolves them and adds the grid's
    )
    return site, ck.issues


def _labels(ck: Checker, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        ck.fail(("labels",), f"must be a mapping of label to value (got {show(value)})")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        path: Path = ("labels", str(k))
        key = ck.want_str(k, path, LABEL_KEY, "a label key: letters, digits, '.', '_', '/', '-'")
        val = ck.want_str(
            v, path, LABEL_VALUE, "a label value: letters, digits, '.', '_', '-' (quote numbers)"
        )
        if key is not None and val is not None:
            out[key] = val
    return out


def _models(ck: Checker, value: Any) -> list[ModelServing]:
    items = ck.want_list(value, ("models",))
    out: list[ModelServing] = []
    seen: set[str] = set()
    for i, item in enumerate(items or []):
        path: Path = ("models", i)
        m = ck.want_mapping(item, path, MODEL_KEYS)
        if m is None:
            continue
        name = ck.want_str(m["name"], (*path, "name"), MODEL_NAME, "a model name") if "name" in m else None
        cap = (
            ck.want_int(m["capacity"], (*path, "capacity"), 1, MAX_CAPACITY, "a positive integer")
            if "capacity" in m
            else None
        )
        tp = (
            ck.want_int(m["tensor_parallel"], (*path, "tensor_parallel"), 1, MAX_GPUS_PER_NODE, "a GPU count")
            if m.get("tensor_parallel") is not None
            else None
        )
        gpu = (
            ck.want_str(m["gpu"], (*path, "gpu"), GPU_MODEL, "a GPU model of the site's nodes")
            if m.get("gpu") is not None
            else None
        )
        if name is not None and name in seen:
            ck.fail((*path, "name"), f"model '{name}' is listed twice")
        elif name is not None and cap is not None:
            seen.add(name)
            out.append(ModelServing(name, cap, tp, gpu))
    return out


def _check_serving(ck: Checker, models: list[ModelServing], nodes: list[Node]) -> None:
    """``models[].gpu`` names a GPU of the site's nodes; ``tensor_parallel`` fits on one of them."""
    counts: dict[str, int] = {}
    for n in nodes:
        if n.gpus:
            counts[n.gpus.model.upper()] = max(counts.get(n.gpus.model.upper(), 0), n.gpus.count)
    for i, m in enumerate(models):
        if m.gpu is not None and m.gpu.upper() not in counts:
            have = ", ".join(sorted({n.gpus.model for n in nodes if n.gpus})) or "none listed"
            ck.fail(("models", i, "gpu"), f"no node of this site has {m.gpu} GPUs (its GPUs: {have})")
            continue
        if m.tensor_parallel is not None and counts:
            most = counts[m.gpu.upper()] if m.gpu else max(counts.values())
            if m.tensor_parallel > most:
                ck.fail(
                    ("models", i, "tensor_parallel"),
                    f"{m.tensor_parallel} GPUs per replica, but no node has more than {most}",
                )


def _nodes(ck: Checker, value: Any, site: str, ssh: SshDefaults) -> list[Node]:
    items = ck.want_list(value, ("nodes",))
    out: list[Node] = []
    for i, item in enumerate(items or []):
        path: Path = ("nodes", i)
        m = ck.want_mapping(item, path, NODE_KEYS)
        if m is None:
            continue
        name = ck.want_name(m["name"], (*path, "name")) if "name" in m else None
        host = (
            ck.want_str(m["host"], (*path, "host"), HOST, "a host name or IP address")
            if "host" in m
            else None
        )
        port = ck.want_int(m["port"], (*path, "port"), 1, 65535, "a port") if "port" in m else ssh.port
        user = ck.want_str(m["user"], (*path, "user"), USER, "a user name") if "user" in m else ssh.user
        key = _key_path(ck, m["key"], (*path, "key")) if "key" in m else ssh.key
        jump = _jump(ck, m["jump"], (*path, "jump")) if m.get("jump") is not None else ssh.jump
        gpus = _gpus(ck, m["gpus"], (*path, "gpus")) if m.get("gpus") is not None else None
        prov = (
            _provision(ck, m["provision"], (*path, "provision")) if m.get("provision") is not None else None
        )
        if name and host and port:
            out.append(
                Node(
                    name=name,
                    site=site,
                    host=host,
                    port=port,
                    user=user,
                    key=key,
                    gpus=gpus,
                    jump=jump,
                    provision=prov,
                )
            )
    return out


def _gpus(ck: Checker, value: Any, path: Path) -> Gpus | None:
    m = ck.want_mapping(value, path, GPUS_KEYS)
    if m is None:
        return None
    model = (
        ck.want_str(m["model"], (*path, "model"), GPU_MODEL, "a GPU model such as H100 or L40S")
        if "model" in m
        else None
    )
    count = (
        ck.want_int(m["count"], (*path, "count"), 1, MAX_GPUS_PER_NODE, "a positive integer")
        if "count" in m
        else None
    )
    return Gpus(model, count) if model is not None and count is not None else None


def _provision(ck: Checker, value: Any, path: Path) -> Provision | None:
    """``provision: {profile, prefix, owner, vars}`` of a site or a node."""
    m = ck.want_mapping(value, path, PROVISION_KEYS)
    if m is None:
        return None
    before = len(ck.issues)
    profile = prefix = owner = None
    if m.get("profile") is not None:
        what = "a profile name (a directory of templates/provision/, e.g. vllm, nim, lab)"
        profile = ck.want_str(m["profile"], (*path, "profile"), DNS_LABEL, what)
    if m.get("prefix") is not None:
        what = "an absolute directory such as / or /srv/grid (letters, digits, '._@+-')"
        prefix = ck.want_str(m["prefix"], (*path, "prefix"), PREFIX, what)
        if prefix is not None and any(part in (".", "..") for part in prefix.split("/")):
            ck.fail((*path, "prefix"), f"must not contain '.' or '..' components (got {show(prefix)})")
        elif prefix is not None and len(prefix) > 1:
            prefix = prefix.rstrip("/")
    if m.get("owner") is not None:
        owner = ck.want_str(m["owner"], (*path, "owner"), OWNER, "an owner as user or user:group")
    variables = _provision_vars(ck, m["vars"], (*path, "vars")) if m.get("vars") is not None else {}
    if len(ck.issues) > before:
        return None
    return Provision(profile=profile, prefix=prefix, owner=owner, vars=variables)


def _provision_vars(ck: Checker, value: Any, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        ck.fail(path, f"must be a mapping of variable name to value (got {show(value)})")
        return {}
    out: dict[str, Any] = {}
    for key, val in value.items():
        vpath: Path = (*path, str(key))
        if not isinstance(key, str) or not VAR_NAME.match(key):
            what = "a variable name: lowercase letters, digits and '_', not starting with a digit"
            ck.fail(vpath, f"must be {what} (got {show(key)})", at_key=True)
            continue
        if key in RESERVED_VARS:
            ck.fail(vpath, f"'{key}' is set by gridctl for the templates; pick another name", at_key=True)
            continue
        items = val if isinstance(val, list) else [val]
        if all(_scalar_var(ck, v, vpath) for v in items):
            out[key] = list(val) if isinstance(val, list) else val
    return out


def _scalar_var(ck: Checker, value: Any, path: Path) -> bool:
    if isinstance(value, bool | int | float) and value == value:
        return True
    if isinstance(value, str) and len(value) <= MAX_VAR_TEXT and "\0" not in value:
        return True
    ck.fail(path, f"must be text, a number, true/false, or a list of those (got {show(value)})")
    return False
