"""https sites through real nginx, HAProxy and Envoy: SNI, Host, and the certificate checked by default."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.routing.conftest import (
    DATA_PLANES,
    LLAMA,
    SITES,
    STARTERS,
    LabGrid,
    lab_table,
    route,
    write_lab_inventory,
)
from tests.routing.tls import make_ca, server_context
from tests.routing.upstream import Upstream

TLS_SITES = ("east-1", "east-2")  # the primaries of lab-east; their backups stay plain http


def localhost_addresses() -> list[str]:
    """Where ``localhost`` resolves here (127.0.0.1, and ::1 on hosts with IPv6): a proxy may
    connect to any of them, so a TLS site listens on all."""
    infos = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@pytest.fixture
def tls_grid(tmp_path: Path) -> Iterator[tuple[LabGrid, Path, Path]]:
    """The lab grid with its lab-east sites on https://localhost; the CA that signed them, and another."""
    ca, stranger = make_ca(tmp_path, "grid test CA"), make_ca(tmp_path, "some other CA")
    sites = {
        name: Upstream(name, localhost_addresses(), server_context(ca, tmp_path), "localhost")
        if name in TLS_SITES
        else Upstream(name)
        for name in SITES
    }
    try:
        inventory = write_lab_inventory(tmp_path / "inventory", {n: u.url for n, u in sites.items()})
        yield LabGrid(sites, inventory, lab_table(inventory)), ca.cert, stranger.cert
    finally:
        for upstream in sites.values():
            upstream.stop()


def ask(url: str, n: int) -> list[str]:
    """The sites that answered ``n`` requests for lab-east's llama route."""
    headers = {"x-grid-region": "lab-east", "x-grid-model": LLAMA}
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]}
    answered = []
    with httpx.Client(base_url=url, trust_env=False, timeout=20) as client:
        for _ in range(n):
            resp = client.post("/v1/chat/completions", json=body, headers=headers)
            assert resp.status_code == 200, resp.text
            answered.append(resp.json()["site"])
    return answered


@pytest.mark.parametrize("kind", DATA_PLANES)
def test_https_sites_get_their_sni_and_host_over_verified_tls(
    kind: str, tls_grid: tuple[LabGrid, Path, Path], workdir: Path
) -> None:
    grid, ca, _ = tls_grid
    r = route(grid.table, "lab-east", LLAMA)
    assert [s["endpoint"]["scheme"] for s in r["primary"] + r["backup"]] == ["https", "https", "http", "http"]
    proxy = STARTERS[kind](grid.table, workdir, ca_file=str(ca))
    try:
        answered = ask(proxy.url, 8)
    finally:
        proxy.stop()
    assert set(answered) == set(TLS_SITES), answered
    for name in TLS_SITES:
        site = grid.sites[name]
        assert "localhost" in site.sni
        assert {s.host for s in site.completions()} == {f"localhost:{site.port}"}


@pytest.mark.parametrize("kind", DATA_PLANES)
def test_a_site_with_an_untrusted_certificate_gets_no_request(
    kind: str, tls_grid: tuple[LabGrid, Path, Path], workdir: Path
) -> None:
    grid, _, stranger = tls_grid
    proxy = STARTERS[kind](grid.table, workdir, ca_file=str(stranger))
    try:
        answered = ask(proxy.url, 4)
    finally:
        proxy.stop()
    assert set(answered) <= {"west-1", "west-2"}, answered  # the backups, over plain http
    assert not any(grid.sites[name].completions() for name in TLS_SITES)
