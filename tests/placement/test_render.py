"""Rendering routing tables: golden files, determinism, names, refusals, template errors, Envoy's shape.

The golden files in golden/ are the example inventory's tables as each format
renders them, for requests of 256 prompt + 32 output tokens (``route render
--max-tokens 32``: a short answer, which some of the example's sites can serve
within the SLO and some cannot; an explicit shape, so that tuning the default
shape does not rewrite them). They change only on purpose: ``pytest tests/placement --update-golden``
rewrites them, and the diff is reviewed like code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridctl.core.errors import UsageError
from gridctl.core.placement.decision import DEFAULT_SHAPE, SLO_MARGIN, Request
from gridctl.core.placement.engine import Planner
from gridctl.core.placement.predict import Shape, capacity_within
from gridctl.core.placement.table import build_routing_table
from gridctl.inventory.load import load_inventory
from gridctl.placement.render import (
    CHECKED_VERSIONS,
    FORMATS,
    OUTPUT_FILES,
    TemplateError,
    first_byte_timeout_s,
    render_routing,
)
from gridctl.placement.view import (
    RenderError,
    RenderOptions,
    build_view,
    parse_nameservers,
    parse_nginx_version,
)
from tests.conftest import EXAMPLE, REPO, cli_env

TEMPLATES = REPO / "templates"
GOLDEN = Path(__file__).parent / "golden"


SHAPE = Shape(256, 32, "given")
DEFAULT = RenderOptions()


def example_table() -> dict[str, Any]:
    return build_routing_table(Planner(load_inventory(EXAMPLE)), shape=SHAPE)


def site(name: str, url: str, weight: int | None = None) -> dict[str, Any]:
    scheme, rest = url.split("://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    entry: dict[str, Any] = {
        "site": name,
        "endpoint": {
            "url": url,
            "scheme": scheme,
            "host": host,
            "port": int(port or (443 if scheme == "https" else 80)),
            "path": f"/{path}".rstrip("/") if path else "",
        },
        "rtt_ms": 1.0,
        "capacity": 8,
    }
    if weight is not None:
        entry["weight"] = weight
    return entry


def table(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"grid": "t", "slo_ms": 500.0, "routes": list(routes)}


def one_route(region: str, model: str, primary: list[dict], backup: list[dict] | None = None) -> dict:
    return {"region": region, "model": model, "primary": primary, "backup": backup or []}


# -- golden files -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_example_inventory_renders_as_its_golden_file(fmt: str, update_golden: bool) -> None:
    out = render_routing(example_table(), fmt, TEMPLATES)
    assert list(out) == [OUTPUT_FILES[fmt]]
    name, text = next(iter(out.items()))
    golden = GOLDEN / name
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing: run pytest tests/placement --update-golden"
    expected = golden.read_text()
    if text != expected:
        diff = "".join(
            list(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(golden), "now"))[
                :80
            ]
        )
        pytest.fail(
            f"{fmt} output differs from {golden}:\n{diff}\n"
            "if the change is intended: pytest tests/placement --update-golden, then review the diff"
        )


# -- the table: the decision's order, weights by capacity within the SLO ------------------------


def test_primaries_meet_the_slo_in_the_decisions_order_weighted_by_capacity_within_it() -> None:
    planner = Planner(load_inventory(EXAMPLE))
    t = build_routing_table(planner, shape=SHAPE)
    budget = t["slo_ms"] * (1 - SLO_MARGIN)
    assert t["shape"] == {"prompt_tokens": 256, "max_tokens": 32} and t["budget_ms"] == budget
    checked = 0
    for r in t["routes"]:
        ranking = planner.order(Request(r["region"], r["model"]), SHAPE)
        static = {s.name: s for s in planner.static_candidates(r["region"], r["model"])}
        names = [s["site"] for s in r["primary"] + r["backup"]]
        assert names == list(ranking.sites[: len(names)])  # the one decision's order
        for s in r["primary"] + r["backup"]:
            c = static[s["site"]]
            assert s["capacity_within_slo"] == capacity_within(c.serving, SHAPE, c.rtt_ms, budget)
        if not r["meets_slo"]:
            continue
        checked += 1
        primary = r["primary"]
        assert 1 <= len(primary) <= min(2, ranking.feasible)
        assert all(s["capacity_within_slo"] > 0 and s["predicted_ms"] <= budget for s in primary)
        total = sum(s["capacity_within_slo"] for s in primary)
        for s in primary:
            assert s["weight"] == max(1, round(100 * s["capacity_within_slo"] / total))
    assert checked >= 15
    us = next(r for r in t["routes"] if (r["region"], r["model"]) == ("us-east", "llama-3.1-8b-instruct"))
    # the L40S and L4 sites cannot give a 32-token answer within 450 ms: never primaries here
    assert {s["site"] for s in us["primary"]} == {"nwk-co-03", "chi-co-07"}
    assert "jc-edge-01" not in {s["site"] for s in us["primary"] + us["backup"]}


def test_a_route_no_site_can_serve_within_the_slo_sends_to_the_fastest_and_says_so() -> None:
    planner = Planner(load_inventory(EXAMPLE))
    long = Shape(256, 2000, "given")  # ten seconds of decoding anywhere
    t = build_routing_table(planner, shape=long)
    assert t["shape"] == {"prompt_tokens": 256, "max_tokens": 2000}
    served = [r for r in t["routes"] if r["primary"]]
    assert served and not any(r["meets_slo"] for r in t["routes"])
    for r in served:
        ranking = planner.order(Request(r["region"], r["model"]), long)
        assert ranking.feasible == 0
        fastest = sorted(ranking.sites, key=dict(zip(ranking.sites, ranking.predicted_ms, strict=True)).get)
        assert [s["site"] for s in r["primary"]] == fastest[: len(r["primary"])]
        total = sum(s["capacity"] for s in r["primary"])
        assert all(s["weight"] == max(1, round(100 * s["capacity"] / total)) for s in r["primary"])
        assert all(s["capacity_within_slo"] == 0 for s in r["primary"] + r["backup"])
    nginx = render_routing(t, "nginx", TEMPLATES)["nginx.conf"]
    assert "for requests of 256 prompt + 2000 output tokens" in nginx


def test_the_default_shape_is_the_engines_and_the_table_says_so() -> None:
    t = build_routing_table(Planner(load_inventory(EXAMPLE)))
    assert t["shape"] == {
        "prompt_tokens": DEFAULT_SHAPE.prompt_tokens,
        "max_tokens": DEFAULT_SHAPE.output_tokens,
    }
    assert all("meets_slo" in r for r in t["routes"])


def test_a_hand_made_table_without_a_shape_renders_without_the_weights_note() -> None:
    t = table(one_route("lab", "m", [site("a", "http://10.0.0.1:8000", 100)]))
    for fmt in ("nginx", "haproxy", "envoy"):
        text = next(iter(render_routing(t, fmt, TEMPLATES).values()))
        assert "Primary weights" not in text
    odd = {**t, "shape": {"prompt_tokens": "1\nlisten 80;", "max_tokens": 1}, "budget_ms": 450.0}
    assert "listen 80" not in render_routing(odd, "nginx", TEMPLATES)["nginx.conf"]


# -- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_same_table_renders_to_the_same_bytes(fmt: str) -> None:
    first = render_routing(example_table(), fmt, TEMPLATES)
    assert render_routing(example_table(), fmt, TEMPLATES) == first


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_order_of_sites_and_regions_in_the_inventory_does_not_matter(fmt: str) -> None:
    inv = load_inventory(EXAMPLE)
    shuffled = dataclasses.replace(
        inv,
        sites=tuple(reversed(inv.sites)),
        grid=dataclasses.replace(inv.grid, regions=tuple(reversed(inv.grid.regions))),
    )
    assert [s.name for s in shuffled.sites] != [s.name for s in inv.sites]
    again = build_routing_table(Planner(shuffled), shape=SHAPE)
    assert render_routing(again, fmt, TEMPLATES) == render_routing(example_table(), fmt, TEMPLATES)


@pytest.mark.parametrize("fmt", ["nginx", "haproxy", "envoy"])
def test_the_order_of_routes_in_the_table_does_not_matter(fmt: str) -> None:
    t = example_table()
    reordered = dict(t, routes=list(reversed(t["routes"])))
    assert render_routing(reordered, fmt, TEMPLATES) == render_routing(t, fmt, TEMPLATES)


def test_json_and_yaml_are_the_table_itself() -> None:
    t = example_table()
    text = render_routing(t, "json", TEMPLATES)["routing.json"]
    assert json.loads(text) == t and text.endswith("}\n") and text.startswith('{\n  "grid"')
    assert yaml.safe_load(render_routing(t, "yaml", TEMPLATES)["routing.yaml"]) == t


def test_rendering_json_or_importing_the_renderer_does_not_import_jinja2() -> None:
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from gridctl.placement.render import render_routing\n"
        "render_routing({'grid': 'g', 'slo_ms': 1.0, 'routes': []}, 'json', Path('templates'))\n"
        "render_routing({'grid': 'g', 'slo_ms': 1.0, 'routes': []}, 'yaml', Path('templates'))\n"
        "assert 'jinja2' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr


# -- names ----------------------------------------------------------------------------------------


def test_names_are_sanitized_and_stay_unique_when_two_models_sanitize_alike() -> None:
    a = one_route("us-east", "llama-3.1", [site("s1", "http://10.0.0.1:8000", 100)])
    b = one_route("us-east", "llama_3.1", [site("s2", "http://10.0.0.2:8000", 100)])
    c = one_route("us-east", "Qwen/Qwen2.5-7B", [site("s1", "http://10.0.0.1:8000", 100)])
    names = {(r.region, r.model): r.name for r in build_view(table(a, b, c))}
    assert names[("us-east", "Qwen/Qwen2.5-7B")] == "us_east__qwen_qwen2_5_7b"
    clashing = [names[("us-east", "llama-3.1")], names[("us-east", "llama_3.1")]]
    assert len(set(clashing)) == 2 and all(n.startswith("us_east__llama_3_1__") for n in clashing)
    # a name depends on its own route only, not on which other routes exist or their order
    assert {(r.region, r.model): r.name for r in build_view(table(c, b, a))} == names
    for fmt in ("nginx", "haproxy", "envoy"):
        text = next(iter(render_routing(table(a, b, c), fmt, TEMPLATES).values()))
        assert all(n in text for n in names.values())


def test_routes_differing_only_in_case_are_refused() -> None:
    a = one_route("us-east", "Llama", [site("s1", "http://10.0.0.1:8000", 100)])
    b = one_route("us-east", "llama", [site("s1", "http://10.0.0.1:8000", 100)])
    with pytest.raises(RenderError, match="differ only in case"):
        render_routing(table(a, b), "nginx", TEMPLATES)


def test_values_that_could_inject_config_are_refused() -> None:
    bad = one_route("us-east", "m", [site("s1", "http://10.0.0.1:8000", 100)])
    bad["primary"][0]["endpoint"]["host"] = "evil;\n}"
    with pytest.raises(RenderError, match="route us-east/m: site s1: host"):
        render_routing(table(bad), "haproxy", TEMPLATES)
    trailing = one_route("us-east", "m\n", [site("s1", "http://10.0.0.1:8000", 100)])
    with pytest.raises(RenderError, match="has characters a data-plane config cannot carry"):
        render_routing(table(trailing), "nginx", TEMPLATES)
    with pytest.raises(UsageError, match="runtime_dir"):
        render_routing(example_table(), "nginx", TEMPLATES, RenderOptions(runtime_dir="/tmp/a b"))


# -- what each data plane can and cannot express ----------------------------------------------------


def mixed_route() -> dict[str, Any]:
    return one_route(
        "lab",
        "m",
        [site("tls-1", "https://a.example.net", 60), site("plain-1", "http://10.0.0.2:8000", 40)],
        [site("tls-2", "https://b.example.net:8443")],
    )


def test_nginx_reaches_each_site_through_a_local_hop_with_its_own_scheme_host_and_tls() -> None:
    opts = RenderOptions(runtime_dir="/srv/grid")
    text = render_routing(table(mixed_route()), "nginx", TEMPLATES, opts)["nginx.conf"]
    assert "server unix:/srv/grid/tls-1.sock weight=60 max_fails=1 fail_timeout=10s;" in text
    assert "server unix:/srv/grid/plain-1.sock weight=40 max_fails=1 fail_timeout=10s;" in text
    assert "server unix:/srv/grid/tls-2.sock max_fails=1 fail_timeout=10s backup;" in text
    # a site named by DNS is resolved per request (the config loads while the name does not
    # resolve); a site at an IP address keeps an upstream with connections kept alive
    assert "proxy_pass https://a.example.net:443$request_uri;" in text and "upstream site__tls_1 " not in text
    assert "proxy_pass http://site__plain_1;" in text and "server 10.0.0.2:8000;" in text
    assert "proxy_set_header Host b.example.net:8443;" in text and "proxy_ssl_name b.example.net;" in text
    assert text.count("proxy_ssl_verify on;") == 2 and "proxy_ssl_server_name on;" in text
    assert "proxy_buffering off;" in text and "proxy_next_upstream error timeout http_502" in text
    off = render_routing(table(mixed_route()), "nginx", TEMPLATES, RenderOptions(tls_verify=False))
    assert "proxy_ssl_verify on;" not in off["nginx.conf"]


def test_nginx_gives_each_site_its_own_endpoint_path() -> None:
    r = one_route(
        "lab", "m", [site("a", "http://10.0.0.1:8000/vllm", 50), site("b", "http://10.0.0.2:8000", 50)]
    )
    text = render_routing(table(r), "nginx", TEMPLATES)["nginx.conf"]
    assert "proxy_pass http://site__a/vllm/;" in text and "proxy_pass http://site__b;" in text


@pytest.mark.parametrize("fmt", ["haproxy", "envoy"])
def test_sites_of_a_route_with_different_paths_are_refused_where_a_route_has_one_prefix(fmt: str) -> None:
    r = one_route(
        "lab", "m", [site("a", "http://10.0.0.1:8000/vllm", 50), site("b", "http://10.0.0.2:8000", 50)]
    )
    with pytest.raises(RenderError, match="different endpoint paths") as err:
        render_routing(table(r), fmt, TEMPLATES)
    assert err.value.hint and "nginx" in err.value.hint


def haproxy_sections(text: str) -> dict[str, list[str]]:
    """Each backend/listen section of a rendered haproxy.cfg, by name: its indented lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith(("backend ", "listen ", "frontend ", "defaults", "global")):
            current = sections.setdefault(line.split()[-1], [])
        elif line.startswith("    ") and not line.lstrip().startswith("#"):
            current.append(line.strip())
    return sections


