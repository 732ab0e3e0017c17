"""The schema of one site file (sites/*.yaml): plain YAML values -> a ``Site``, or located problems.

Pure: no files. ``build_site`` takes a parsed document and the grid's SSH defaults and returns
the site (``None`` when too broken) plus every issue, each with its path in the document.
The README's inventory reference documents exactly these fields.
"""

from __future__ import annotations

import difflib
from typing import Any

from gridctl.core.inventory.checks import (
    DNS_LABEL,
    ENV_VAR,
    GPU_MODEL,
    HEALTH_PATH,
    HOST,
    LABEL_KEY,
    LABEL_VALUE,
    MAX_CAPACITY,
    MAX_COST_PER_GPU_HOUR,
    MAX_GPUS_PER_NODE,
    MAX_VAR_TEXT,
    MODEL_NAME,
    OWNER,
    PREFIX,
    RESERVED_VARS,
    TLS_KEYS,
    USER,
    VAR_NAME,
    Checker,
    Issue,
    check_jump,
    check_key_path,
    check_tls_files,
    show,
)
from gridctl.core.inventory.model import (
    SITE_KINDS,
    Gpus,
    ModelServing,
    Node,
    Provision,
    Site,
    SshDefaults,
)
from gridctl.core.inventory.yamldoc import Path

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
    tls = check_tls_files(ck, m, ())
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
        key = check_key_path(ck, m["key"], (*path, "key")) if "key" in m else ssh.key
        jump = check_jump(ck, m["jump"], (*path, "jump")) if m.get("jump") is not None else ssh.jump
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
