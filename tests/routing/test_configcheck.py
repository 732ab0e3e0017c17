"""`nginx -t` and `haproxy -c` on rendered configs: the example inventory's and a lab grid's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import certifi

from gridctl.inventory.load import load_inventory
from gridctl.placement.engine import Planner
from gridctl.placement.render import DEFAULT_OPTIONS, RenderOptions, render_routing
from gridctl.placement.table import build_routing_table
from tests.conftest import EXAMPLE, REPO
from tests.placement.test_render import SHAPE
from tests.routing.conftest import TEMPLATES, LabGrid, nginx_options

GOLDEN = REPO / "tests" / "placement" / "golden"
NGINX_SERVER = re.compile(r"^(        server )([a-z0-9.-]+\.example\.net)(:\d+;)$", re.M)
HAPROXY_SERVER = re.compile(r"^(    server \S+ )([a-z0-9.-]+\.example\.net)(:\d+ )", re.M)


def example_table() -> dict[str, Any]:
    return build_routing_table(Planner(load_inventory(EXAMPLE)), shape=SHAPE)  # as the golden files


def example_hosts() -> set[str]:
    routes = example_table()["routes"]
    return {s["endpoint"]["host"] for r in routes for s in r["primary"] + r["backup"]}


def to_loopback(pattern: re.Pattern[str], text: str) -> str:
    """The config with its sites' server addresses, and nothing else, on 127.0.0.1.

    Both data planes resolve server names when they load a config (HAProxy takes a
    quarter of a second for each name that does not resolve here); the example's
    *.example.net names do not resolve. SNI, Host and certificate names keep the sites' names.
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


def test_nginx_accepts_the_example_inventory_config(workdir: Path) -> None:
    options = nginx_options(workdir, 8080, ca_file=certifi.where())
    text = render_routing(example_table(), "nginx", TEMPLATES, options)["nginx.conf"]
    # The golden file, but with files where this test may write them.
    golden = (GOLDEN / "nginx.conf").read_text()
    for field in ("runtime_dir", "log_dir", "ca_file"):
        golden = golden.replace(getattr(DEFAULT_OPTIONS, field), getattr(options, field))
    assert text == golden
    result = nginx_check(to_loopback(NGINX_SERVER, text), workdir)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr


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


def test_nginx_and_haproxy_accept_a_lab_grid_config(lab_grid: LabGrid, workdir: Path) -> None:
    nginx = render_routing(lab_grid.table, "nginx", TEMPLATES, nginx_options(workdir, 8080))["nginx.conf"]
    result = nginx_check(nginx, workdir)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    haproxy = render_routing(lab_grid.table, "haproxy", TEMPLATES, RenderOptions())["haproxy.cfg"]
    result = haproxy_check(haproxy, workdir)
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, result.stderr
    assert "[WARNING]" not in result.stderr and "[ALERT]" not in result.stderr, result.stderr