def test_haproxy_names_servers_by_host_header_and_checks_tls() -> None:
    text = render_routing(table(mixed_route()), "haproxy", TEMPLATES)["haproxy.cfg"]
    lines = {
        line.split()[1]: line
        for line in text.splitlines()
        if line.startswith("    server ") and "abns@" not in line
    }
    assert set(lines) == {"a.example.net", "10.0.0.2:8000", "b.example.net:8443"}
    assert (
        " weight 60 check ssl sni str(a.example.net) check-sni a.example.net verify required"
        in (lines["a.example.net"])
    )
    assert "ssl" not in lines["10.0.0.2:8000"].split("#")[0]
    assert "http-send-name-header Host" in text
    # a request is buffered whole, so that a retry after a closed connection can send it again
    assert "    option http-buffer-request\n" in text
    assert "observe layer7 error-limit 1 on-error mark-down" in text


def test_haproxy_sends_a_request_its_primaries_failed_on_to_the_backups_tier() -> None:
    # HAProxy marks a server down by a request's last answer only: with one tier, a request
    # whose primaries all answer 503 is lost. Two tiers: the route's backend tries the
    # primaries' listener, then (balance first, one retry) the backups' listener.
    sections = haproxy_sections(render_routing(table(mixed_route()), "haproxy", TEMPLATES)["haproxy.cfg"])
    front = sections["lab__m"]
    assert "balance first" in front and "retries 1" in front
    assert "retry-on conn-failure empty-response junk-response 502 503 504" in front
    tiers = [line.split()[2] for line in front if line.startswith("server ")]
    assert [t.rsplit("-", 1)[1] for t in tiers] == ["primaries", "backups"]
    assert all(t.startswith("abns@gridctl-127.0.0.1:8080-route") for t in tiers)
    # the primaries' tier holds the backups too, as backups: a primary down or refusing
    # connections is passed within it, for a request too long to be sent again (16 kB buffer)
    for name, sites, backups in (
        ("primaries", {"a.example.net", "10.0.0.2:8000", "b.example.net:8443"}, {"b.example.net:8443"}),
        ("backups", {"b.example.net:8443"}, set()),
    ):
        tier = sections[f"lab__m__{name}"]
        assert f"bind {tiers[0 if name == 'primaries' else 1]}" in tier
        served = {line.split()[1] for line in tier if line.startswith("server ")}
        assert served == sites
        as_backup = {line.split()[1] for line in tier if line.startswith("server ") and " backup " in line}
        assert as_backup == backups
        assert "option httpchk" in tier and "http-send-name-header Host" in tier
    # the front outlasts a tier's every try: 4 x (connect 2 s + first byte 2 s) + 1
    assert "timeout server 17s" in front
    # a route without backups keeps one backend, its sites checked and sent to directly
    one = haproxy_sections(
        render_routing(
            table(one_route("lab", "m", [site("a", "http://10.0.0.1:8000", 100)])), "haproxy", TEMPLATES
        )["haproxy.cfg"]
    )
    assert "lab__m__primaries" not in one and "balance roundrobin" in one["lab__m"]
    assert "abns@" not in " ".join(one["lab__m"])


