"""Routing tables rendered for the data planes: gridctl itself, nginx, HAProxy and Envoy.

``render_routing(table, fmt, templates_dir, options)`` turns the table of
:func:`gridctl.placement.table.build_routing_table` into the text of one file
per format. Pure: no sockets, no clock; it reads only the template files.

- ``json`` / ``yaml``: the table itself, as the daemon consumes it.
- ``nginx`` / ``haproxy`` / ``envoy``: ``templates/routing/<file>.j2`` rendered
  with a *view* of the table built here (names, addresses, TLS settings), so
  the templates hold layout only.

Every data plane routes the same way: a request names its route with the
headers ``x-grid-region`` and ``x-grid-model`` (matched ignoring case), or with
the path ``/r/<region>/<model>/<api path>`` (the prefix is stripped, and wins
over the headers). Primaries share the traffic by weight; backups take it
when every primary is down; a connection error, a closed connection, a
502/503/504 or a first-byte timeout before the answer starts moves the request
to the next site, and marks the site down until its health checks pass again.
The first-byte timeout (also the longest silence within an answer) is derived
from the SLO as the daemon's deadlines are (:func:`first_byte_timeout_s`)
unless ``RenderOptions.read_timeout_s`` sets it. A site whose name does not
resolve is left out until it does; the config still loads. The data plane's
own errors (unknown route 404, route without a site 503, no site up, every
site failed, timeout) have JSON bodies in OpenAI's error shape
(:func:`build_error_body`); a site's own error answer passes through as it is.
Each file names the version of its data plane it was checked against
(:data:`CHECKED_VERSIONS`).

Output is deterministic: routes by (region, model), sites by name where the
order carries no meaning, primaries and backups in the table's rank order,
and no timestamps. Names in the configs are derived from the route, e.g.
``us_east__llama_3_1_8b_instruct``; two routes whose names would clash both get
a suffix from a hash of their (region, model), so names never depend on order.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import textwrap
import traceback
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridctl.errors import GridctlError, UsageError
from gridctl.placement.predict import HUNG_FACTOR, HUNG_FLOOR_S
from gridctl.suggest import did_you_mean
from gridctl.templating import build_environment

FORMATS: tuple[str, ...] = ("json", "yaml", "nginx", "haproxy", "envoy")
OUTPUT_FILES: Mapping[str, str] = {
    "json": "routing.json",
    "yaml": "routing.yaml",
    "nginx": "nginx.conf",
    "haproxy": "haproxy.cfg",
    "envoy": "envoy.yaml",
}
TEMPLATES: Mapping[str, str] = {
    "nginx": "nginx.conf.j2",
    "haproxy": "haproxy.cfg.j2",
    "envoy": "envoy.yaml.j2",
}
REGION_HEADER = "x-grid-region"
MODEL_HEADER = "x-grid-model"
PATH_PREFIX = "/r/"
UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes with its NUL

# What may reach a config file from the table. The inventory schema is stricter;
# these keep a hand-built table from injecting config syntax.
_SAFE = {
    "region": re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
    "model": re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"),
    "site": re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
    "host": re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^[0-9A-Fa-f:.]+$"),
    "path": re.compile(r"^(/[A-Za-z0-9._~%:@!+,=-]*)*$"),
}
_SAFE_OPTION = re.compile(r"^[A-Za-z0-9_./:@+-]+$")  # paths and addresses: nothing to quote
_RESOLVER = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?$")
_IP_LITERAL = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")

# The versions of each data plane the rendered files are checked against, by the tests that
# load them and send traffic through them (tests/routing). Each file says so in its header.
CHECKED_VERSIONS: Mapping[str, str] = {"nginx": "1.22.1", "haproxy": "2.6.12", "envoy": "1.40.0"}
# nginx re-resolves a name in an upstream (`server NAME resolve`, keeping its connections
# alive) from this version on (open source); before it, a name is resolved at run time only
# when proxy_pass holds a variable, and such a hop keeps no connection alive.
NGINX_RESOLVE_SINCE = (1, 27, 3)
FALLBACK_READ_TIMEOUT_S = 30  # a table without an SLO: the daemon's head timeout without a prediction


class RenderError(GridctlError):
    """The routing table cannot be rendered for this data plane as it stands."""


class TemplateError(RenderError):
    """A routing template is missing or broken; the message names file:line."""


@dataclass(frozen=True)
class RenderOptions:
    """Settings of the rendered configs that do not come from the inventory.

    ``runtime_dir`` holds nginx's pid file, temporary files and one unix socket
    per site; ``log_dir`` its logs (HAProxy logs to stderr, Envoy to its own).
    ``tls_verify`` checks each https site's certificate against ``ca_file`` and
    its host name; turning it off is for labs with self-signed certificates.
    """

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    runtime_dir: str = "/run/gridctl-routing"
    log_dir: str = "/var/log/gridctl-routing"
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"
    tls_verify: bool = True
    health_path: str = "/health"
    connect_timeout_s: int = 2  # sites are chosen within a latency SLO: a slow connect is a failure
    # the first-byte timeout, also the longest silence within an answer; None: from the SLO
    read_timeout_s: int | None = None
    client_timeout_s: int = 300  # HAProxy: the longest silence from a client (it waits for answers)
    admin_port: int = 9901  # Envoy's admin interface, on listen_host
    worker_processes: str = "auto"  # nginx
    # nginx: the nameservers it resolves site names with at run time (it reads no
    # /etc/resolv.conf; `route render` passes its nameservers unless --resolver)
    resolvers: tuple[str, ...] = ("127.0.0.53",)
    resolver_valid_s: int = 10  # nginx: how long a name's addresses are kept
    nginx_version: tuple[int, ...] = (1, 22, 1)  # the nginx the config is for (--nginx-version)


DEFAULT_OPTIONS = RenderOptions()


# -- the view: what the templates see ---------------------------------------------------------


@dataclass(frozen=True)
class Server:
    site: str
    ident: str  # site name as a config identifier: fra_pop_01
    scheme: str
    tls: bool
    host: str
    port: int
    path: str  # "" or "/prefix", no trailing slash
    address: str  # host:port, [v6]:port
    named: bool  # the host is a DNS name (resolved at run time), not an IP address
    authority: str  # the Host header: host, or host:port when the port is not the scheme's
    weight: int | None  # None for backups
    backup: bool
    socket: str  # nginx: the unix socket of this site's local hop


@dataclass(frozen=True)
class Route:
    region: str
    model: str
    name: str  # unique config identifier
    key: str  # "region/model" (regions hold no '/')
    prefix: str  # path form: /r/<region>/<model>/
    servers: tuple[Server, ...]  # primaries (rank order), then backups (rank order)
    path: str | None  # the sites' common endpoint path; None when they differ


def render_routing(
    table: Mapping[str, Any],
    fmt: str,
    templates_dir: Path,
    options: RenderOptions = DEFAULT_OPTIONS,
) -> dict[str, str]:
    """File name -> text for ``fmt`` (one of :data:`FORMATS`): one file per format."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown routing format '{fmt}'", hint=did_you_mean(fmt, FORMATS))
    name = OUTPUT_FILES[fmt]
    if fmt == "json":
        return {name: json.dumps(table, indent=2, sort_keys=False) + "\n"}
    if fmt == "yaml":
        from gridctl.output import dump_yaml  # libyaml's emitter when available

        return {name: dump_yaml(_plain(table))}
    check_options(options)
    routes = build_view(table, options)
    _check_for(fmt, routes, options)
    read_timeout = options.read_timeout_s or first_byte_timeout_s(table.get("slo_ms"))
    timeout_body = f"no site answered within {read_timeout} s (the first-byte timeout)"
    context = {
        "grid": str(table.get("grid", "")),
        "slo_ms": table.get("slo_ms"),
        "weights_note": _weights_note(table),
        "routes": routes,
        "sites": _sites(routes),
        "o": options,
        "region_header": REGION_HEADER,
        "model_header": MODEL_HEADER,
        "path_prefix": PATH_PREFIX,
        "zone_kb": _nginx_zone_kb(routes),
        "read_timeout_s": read_timeout,
        "read_timeout_note": _read_timeout_note(options.read_timeout_s, table.get("slo_ms"), read_timeout),
        "checked": CHECKED_VERSIONS[fmt],
        "nginx_resolve": options.nginx_version >= NGINX_RESOLVE_SINCE,
        "nginx_version": ".".join(str(n) for n in options.nginx_version),
        "needs_resolver": any(s.named for s in _sites(routes)),
        "first_named_site": next((s.site for s in _sites(routes) if s.named), None),
        "no_route_body": build_error_body(
            "no route: send headers x-grid-region and x-grid-model naming a region and model "
            "of the grid, or use the path /r/<region>/<model>/...",
            "invalid_request_error",
            "no_route",
        ),
        "no_site_body": build_error_body(
            "no eligible site for this region and model", "no_eligible_site", "no_eligible_site"
        ),
        "failed_body": build_error_body(
            "every site tried failed before answering", "upstream_error", "upstream_failed"
        ),
        "down_body": build_error_body("no site of this route is up", "upstream_error", "no_site_up"),
        "timeout_body": build_error_body(timeout_body, "upstream_error", "upstream_timeout"),
    }
    return {name: _render_template(templates_dir, TEMPLATES[fmt], context)}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _weights_note(table: Mapping[str, Any]) -> list[str]:
    """The header comment saying what the primaries' weights were computed for (the table's
    ``shape``), as comment lines; none when the table does not say (or says it oddly)."""
    shape, slo, budget = table.get("shape"), table.get("slo_ms"), table.get("budget_ms")
    if not (isinstance(shape, Mapping) and _number(slo) and _number(budget)):
        return []
    prompt, output = shape.get("prompt_tokens"), shape.get("max_tokens")
    if not (_number(prompt) and _number(output)):
        return []
    text = (
        f"Primary weights: each site's predicted capacity within the SLO ({slo:g} ms less the margin: "
        f"{budget:g} ms) for requests of {prompt:g} prompt + {output:g} output tokens "
        "(route render --prompt-tokens / --max-tokens); a route where no site meets it sends to the "
        "fastest sites, weighted by their capacity."
    )
    return textwrap.wrap(text, 96)


