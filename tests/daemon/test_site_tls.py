"""Toward sites: a private CA and a client certificate named in the inventory (tls_ca, tls_cert,
tls_key), used by the daemon's requests and probes, `route probe`, `route test --live` and
`gridctl health`; without them the sites are refused and the daemon fails over."""

from __future__ import annotations

import json
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli
from tests.daemon.conftest import chat, probed_status, start_daemon, write_inventory
from tests.daemon.upstream import Upstream
from tests.routing.tls import make_ca, server_context


@dataclass
class TlsGrid:
    private: Upstream  # https, its certificate signed by the grid's private CA (the cheapest site)
    mutual: Upstream  # https from the same CA, and it asks every client for a certificate from it
    plain: Upstream  # http, the dearest
    root: Path  # the inventory, naming the CA (grid-wide) and the client certificate (mutual's)

    def without_tls(self, keys: tuple[str, ...] = ("tls_",)) -> Path:
        """A copy of the inventory without the lines of these keys (all of tls_* by default)."""
        bare = self.root.parent / f"without-{'-'.join(keys)}"
        shutil.copytree(self.root, bare)
        for f in [bare / "grid.yaml", *(bare / "sites").glob("*.yaml")]:
            lines = f.read_text().splitlines(True)
            f.write_text(
                "".join(line for line in lines if not line.startswith(keys) and f"  {keys[0]}" not in line)
            )
        return bare


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[TlsGrid]:
    pki = tmp_path / "inventory" / "pki"
    pki.mkdir(parents=True)
    ca = make_ca(pki, "grid CA")
    mutual_ctx = server_context(ca, tmp_path, "127.0.0.1")
    mutual_ctx.verify_mode = ssl.CERT_REQUIRED
    mutual_ctx.load_verify_locations(cafile=str(ca.cert))
    server_context(ca, pki, "daemon-client")  # the client certificate: pki/daemon-client.{crt,key}
    private, mutual, plain = (
        Upstream(tls=server_context(ca, tmp_path, "127.0.0.1")),
        Upstream(tls=mutual_ctx),
        Upstream(),
    )
    try:
        spec = {"gpu": "H100", "gpus": 8, "capacity": 64, "rtt_ms": 1.0}
        sites = {
            "private": {**spec, "cost": 1.0, "endpoint": private.url},
            "mutual": {**spec, "cost": 2.0, "endpoint": mutual.url},
            "plain": {**spec, "cost": 4.0, "endpoint": plain.url},
        }
        root = write_inventory(tmp_path / "inventory", sites)
        grid_yaml = root / "grid.yaml"  # relative paths: against the inventory directory
        grid_yaml.write_text(
            grid_yaml.read_text().replace("defaults:\n", f"defaults:\n  tls_ca: pki/{ca.cert.name}\n")
        )
        mutual_yaml = root / "sites" / "mutual.yaml"
        mutual_yaml.write_text(
            mutual_yaml.read_text() + "tls_cert: pki/daemon-client.crt\ntls_key: pki/daemon-client.key\n"
        )
        yield TlsGrid(private, mutual, plain, root)
    finally:
        for up in (private, mutual, plain):
            up.close()


def _env() -> dict[str, str]:
    env = cli_env()
    env.pop("SSL_CERT_FILE", None)
    return env


def test_the_daemon_reaches_private_ca_and_client_certificate_sites(grid: TlsGrid) -> None:
    d = start_daemon(grid.root, "--region", "metro", env=_env())
    try:
        r = d.post(chat())
        assert r.status_code == 200 and r.headers["x-grid-site"] == "private"
        assert len(grid.private.seen) == 1
        for name in ("private", "mutual", "plain"):
            entry = probed_status(d, name)
            assert entry["probe_ok"] is True, entry  # mutual's health route answered over mutual TLS
    finally:
        rc, _ = d.stop()
    assert rc == 0


def test_without_tls_ca_the_sites_are_refused_and_requests_fail_over(grid: TlsGrid) -> None:
    d = start_daemon(grid.without_tls(), "--region", "metro", env=_env())
    try:
        r = d.post(chat())
        assert r.status_code == 200 and r.headers["x-grid-site"] == "plain"
        private, mutual = probed_status(d, "private"), probed_status(d, "mutual")
        assert private["probe_ok"] is False and "certificate is not trusted" in private["probe_error"]
        assert mutual["probe_ok"] is False and "tls_ca" in mutual["probe_error"]
    finally:
        rc, _ = d.stop()
    assert rc == 0
    assert not grid.private.seen and not grid.mutual.seen


def test_route_probe_route_test_live_and_health_use_the_inventory_tls(grid: TlsGrid) -> None:
    r = run_cli(
        "route", "probe", "--from", "metro", "--samples", "1", "-o", "json", inventory=grid.root, env=_env()
    )
    assert r.rc == 0, r.err
    assert all(row["rtt_ms"] is not None for row in json.loads(r.out))
    live = run_cli(
        "route", "test", "--from", "metro", "--model", "llama-3.1-8b-instruct", "--live", "-o", "json",
        inventory=grid.root, env=_env(),
    )  # fmt: skip
    assert live.rc == 0, live.err
    assert json.loads(live.out)["live"]["site"] == "private" and json.loads(live.out)["live"]["ok"] is True
    health = run_cli("health", "--sites-only", "-o", "json", inventory=grid.root, env=_env())
    assert health.rc == 0, health.out + health.err
    bare = grid.without_tls()
    r = run_cli(
        "route", "probe", "--from", "metro", "--samples", "1", "-o", "json", inventory=bare, env=_env()
    )
    assert r.rc == 4
    failed = {row["site"]: row["error"] for row in json.loads(r.out) if row["rtt_ms"] is None}
    assert set(failed) == {"private", "mutual"} and "CERTIFICATE_VERIFY_FAILED" in failed["private"]
    no_client_cert = grid.without_tls(("tls_cert", "tls_key"))
    r = run_cli(
        "route",
        "probe",
        "--from",
        "metro",
        "--samples",
        "1",
        "-o",
        "json",
        inventory=no_client_cert,
        env=_env(),
    )
    assert r.rc == 4
    failed = {row["site"]: row["error"] for row in json.loads(r.out) if row["rtt_ms"] is None}
    assert list(failed) == ["mutual"], failed  # trusted, but it wants a certificate it did not get
