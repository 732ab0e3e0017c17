"""`nginx -t`, `haproxy -c` and `envoy --mode validate` on rendered configs: the example
inventory's (whose *.example.net site names do not resolve here) and a lab grid's; and the
installed data planes are the versions the rendered files say they were checked against."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import certifi

from gridctl.core.placement.engine import Planner
from gridctl.core.placement.table import build_routing_table
from gridctl.inventory.load import load_inventory
from gridctl.placement.render import CHECKED_VERSIONS, render_routing
from gridctl.placement.view import DEFAULT_OPTIONS, RenderOptions
from tests.conftest import EXAMPLE, REPO
from tests.placement.test_render import SHAPE
from tests.routing.conftest import TEMPLATES, LabGrid, envoy_binary, nginx_options

GOLDEN = REPO / "tests" / "placement" / "golden"
HAPROXY_SERVER = re.compile(r"^(    server \S+ )([a-z0-9.-]+\.example\.net)(:\d+ )", re.M)


def example_table() -> dict[str, Any]:
    return build_routing_table(Planner(load_inventory(EXAMPLE)), shape=SHAPE)  # as the golden files


def example_hosts() -> set[str]:
    routes = example_table()["routes"]
    return {s["endpoint"]["host"] for r in routes for s in r["primary"] + r["backup"]}


def to_loopback(pattern: re.Pattern[str], text: str) -> str:
    """The config with its sites' server addresses, and nothing else, on 127.0.0.1.

    HAProxy resolves server names when it loads a config (a quarter of a second for each
    name that does not resolve here: the example's *.example.net names do not). SNI, Host
    and certificate names keep the sites' names.
    """
    assert {m.group(2) for m in pattern.finditer(text)} == example_hosts()
    local = pattern.sub(r"\g<1>127.0.0.1\g<3>", text)
    assert pattern.search(local) is None
    return local


def nginx_check(text: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    for sub in ("run", "log"):
        (workdir / sub).mkdir(exist_ok=True)
    config = workdir / "nginx.conf"
    config.write_text(text)
    cmd = ["nginx", "-t", "-p", str(workdir), "-c", str(config), "-e", str(workdir / "log" / "error.log")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def haproxy_check(text: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    config = workdir / "haproxy.cfg"
    config.write_text(text)
    return subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=60)


def envoy_check(text: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    config = workdir / "envoy.yaml"  # Envoy reads a file as YAML by its extension
    config.write_text(text)
    cmd = [envoy_binary(), "--mode", "validate", "-c", str(config), "-l", "warning", "--disable-hot-restart"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_nginx_loads_the_example_inventory_config_though_its_site_names_do_not_resolve(
    workdir: Path,
) -> None:
    options = nginx_options(workdir, 8080, ca_file=certifi.where(), resolvers=DEFAULT_OPTIONS.resolvers)
    text = render_routing(example_table(), "nginx", TEMPLATES, options)["nginx.conf"]
    # The golden file, but with files where this test may write them.
    golden = (GOLDEN / "nginx.conf").read_text()
    for field in ("runtime_dir", "log_dir", "ca_file"):
        golden = golden.replace(getattr(DEFAULT_OPTIONS, field), getattr(options, field))
    assert text == golden
    assert example_hosts() and all(f"//{host}:443$request_uri;" in text for host in example_hosts())
    result = nginx_check(text, workdir)  # the names as they are: resolved per request, not at load
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    assert "host not found" not in result.stderr, result.stderr


def test_envoy_validates_the_example_inventory_config(workdir: Path) -> None:
    text = render_routing(example_table(), "envoy", TEMPLATES, RenderOptions(ca_file=certifi.where()))
    assert text["envoy.yaml"] == (GOLDEN / "envoy.yaml").read_text().replace(
        DEFAULT_OPTIONS.ca_file, certifi.where()
    )
    result = envoy_check(text["envoy.yaml"], workdir)
    assert result.returncode == 0 and f"configuration '{workdir / 'envoy.yaml'}' OK" in result.stdout, (
        result.stdout + result.stderr
    )


def test_the_installed_data_planes_are_the_versions_the_files_name() -> None:
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=30).stderr
    assert f"nginx/{CHECKED_VERSIONS['nginx']}" in nginx, nginx
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=30).stdout
    assert f"HAProxy version {CHECKED_VERSIONS['haproxy']}" in haproxy, haproxy
    envoy = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert f"/{CHECKED_VERSIONS['envoy']}/" in envoy, envoy


def test_haproxy_accepts_the_example_inventory_config(workdir: Path) -> None:
    options = RenderOptions(ca_file=certifi.where())
    text = render_routing(example_table(), "haproxy", TEMPLATES, options)["haproxy.cfg"]
    assert text == (GOLDEN / "haproxy.cfg").read_text().replace(DEFAULT_OPTIONS.ca_file, options.ca_file)
    result = haproxy_check(to_loopback(HAPROXY_SERVER, text), workdir)
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, result.stderr
    assert "[WARNING]" not in result.stderr and "[ALERT]" not in result.stderr, result.stderr


def test_haproxy_starts_with_a_site_whose_name_does_not_resolve(workdir: Path) -> None:
    t = example_table()
    first = t["routes"][0]
    first["primary"], first["backup"] = first["primary"][:1], []
    first["primary"][0]["endpoint"]["host"] = "no-such-site.invalid"
    t["routes"] = [first]
    text = render_routing(t, "haproxy", TEMPLATES, RenderOptions(ca_file=certifi.where()))["haproxy.cfg"]
    result = haproxy_check(text, workdir)
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, result.stderr
    assert "could not resolve address 'no-such-site.invalid', disabling server" in result.stderr


def test_nginx_loads_and_envoy_validates_a_config_with_a_site_whose_name_does_not_resolve(
    workdir: Path,
) -> None:
    t = example_table()
    for r in t["routes"]:  # one site's name, wherever the site is
        for s in r["primary"] + r["backup"]:
            if s["site"] == t["routes"][0]["primary"][0]["site"]:
                s["endpoint"]["host"] = "no-such-site.invalid"
    nginx = render_routing(t, "nginx", TEMPLATES, nginx_options(workdir, 8080, ca_file=certifi.where()))
    assert "//no-such-site.invalid:443$request_uri;" in nginx["nginx.conf"]
    result = nginx_check(nginx["nginx.conf"], workdir)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    envoy = render_routing(t, "envoy", TEMPLATES, RenderOptions(ca_file=certifi.where()))["envoy.yaml"]
    assert envoy_check(envoy, workdir).returncode == 0


def test_nginx_and_haproxy_accept_a_lab_grid_config(lab_grid: LabGrid, workdir: Path) -> None:
    nginx = render_routing(lab_grid.table, "nginx", TEMPLATES, nginx_options(workdir, 8080))["nginx.conf"]
    result = nginx_check(nginx, workdir)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    haproxy = render_routing(lab_grid.table, "haproxy", TEMPLATES, RenderOptions())["haproxy.cfg"]
    result = haproxy_check(haproxy, workdir)
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, result.stderr
    assert "[WARNING]" not in result.stderr and "[ALERT]" not in result.stderr, result.stderr
    envoy = render_routing(lab_grid.table, "envoy", TEMPLATES, RenderOptions())["envoy.yaml"]
    result = envoy_check(envoy, workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[warning]" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_route_render_flags_reach_every_data_plane_and_nginx_loads_what_it_wrote(
    cli: Any, tmp_path: Path, workdir: Path
) -> None:
    """The issue's reproduction: `route render -f nginx`, then `nginx -t`, with the example's
    unresolvable site names; and the new flags in each data plane's file."""
    out = tmp_path / "out"
    flags = ["--read-timeout", "7", "--admin-port", "9911", "--runtime-dir", str(workdir / "run")]
    flags += ["--log-dir", str(workdir / "log"), "--ca-file", certifi.where()]
    r = cli("route", "render", "-f", "nginx", "--out", str(out), *flags, "--resolver", "10.0.0.53")
    assert r.rc == 0, r
    nginx = (out / "nginx.conf").read_text()
    assert "resolver 10.0.0.53 valid=10s;" in nginx and "proxy_read_timeout 7s;" in nginx
    result = nginx_check(nginx, workdir)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    assert cli("route", "render", "-f", "haproxy", "--out", str(out), *flags).rc == 0
    assert "timeout server 7s" in (out / "haproxy.cfg").read_text()
    assert cli("route", "render", "-f", "envoy", "--out", str(out), *flags).rc == 0
    envoy = (out / "envoy.yaml").read_text()
    assert "per_try_timeout: 7s" in envoy and "port_value: 9911" in envoy
    assert (
        cli("route", "render", "-f", "nginx", "--nginx-version", "1.27.3", *flags).out.count(" resolve;") > 0
    )
    bad = cli("route", "render", "-f", "nginx", "--nginx-version", "latest")
    assert bad.rc == 2 and "--nginx-version 'latest' is not a version" in bad.err, bad
    bad = cli("route", "render", "-f", "nginx", "--resolver", "dns.example.net")
    assert bad.rc == 2 and "resolver 'dns.example.net' is not an IP address" in bad.err, bad
    assert cli("route", "render", "--read-timeout", "0").rc == 2