def _plain(value: Any) -> Any:
    """Mappings and sequences as dict and list, so safe_dump writes any table."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def build_error_body(message: str, kind: str, code: str) -> str:
    """A data plane's own error as OpenAI's error object, on one line (the daemon's shape:
    ``message``, ``type``, ``param``, ``code``), so an OpenAI client reads it as an error."""
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}, separators=(",", ":"))


def first_byte_timeout_s(slo_ms: Any) -> int:
    """Seconds a data plane waits for a site's first byte (and, once it answers, for each next
    byte) before taking it for hung and trying the next site: the daemon's rule for a site that
    sent nothing (:data:`HUNG_FACTOR` x the SLO, at least :data:`HUNG_FLOOR_S`), in whole
    seconds. A data plane has no per-request prediction, so the SLO stands for it: an answer
    longer than the SLO by that factor (a long non-streamed generation) needs ``--read-timeout``."""
    if not _number(slo_ms) or slo_ms <= 0:
        return FALLBACK_READ_TIMEOUT_S
    return max(math.ceil(HUNG_FLOOR_S), math.ceil(HUNG_FACTOR * slo_ms / 1000.0))


def _read_timeout_note(given: int | None, slo_ms: Any, value: int) -> str:
    if given is not None:
        return f"{value} s (route render --read-timeout)"
    if not _number(slo_ms) or slo_ms <= 0:
        return f"{value} s (the table has no SLO)"
    return f"{value} s ({HUNG_FACTOR:g} x the {slo_ms:g} ms SLO, at least {HUNG_FLOOR_S:g} s; --read-timeout)"


def parse_nameservers(text: str) -> tuple[str, ...]:
    """The nameservers of a resolv.conf, as nginx's ``resolver`` takes them (IPv6 in brackets)."""
    found: list[str] = []
    for line in text.splitlines():
        parts = line.split("#")[0].split(";")[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            address = parts[1].split("%")[0]  # a zone index is not for nginx
            found.append(f"[{address}]" if ":" in address else address)
    return tuple(dict.fromkeys(found))


def parse_nginx_version(text: str) -> tuple[int, ...]:
    """``1.27.3`` (or ``nginx/1.27.3``) -> (1, 27, 3)."""
    value = text.strip().removeprefix("nginx/")
    if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){1,2}", value):
        raise UsageError(f"--nginx-version {text!r} is not a version", hint="e.g. --nginx-version 1.27.3")
    return tuple(int(n) for n in value.split("."))


