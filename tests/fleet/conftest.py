"""A fleet of real sshd nodes on loopback, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.sshd import BlackHole, Fleet, FrozenServer, free_port

# node index -> stand-in GPU state (see tests/fixtures/gpu/README.md)
STATES = [
    "healthy-h100x8",
    "healthy-h100x8",
    "hot",
    "ecc",
    "xid79",
    "driver-not-loaded",
    "hang",
    "healthy-h100x8",
]
SITES = {"lab-a": range(0, 4), "lab-b": range(4, 8)}


@pytest.fixture(scope="session")
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), list(STATES))
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="session")
def frozen() -> Iterator[FrozenServer]:
    server = FrozenServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def blackhole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def write_fleet_inventory(
    dest: Path,
    fleet: Fleet,
    extra_nodes: dict[str, int] | None = None,
    pin: bool = True,
    gpus: str = "{model: H100, count: 8}",
    endpoints: dict[str, str] | None = None,
    sites: dict[str, range] | None = None,
) -> Path:
    """An inventory whose nodes are the fleet's sshd servers (plus ``extra_nodes``
    name -> port, in site lab-bad), with their host keys pinned unless ``pin`` is False."""
    (dest / "sites").mkdir(parents=True, exist_ok=True)
    (dest / "grid.yaml").write_text(
        "name: lab\nregions:\n  - name: lab\n    location: {lat: 40.0, lon: -75.0}\n    jurisdiction: US\n"
    )
    sites: dict[str, list[tuple[str, int]]] = {
        site: [(fleet.nodes[i].name, fleet.nodes[i].port) for i in idx]
        for site, idx in (sites or SITES).items()
    }
    if extra_nodes:
        sites["lab-bad"] = list(extra_nodes.items())
    for site, nodes in sites.items():
        lines = [
            f"name: {site}",
            "kind: edge",
            "region: lab",
            "jurisdiction: US",
            "location: {lat: 40.0, lon: -75.0}",
            f"endpoint: {(endpoints or {}).get(site) or f'http://127.0.0.1:{free_port()}'}",
            "models:",
            "  - name: llama-3.1-8b-instruct",
            "    capacity: 8",
            "nodes:",
        ]
        for name, port in nodes:
            lines += [
                f"  - name: {name}",
                "    host: 127.0.0.1",
                f"    port: {port}",
                f"    key: {fleet.client_key}",
                f"    gpus: {gpus}",
            ]
        (dest / "sites" / f"{site}.yaml").write_text("\n".join(lines) + "\n")
    (dest / "known_hosts").write_text(fleet.known_hosts_lines() if pin else "")
    return dest


@pytest.fixture
def fleet_inv(tmp_path: Path, ssh_fleet: Fleet) -> Path:
    return write_fleet_inventory(tmp_path / "inventory", ssh_fleet)