def test_nginx_resolves_site_names_in_upstreams_from_1_27_3() -> None:
    opts = RenderOptions(nginx_version=(1, 27, 3), resolvers=("10.0.0.53", "[2001:db8::53]:5353"))
    text = render_routing(table(mixed_route()), "nginx", TEMPLATES, opts)["nginx.conf"]
    assert "server a.example.net:443 resolve;" in text and "server b.example.net:8443 resolve;" in text
    assert "server 10.0.0.2:8000;" in text and "$request_uri" not in text
    assert text.count("zone grid_sites 64k;") == 1 and text.count("zone grid_sites;") == 1
    assert "resolver 10.0.0.53 [2001:db8::53]:5353 valid=10s;" in text
    assert "Rendered for nginx 1.27.3 (--nginx-version); checked against nginx 1.22.1." in text


def test_nginx_needs_a_resolver_only_for_site_names() -> None:
    with pytest.raises(RenderError, match="sites tls-1, tls-2 at run time") as err:
        render_routing(table(mixed_route()), "nginx", TEMPLATES, RenderOptions(resolvers=()))
    assert err.value.hint and "--resolver" in err.value.hint
    by_ip = table(one_route("lab", "m", [site("a", "http://10.0.0.1:8000", 100)]))
    text = render_routing(by_ip, "nginx", TEMPLATES, RenderOptions(resolvers=()))["nginx.conf"]
    assert "resolver" not in text.split("http {")[1]
    with pytest.raises(UsageError, match="resolver 'ns1.example.net'"):
        render_routing(by_ip, "nginx", TEMPLATES, RenderOptions(resolvers=("ns1.example.net",)))