def check_options(options: RenderOptions) -> None:
    for field in ("listen_host", "runtime_dir", "log_dir", "ca_file", "health_path", "worker_processes"):
        value = getattr(options, field)
        if not _SAFE_OPTION.fullmatch(value):
            raise UsageError(
                f"{field} {value!r} has characters a data-plane config cannot carry",
                hint="use letters, digits and . _ / : @ + - only",
            )
    for field in ("runtime_dir", "log_dir", "ca_file", "health_path"):
        if not getattr(options, field).startswith("/"):
            raise UsageError(f"{field} {getattr(options, field)!r} must be an absolute path")
    for field in ("listen_port", "admin_port"):
        if not 0 < getattr(options, field) < 65536:
            raise UsageError(f"{field} {getattr(options, field)} is not a TCP port (1-65535)")
    if options.admin_port == options.listen_port:
        raise UsageError(
            f"Envoy's admin port {options.admin_port} is the port it listens on for requests",
            hint="choose another --admin-port (or --listen)",
        )
    for field in ("read_timeout_s", "client_timeout_s", "connect_timeout_s", "resolver_valid_s"):
        value = getattr(options, field)
        if value is not None and not 1 <= value <= 86400:
            raise UsageError(f"{field} {value} is outside 1-86400 seconds")
    for address in options.resolvers:
        if not _RESOLVER.fullmatch(address):
            raise UsageError(
                f"resolver {address!r} is not an IP address[:port]",
                hint="e.g. --resolver 10.0.0.53 or --resolver [2001:db8::53]:53",
            )


