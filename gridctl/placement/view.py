"""What the data-plane templates see: the options of the rendered configs
(:class:`RenderOptions`, checked by :func:`check_options`) and the routes of a routing table
as :class:`Route` and :class:`Server` values (:func:`build_view`): every name, address and path
checked to be config-safe, every identifier unique. Pure; ``gridctl.placement.render`` turns
the view into text.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gridctl.core.errors import GridctlError, UsageError

PATH_PREFIX = "/r/"

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


class RenderError(GridctlError):
    """The routing table cannot be rendered for this data plane as it stands."""


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
    # HAProxy: its buffer (tune.bufsize), the longest request it can send again after a site's
    # 503 or timeout (a long chat's body); memory per request in flight is a few times this
    haproxy_buffer_kb: int = 128
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
    if not 16 <= options.haproxy_buffer_kb <= 1024:
        raise UsageError(f"HAProxy's buffer of {options.haproxy_buffer_kb} kB is outside 16-1024 kB")
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


def build_sites(routes: Sequence[Route]) -> list[Server]:
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