def test_nameservers_from_resolv_conf() -> None:
    text = "# comment\nsearch example.net\nnameserver 10.0.0.53\nnameserver fe80::1%eth0  # v6\n"
    assert parse_nameservers(text + "nameserver 10.0.0.53\noptions ndots:2\n") == ("10.0.0.53", "[fe80::1]")
    assert parse_nameservers("") == ()


def test_nginx_versions_parse_and_bad_ones_are_usage_errors() -> None:
    assert parse_nginx_version("1.27.3") == (1, 27, 3) and parse_nginx_version("nginx/1.22") == (1, 22)
    with pytest.raises(UsageError, match="not a version"):
        parse_nginx_version("latest")


@pytest.mark.parametrize(
    ("slo_ms", "seconds"), [(500.0, 2), (100.0, 2), (1000.0, 4), (1250.0, 5), (None, 30), (0, 30)]
)
def test_the_first_byte_timeout_is_the_daemons_rule_for_a_hung_site(slo_ms: Any, seconds: int) -> None:
    assert first_byte_timeout_s(slo_ms) == seconds


def timeouts(fmt: str, opts: RenderOptions = DEFAULT) -> list[str]:
    """The first-byte timeout lines of ``fmt``'s config for the example table."""
    text = next(iter(render_routing(example_table(), fmt, TEMPLATES, opts).values()))
    wanted = {
        "nginx": ("proxy_read_timeout",),
        "haproxy": ("timeout server",),
        "envoy": ("per_try_timeout", "per_try_idle_timeout"),
    }[fmt]
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip().startswith(wanted)]