def build_view(table: Mapping[str, Any], options: RenderOptions = DEFAULT_OPTIONS) -> list[Route]:
    """The routes of ``table`` as the templates see them, sorted by (region, model)."""
    raw = sorted(table.get("routes", ()), key=lambda r: (r["region"], r["model"]))
    keys = [(str(r["region"]), str(r["model"])) for r in raw]
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for region, model in keys:
        folded = (region.lower(), model.lower())
        if folded in seen:
            other = seen[folded]
            raise RenderError(
                f"routes {other[0]}/{other[1]} and {region}/{model} differ only in case",
                hint="the data planes match x-grid-region and x-grid-model ignoring case; rename one model",
            )
        seen[folded] = (region, model)
    names = unique_names(keys, lambda k: f"{_ident(k[0])}__{_ident(k[1])}")
    return [_route(r, names[k], options) for r, k in zip(raw, keys, strict=True)]


def unique_names(
    keys: Sequence[tuple[str, str]], base: Callable[[tuple[str, str]], str]
) -> dict[tuple[str, str], str]:
    """key -> identifier, unique: clashing identifiers all get a suffix hashed from their key."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in keys:
        groups[base(key)].append(key)
    out: dict[tuple[str, str], str] = {}
    for name, members in groups.items():
        for key in members:
            if len(members) == 1:
                out[key] = name
            else:
                digest = hashlib.sha256("/".join(key).encode()).hexdigest()[:8]
                out[key] = f"{name}__{digest}"
    if len(set(out.values())) != len(out):  # a suffixed name equal to a natural one: vanishingly rare
        clash = sorted(n for n in out.values() if list(out.values()).count(n) > 1)[0]
        raise RenderError(f"two routes would both be named {clash} in the config", hint="rename a model")
    return out


def _ident(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def _route(raw: Mapping[str, Any], name: str, options: RenderOptions) -> Route:
    region, model = str(raw["region"]), str(raw["model"])
    _safe("region", region, f"route {region}/{model}")
    _safe("model", model, f"route {region}/{model}")
    servers = [_server(s, False, options, f"route {region}/{model}") for s in raw.get("primary", ())]
    servers += [_server(s, True, options, f"route {region}/{model}") for s in raw.get("backup", ())]
    paths = {s.path for s in servers}
    return Route(
        region=region,
        model=model,
        name=name,
        key=f"{region}/{model}",
        prefix=f"{PATH_PREFIX}{region}/{model}/",
        servers=tuple(servers),
        path=paths.pop() if len(paths) == 1 else ("" if not paths else None),
    )


def _server(raw: Mapping[str, Any], backup: bool, options: RenderOptions, where: str) -> Server:
    site = str(raw["site"])
    _safe("site", site, where)
    ep = raw["endpoint"]
    scheme, host, port = str(ep["scheme"]), str(ep["host"]), int(ep["port"])
    path = str(ep.get("path") or "").rstrip("/")
    _safe("host", host, f"{where}: site {site}")
    _safe("path", path, f"{where}: site {site}")
    if scheme not in ("http", "https") or not 0 < port < 65536:
        raise RenderError(f"{where}: site {site}: endpoint {ep.get('url')} is not http(s)://host[:port]")
    v6 = ":" in host
    address = f"[{host}]:{port}" if v6 else f"{host}:{port}"
    default_port = 443 if scheme == "https" else 80
    authority = (f"[{host}]" if v6 else host) if port == default_port else address
    weight = None if backup else int(raw["weight"])
    if weight is not None and not 1 <= weight <= 256:
        raise RenderError(f"{where}: site {site}: weight {weight} is outside 1-256 (nginx and HAProxy)")
    return Server(
        site=site,
        ident=site.replace("-", "_"),
        scheme=scheme,
        tls=scheme == "https",
        host=host,
        port=port,
        path=path,
        address=address,
        named=not _IP_LITERAL.fullmatch(host),
        authority=authority,
        weight=weight,
        backup=backup,
        socket=f"{options.runtime_dir.rstrip('/')}/{site}.sock",
    )


def _safe(kind: str, value: str, where: str) -> None:
    if not _SAFE[kind].fullmatch(value):
        raise RenderError(
            f"{where}: {kind} {value!r} has characters a data-plane config cannot carry",
            hint="fix the inventory (`gridctl inventory validate`), then render again",
        )


def _sites(routes: Sequence[Route]) -> list[Server]:
    """Each site once (as its first server entry), by name: nginx's local hops."""
    by_site: dict[str, Server] = {}
    for route in routes:
        for s in route.servers:
            known = by_site.get(s.site)
            if known is None:
                by_site[s.site] = s
            elif (known.scheme, known.address, known.path) != (s.scheme, s.address, s.path):
                raise RenderError(
                    f"site {s.site} has two endpoints in the table ({known.address}, {s.address})"
                )
    return [by_site[k] for k in sorted(by_site)]


