"""Routing tables rendered for the data planes: gridctl itself, nginx, HAProxy and Envoy.

``render_routing(table, fmt, templates_dir, options)`` turns the table of
:func:`gridctl.core.placement.table.build_routing_table` into the text of one file
per format. Pure: no sockets, no clock; it reads only the template files.

- ``json`` / ``yaml``: the table itself, as the daemon consumes it.
- ``nginx`` / ``haproxy`` / ``envoy``: ``templates/routing/<file>.j2`` rendered
  with a *view* of the table (:mod:`gridctl.placement.view`: names, addresses,
  TLS settings, checked config-safe), so the templates hold layout only.

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

import json
import math
import textwrap
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gridctl.core.errors import UsageError
from gridctl.core.placement.predict import HUNG_FACTOR, HUNG_FLOOR_S
from gridctl.core.suggest import did_you_mean
from gridctl.placement.view import (
    DEFAULT_OPTIONS,
    PATH_PREFIX,
    RenderError,
    RenderOptions,
    Route,
    build_sites,
    build_view,
    check_options,
)
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
UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes with its NUL

# HAProxy tries a request on at most this many sites of a tier (the first try and the
# template's ``retries``); a route's front backend waits for a tier's every try (tier_timeout_s).
HAPROXY_TRIES = 4
# The versions of each data plane the rendered files are checked against, by the tests that
# load them and send traffic through them (tests/routing). Each file says so in its header.
CHECKED_VERSIONS: Mapping[str, str] = {"nginx": "1.22.1", "haproxy": "2.6.12", "envoy": "1.40.0"}
# nginx re-resolves a name in an upstream (`server NAME resolve`, keeping its connections
# alive) from this version on (open source); before it, a name is resolved at run time only
# when proxy_pass holds a variable, and such a hop keeps no connection alive.
NGINX_RESOLVE_SINCE = (1, 27, 3)
FALLBACK_READ_TIMEOUT_S = 30  # a table without an SLO: the daemon's head timeout without a prediction


class TemplateError(RenderError):
    """A routing template is missing or broken; the message names file:line."""


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
    context = build_context(table, fmt, routes, options)
    return {name: _render_template(templates_dir, TEMPLATES[fmt], context)}


def build_context(
    table: Mapping[str, Any], fmt: str, routes: Sequence[Route], options: RenderOptions
) -> dict[str, Any]:
    """What ``fmt``'s template renders from: the routes and sites, the options, the timeouts
    and their explanation, and the data plane's own error bodies."""
    read_timeout = options.read_timeout_s or first_byte_timeout_s(table.get("slo_ms"))
    sites = build_sites(routes)
    return {
        "grid": str(table.get("grid", "")),
        "slo_ms": table.get("slo_ms"),
        "weights_note": _weights_note(table),
        "routes": routes,
        "sites": sites,
        "o": options,
        "region_header": REGION_HEADER,
        "model_header": MODEL_HEADER,
        "path_prefix": PATH_PREFIX,
        "zone_kb": _nginx_zone_kb(routes),
        "read_timeout_s": read_timeout,
        "read_timeout_note": _read_timeout_note(options.read_timeout_s, table.get("slo_ms"), read_timeout),
        "checked": CHECKED_VERSIONS[fmt],
        "haproxy_retries": HAPROXY_TRIES - 1,
        "tier_timeout_s": HAPROXY_TRIES * (options.connect_timeout_s + read_timeout) + 1,
        "tier_prefix": f"gridctl-{options.listen_host}:{options.listen_port}-route",
        "nginx_resolve": options.nginx_version >= NGINX_RESOLVE_SINCE,
        "nginx_version": ".".join(str(n) for n in options.nginx_version),
        "needs_resolver": any(s.named for s in sites),
        "first_named_site": next((s.site for s in sites if s.named), None),
        **_error_bodies(read_timeout),
    }


def _error_bodies(read_timeout: int) -> dict[str, str]:
    """The data plane's own errors, by the context name its templates use."""
    timeout_body = f"no site answered within {read_timeout} s (the first-byte timeout)"
    return {
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
    return max(math.ceil(HUNG_FLOOR_S), math.ceil(HUNG_FACTOR * float(slo_ms) / 1000.0))


def _read_timeout_note(given: int | None, slo_ms: Any, value: int) -> str:
    if given is not None:
        return f"{value} s (route render --read-timeout)"
    if not _number(slo_ms) or slo_ms <= 0:
        return f"{value} s (the table has no SLO)"
    return f"{value} s ({HUNG_FACTOR:g} x the {slo_ms:g} ms SLO, at least {HUNG_FLOOR_S:g} s; --read-timeout)"


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
