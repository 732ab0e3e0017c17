"""Provisioning tests: real sshd nodes on loopback, one site per node, a prefix per node.

Every node is its own OpenSSH server (tests/fleet/sshd.py) logging in the
current user, so each node gets its own prefix under a temp dir; the lab
profile runs gridctl's real lab site (``python -m gridctl.lab.process`` under
this interpreter) on a free port that is also the site's endpoint.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Result, run_cli
from tests.fleet.sshd import Fleet

LAB_SERVER = [sys.executable, "-m", "gridctl.lab.process"]
N_NODES = 4
MODEL = "llama-3.1-8b-instruct"


def endpoint_port() -> int:
    """A free port below the kernel's ephemeral range: the lab process also listens on a
    port the kernel picks (its control port), and so does every client socket; a site
    port taken from the ephemeral range could be grabbed by one of them before its lab
    site starts."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(500):
        port = random.randint(10000, max(10001, low - 1))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture(scope="session")
def prov_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("prov-fleet"), ["healthy-h100x8"] * N_NODES)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


@dataclass
class Grid:
    """A test inventory of one-node sites, and what each node holds under its prefix."""

    root: Path
    fleet: Fleet
    site_vars: dict[str, Any] = field(default_factory=dict)
    node_vars: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)  # unreachable nodes: name -> port
    ports: dict[str, int] = field(default_factory=dict)  # node -> its site's endpoint port

    @property
    def inv(self) -> Path:
        return self.root / "inventory"

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self.fleet.nodes] + list(self.extra)

    def prefix(self, node: str) -> Path:
        return self.root / "prefix" / node

    def site(self, node: str) -> str:
        return f"site-{node}"

    def write(self) -> Grid:
        (self.inv / "sites").mkdir(parents=True, exist_ok=True)
        region = {"name": "lab", "location": {"lat": 40.0, "lon": -75.0}, "jurisdiction": "US"}
        (self.inv / "grid.yaml").write_text(yaml.safe_dump({"name": "lab", "regions": [region]}))
        ssh_ports = {n.name: n.port for n in self.fleet.nodes} | self.extra
        for node, ssh_port in ssh_ports.items():
            self.ports.setdefault(node, endpoint_port())
            self.prefix(node).mkdir(parents=True, exist_ok=True)
            doc = {
                "name": self.site(node),
                "kind": "edge",
                "region": "lab",
                "jurisdiction": "US",
                "location": {"lat": 40.0, "lon": -75.0},
                "endpoint": f"http://127.0.0.1:{self.ports[node]}",
                "models": [{"name": MODEL, "capacity": 8}],
                "provision": {
                    "profile": "lab",
                    "vars": {"lab_server": LAB_SERVER} | self.site_vars,
                },
                "nodes": [
                    {
                        "name": node,
                        "host": "127.0.0.1",
                        "port": ssh_port,
                        "key": str(self.fleet.client_key),
                        "gpus": {"model": "H100", "count": 8},
                        "provision": {"prefix": str(self.prefix(node))}
                        | ({"vars": self.node_vars[node]} if node in self.node_vars else {}),
                    }
                ],
            }
            (self.inv / "sites" / f"{self.site(node)}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        (self.inv / "known_hosts").write_text(self.fleet.known_hosts_lines())
        return self

    def provision(self, *args: str, timeout: float = 120) -> Result:
        return run_cli("node", "provision", *args, inventory=self.inv, timeout=timeout)

    def files(self, node: str) -> dict[str, bytes]:
        """Every file under the node's prefix (relative path -> content)."""
        base = self.prefix(node)
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    def config(self, node: str) -> dict[str, bytes]:
        """The provisioned files only (no pid, log or backups)."""
        return {k: v for k, v in self.files(node).items() if k.startswith(("etc/", "usr/"))}

    def pid(self, node: str) -> int | None:
        path = self.prefix(node) / "run" / "gridctl-lab" / f"{self.site(node)}.pid"
        return int(path.read_text()) if path.exists() else None

    def stop_servers(self) -> None:
        for pidfile in (self.root / "prefix").rglob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
        time.sleep(0.05)


@pytest.fixture
def grid(tmp_path: Path, prov_fleet: Fleet) -> Iterator[Grid]:
    g = Grid(tmp_path, prov_fleet).write()
    try:
        yield g
    finally:
        g.stop_servers()