def test_every_data_plane_times_out_a_silent_site_after_the_same_seconds() -> None:
    # the example's SLO is 500 ms: 4 x 0.5 s is under the 2 s floor
    assert timeouts("nginx") == ["proxy_read_timeout 2s;", "proxy_read_timeout 3s;"]  # hops, then front
    assert (
        timeouts("haproxy")[0] == "timeout server 2s"
    )  # each site; a route's two tiers wait 4 x (2 + 2) + 1
    assert set(timeouts("haproxy")[1:]) == {"timeout server 17s"}
    assert timeouts("envoy") == ["per_try_timeout: 2s", "per_try_idle_timeout: 2s"]
    opts = RenderOptions(read_timeout_s=45)
    assert timeouts("nginx", opts) == ["proxy_read_timeout 45s;", "proxy_read_timeout 46s;"]
    assert timeouts("haproxy", opts)[0] == "timeout server 45s"
    assert set(timeouts("haproxy", opts)[1:]) == {"timeout server 189s"}
    assert timeouts("envoy", opts) == ["per_try_timeout: 45s", "per_try_idle_timeout: 45s"]
    nginx = render_routing(example_table(), "nginx", TEMPLATES, opts)["nginx.conf"]
    assert (
        "First-byte timeout (also the longest silence within an answer): 45 s (route render --read-timeout)"
        in (" ".join(line.lstrip("# ") for line in nginx.splitlines()[:20]))
    )