def _nginx_zone_kb(routes: Sequence[Route]) -> int:
    """Shared memory for every upstream's run-time state: generous, and a whole number of pages."""
    return 64 + 4 * (len(routes) + sum(len(r.servers) for r in routes) // 2)


def _check_for(fmt: str, routes: Sequence[Route], options: RenderOptions) -> None:
    """What a data plane cannot express, refused with what to change."""
    if fmt == "nginx" and not options.resolvers:
        named = sorted({s.site for r in routes for s in r.servers if s.named})
        if named:
            raise RenderError(
                f"nginx resolves the names of sites {', '.join(named[:5])} at run time and needs a "
                "nameserver: there is none in /etc/resolv.conf",
                hint="pass --resolver ADDRESS (a DNS server nginx can reach)",
            )
    for route in routes:
        where = f"route {route.key}"
        if fmt in ("haproxy", "envoy") and route.path is None:
            paths = ", ".join(f"{s.site} {s.path or '/'}" for s in route.servers)
            raise RenderError(
                f"{where}: its sites have different endpoint paths ({paths}); "
                f"{fmt} adds one path prefix per route",
                hint="give the sites of a route the same endpoint path, or render --format nginx",
            )
        if fmt == "haproxy":
            names = [s.authority for s in route.servers]
            for s in route.servers:
                if s.host.count(":"):
                    raise RenderError(
                        f"{where}: site {s.site}: haproxy needs a host name or IPv4 address "
                        f"for the Host header it sends, not {s.host}",
                        hint="give the site an endpoint with a DNS name",
                    )
                if names.count(s.authority) > 1:
                    raise RenderError(f"{where}: two sites share the endpoint {s.authority}")
        if fmt == "nginx":
            for s in route.servers:
                if len(s.socket) > UNIX_SOCKET_MAX:
                    raise RenderError(
                        f"nginx socket path {s.socket} is longer than {UNIX_SOCKET_MAX} bytes",
                        hint="choose a shorter runtime directory",
                    )


# -- templates ----------------------------------------------------------------------------------


def _render_template(templates_dir: Path, name: str, context: Mapping[str, Any]) -> str:
    import jinja2

    shown = templates_dir / "routing" / name
    env = build_environment(templates_dir / "routing", {"j": lambda v: json.dumps(v)})
    try:
        template = env.get_template(name)
        return template.render(**context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(
            f"{shown}: template not found",
            hint=f"restore templates/routing/{name}, or pass --templates DIR with routing/{name}",
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{shown}:{exc.lineno}: {exc.message}", hint=_FIX) from exc
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError, ArithmeticError) as exc:
        line = _template_line(exc, name)
        if line is None:
            raise
        message = getattr(exc, "message", None) or str(exc)
        raise TemplateError(f"{shown}:{line}: {message}", hint=_FIX) from exc


_FIX = "fix the template (or render with the shipped templates), then render again"


def _template_line(exc: BaseException, name: str) -> int | None:
    """The line of ``name`` being run when ``exc`` was raised (jinja2 puts template frames in tracebacks)."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).name == name]
    return lines[-1] if lines and lines[-1] is not None else None