@pytest.mark.parametrize("fmt", ["nginx", "haproxy", "envoy"])
def test_each_file_says_which_version_of_its_data_plane_it_was_checked_against(fmt: str) -> None:
    text = next(iter(render_routing(example_table(), fmt, TEMPLATES).values()))
    name = {"nginx": "nginx", "haproxy": "HAProxy", "envoy": "Envoy"}[fmt]
    assert f"checked against {name} {CHECKED_VERSIONS[fmt]}." in text.lower().replace(name.lower(), name)


@pytest.mark.parametrize("fmt", ["nginx", "haproxy", "envoy"])
def test_the_data_planes_own_errors_are_openai_error_objects(fmt: str) -> None:
    text = next(iter(render_routing(example_table(), fmt, TEMPLATES).values()))
    if fmt == "envoy":
        found = [s for s in _strings(yaml.safe_load(text)) if s.startswith('{"error"')]
    else:  # nginx and HAProxy quote them in single quotes, nginx with a \n after
        found = re.findall(r"'(\{\"error\".*?\}\})(?:\\n)?'", text)
    bodies = [json.loads(b) for b in found]
    codes = {b["error"]["code"] for b in bodies}
    assert {"no_route", "no_site_up", "upstream_timeout"} <= codes, codes
    for b in bodies:
        assert list(b["error"]) == ["message", "type", "param", "code"] and b["error"]["param"] is None


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_envoys_admin_port_is_an_option_and_not_the_listen_port() -> None:
    doc = yaml.safe_load(
        render_routing(example_table(), "envoy", TEMPLATES, RenderOptions(admin_port=9911))["envoy.yaml"]
    )
    assert doc["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9911}
    with pytest.raises(UsageError, match="admin port 8080"):
        render_routing(example_table(), "envoy", TEMPLATES, RenderOptions(admin_port=8080))


def test_a_socket_path_too_long_for_unix_sockets_is_refused() -> None:
    with pytest.raises(RenderError, match="longer than 107 bytes"):
        render_routing(example_table(), "nginx", TEMPLATES, RenderOptions(runtime_dir="/" + "d" * 100))


def test_a_route_without_a_site_answers_503_in_every_data_plane() -> None:
    t = table(one_route("lab", "m", []), one_route("lab", "n", [site("a", "http://10.0.0.1:8000", 100)]))
    nginx = render_routing(t, "nginx", TEMPLATES)["nginx.conf"]
    assert '"lab/m" -;' in nginx and "upstream lab__m " not in nginx
    haproxy = render_routing(t, "haproxy", TEMPLATES)["haproxy.cfg"]
    assert "str(no_site)" in haproxy and "backend lab__m\n" not in haproxy
    envoy = yaml.safe_load(render_routing(t, "envoy", TEMPLATES)["envoy.yaml"])
    routes = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    by_name = {r["name"]: r for r in routes["route_config"]["virtual_hosts"][0]["routes"]}
    assert by_name["headers:lab/m"]["direct_response"]["status"] == 503
    assert [c["name"] for c in envoy["static_resources"]["clusters"]] == ["lab__n"]


def test_unknown_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown routing format 'caddy'"):
        render_routing(example_table(), "caddy", TEMPLATES)


# -- Envoy, checked for its structure (no envoy binary here) ----------------------------------------


def test_envoy_has_one_cluster_per_route_with_primaries_and_backups_at_two_priorities() -> None:
    t = example_table()
    opts = RenderOptions(listen_port=9080)
    doc = yaml.safe_load(render_routing(t, "envoy", TEMPLATES, opts)["envoy.yaml"])
    listener = doc["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9080}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    routes = {r["name"]: r for r in vhost["routes"]}
    assert vhost["routes"][-1]["direct_response"]["status"] == 404
    assert vhost["retry_policy"]["retriable_status_codes"] == [502, 503, 504]
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    views = {(r.region, r.model): r for r in build_view(t)}
    assert len(clusters) == len(t["routes"]) == len(views)
    for r in t["routes"]:
        view = views[(r["region"], r["model"])]
        cluster = clusters[view.name]
        groups = cluster["load_assignment"]["endpoints"]
        p0 = [g for g in groups if g["priority"] == 0]
        p1 = [g for g in groups if g["priority"] == 1]
        assert [g["locality"]["zone"] for g in p0] == [s["site"] for s in r["primary"]]
        assert [g["locality"]["zone"] for g in p1] == [s["site"] for s in r["backup"]]
        assert [g["lb_endpoints"][0]["load_balancing_weight"] for g in p0] == [
            s["weight"] for s in r["primary"]
        ]
        assert all("load_balancing_weight" not in g["lb_endpoints"][0] for g in p1)
        for g, s in zip(p0 + p1, r["primary"] + r["backup"], strict=True):
            address = g["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            assert address == {"address": s["endpoint"]["host"], "port_value": s["endpoint"]["port"]}
        sockets = {
            m["match"]["site"]: m["transport_socket"]["typed_config"]
            for m in cluster["transport_socket_matches"]
        }
        for s in r["primary"] + r["backup"]:
            tls = sockets[s["site"]]
            assert tls["sni"] == s["endpoint"]["host"]
            san = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
            assert san == [{"san_type": "DNS", "matcher": {"exact": s["endpoint"]["host"]}}]
        assert cluster["health_checks"][0]["http_health_check"]["path"] == "/health"
        header_route = routes[f"headers:{r['region']}/{r['model']}"]
        matchers = {h["name"]: h["string_match"] for h in header_route["match"]["headers"]}
        assert matchers == {
            "x-grid-region": {"exact": r["region"], "ignore_case": True},
            "x-grid-model": {"exact": r["model"], "ignore_case": True},
        }
        assert header_route["route"]["cluster"] == view.name and header_route["route"]["timeout"] == "0s"
        path_route = routes[f"path:{r['region']}/{r['model']}"]
        assert path_route["match"]["prefix"] == f"/r/{r['region']}/{r['model']}/"
        assert path_route["route"]["prefix_rewrite"] == "/"
    # path routes come before header routes, so a /r/ path wins over the headers
    names = [r["name"] for r in vhost["routes"]]
    assert max(i for i, n in enumerate(names) if n.startswith("path:")) < min(
        i for i, n in enumerate(names) if n.startswith("headers:")
    )


def test_envoy_sends_plain_http_sites_without_tls() -> None:
    doc = yaml.safe_load(render_routing(table(mixed_route()), "envoy", TEMPLATES)["envoy.yaml"])
    cluster = doc["static_resources"]["clusters"][0]
    assert [m["match"]["site"] for m in cluster["transport_socket_matches"]] == ["tls-1", "tls-2"]
    endpoints = {g["locality"]["zone"]: g["lb_endpoints"][0] for g in cluster["load_assignment"]["endpoints"]}
    assert "metadata" not in endpoints["plain-1"]
    assert endpoints["tls-1"]["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {
        "site": "tls-1"
    }


# -- template errors --------------------------------------------------------------------------------


@pytest.fixture
def broken_templates(tmp_path: Path) -> Path:
    dest = tmp_path / "templates"
    shutil.copytree(TEMPLATES / "routing", dest / "routing")
    return dest


def break_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines(True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def test_a_template_syntax_error_names_the_file_and_line(broken_templates: Path) -> None:
    template = broken_templates / "routing" / "nginx.conf.j2"
    break_line(template, 21, "{% if %}")
    with pytest.raises(TemplateError) as err:
        render_routing(example_table(), "nginx", broken_templates)
    assert err.value.message.startswith(f"{template}:21: ")


def test_an_undefined_variable_names_the_file_and_line(broken_templates: Path) -> None:
    template = broken_templates / "routing" / "haproxy.cfg.j2"
    break_line(template, 30, "    option {{ o.no_such_option }}")
    with pytest.raises(TemplateError) as err:
        render_routing(example_table(), "haproxy", broken_templates)
    assert err.value.message.startswith(f"{template}:30: ") and "no_such_option" in err.value.message


def test_a_runtime_error_in_a_template_names_the_file_and_line(broken_templates: Path) -> None:
    template = broken_templates / "routing" / "envoy.yaml.j2"
    break_line(template, 40, "{{ 1 // 0 }}")
    with pytest.raises(TemplateError) as err:
        render_routing(example_table(), "envoy", broken_templates)
    assert err.value.message.startswith(f"{template}:40: ")


def test_a_missing_template_is_reported_with_its_path(broken_templates: Path) -> None:
    (broken_templates / "routing" / "envoy.yaml.j2").unlink()
    with pytest.raises(TemplateError, match=r"routing/envoy\.yaml\.j2: template not found"):
        render_routing(example_table(), "envoy", broken_templates)


def test_the_example_table_is_not_changed_by_rendering() -> None:
    t = example_table()
    before = copy.deepcopy(t)
    for fmt in FORMATS:
        render_routing(t, fmt, TEMPLATES)
    assert t == before


def test_haproxy_buffer_holds_a_long_chat_and_is_bounded() -> None:
    # HAProxy sends a request again (a 503, a timeout) only if it fits in its buffer
    text = render_routing(table(mixed_route()), "haproxy", TEMPLATES)["haproxy.cfg"]
    assert "    tune.bufsize 131072\n" in text.split("defaults")[0]
    small = render_routing(table(mixed_route()), "haproxy", TEMPLATES, RenderOptions(haproxy_buffer_kb=16))
    assert "    tune.bufsize 16384\n" in small["haproxy.cfg"]
    with pytest.raises(UsageError, match="outside 16-1024 kB"):
        render_routing(table(mixed_route()), "haproxy", TEMPLATES, RenderOptions(haproxy_buffer_kb=8))
