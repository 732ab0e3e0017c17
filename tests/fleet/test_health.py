"""``gridctl health``, ``node trust`` and ``gpu`` against real sshd nodes and HTTP endpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli
from tests.fleet.conftest import write_fleet_inventory
from tests.fleet.endpoint import FakeEndpoint
from tests.fleet.sshd import Fleet, free_port


@pytest.fixture
def endpoints():
    made: list[FakeEndpoint] = []

    def make(**kw) -> FakeEndpoint:
        ep = FakeEndpoint(**kw)
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.close()


def _rows(out: str) -> dict[str, dict]:
    return {(f"{r['site']}/{r['node']}" if r["node"] else r["site"]): r for r in json.loads(out)}


def test_healthy_nodes_exit_0_with_readings(fleet_inv: Path) -> None:
    r = run_cli("health", "lab-a/node000,lab-a/node001,lab-b/node007", "-o", "json", inventory=fleet_inv)
    assert r.rc == 0, r
    rows = _rows(r.out)
    assert set(rows) == {"lab-a/node000", "lab-a/node001", "lab-b/node007"}
    row = rows["lab-a/node000"]
    assert row["status"] == "ok" and row["reasons"] == [] and row["kind"] == "node"
    assert len(row["readings"]["gpus"]) == 8
    assert row["readings"]["gpus"][0]["name"].startswith("NVIDIA H100")
    assert "3 targets: 3 ok" in r.err


def test_every_failure_class_is_classified_with_reasons(fleet_inv: Path) -> None:
    start = time.monotonic()
    r = run_cli(
        "health", "all", "--nodes-only", "--timeout", "5", "-o", "json", inventory=fleet_inv, timeout=60
    )
    assert time.monotonic() - start < 5 + 8
    assert r.rc == 3, r  # degraded/failed/unknown, nothing unreachable
    rows = _rows(r.out)
    hot, ecc, xid, drv, hang = (
        rows[f"{s}/node{i:03d}"]
        for s, i in [("lab-a", 2), ("lab-a", 3), ("lab-b", 4), ("lab-b", 5), ("lab-b", 6)]
    )
    assert hot["status"] == "degraded" and any("slowdown" in x.lower() for x in hot["reasons"]), hot[
        "reasons"
    ]
    assert ecc["status"] == "failed" and any("ECC" in x for x in ecc["reasons"]), ecc["reasons"]
    assert xid["status"] == "failed" and any("79" in x for x in xid["reasons"]), xid["reasons"]
    assert drv["status"] == "unknown" and any("driver" in x.lower() for x in drv["reasons"]), drv["reasons"]
    assert hang["status"] == "unknown" and any("hung" in x for x in hang["reasons"]), hang["reasons"]
    assert rows["lab-a/node000"]["status"] == "ok"


def test_unreachable_nodes_exit_4(tmp_path: Path, ssh_fleet: Fleet, frozen) -> None:
    inv = write_fleet_inventory(
        tmp_path / "inv", ssh_fleet, extra_nodes={"frozen": frozen.port, "gone": free_port()}
    )
    r = run_cli(
        "health", "lab-bad,lab-a/node000", "--nodes-only", "--timeout", "3", "-o", "json", inventory=inv
    )
    assert r.rc == 4, r
    rows = _rows(r.out)
    assert (
        rows["lab-bad/frozen"]["status"] == "unreachable" and rows["lab-bad/gone"]["status"] == "unreachable"
    )
    assert "connection refused" in rows["lab-bad/gone"]["reasons"][0]
    assert rows["lab-a/node000"]["status"] == "ok"


def test_site_endpoints_and_rollup(tmp_path: Path, ssh_fleet: Fleet, endpoints) -> None:
    good, sick = endpoints(), endpoints(health_code=503)
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet, endpoints={"lab-a": good.url, "lab-b": sick.url})
    r = run_cli("health", "lab-a,lab-b", "--sites-only", "-o", "json", inventory=inv)
    assert r.rc == 3, r
    rows = _rows(r.out)
    assert rows["lab-a"]["status"] == "ok" and rows["lab-a"]["readings"]["endpoint"]["models"] == [
        "llama-3.1-8b-instruct"
    ]
    assert rows["lab-b"]["status"] == "failed" and "HTTP 503" in rows["lab-b"]["reasons"][0]
    # With nodes: lab-a's endpoint is fine but two of its four nodes are not.
    r = run_cli("health", "lab-a", "--timeout", "5", "-o", "json", inventory=inv, timeout=60)
    site = _rows(r.out)["lab-a"]
    assert site["status"] == "degraded" and "1 of 4 nodes failed or unreachable" in site["reasons"]


def test_missing_model_unreachable_endpoint_and_api_key(tmp_path: Path, ssh_fleet: Fleet, endpoints) -> None:
    wrong = endpoints(models=("other-model",), api_key="s3cret")
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet, endpoints={"lab-a": wrong.url})
    site = inv / "sites" / "lab-a.yaml"
    site.write_text(site.read_text().replace("models:", "api_key_env: LAB_A_KEY\nmodels:"))
    r = run_cli(
        "health", "lab-a,lab-b", "--sites-only", "-o", "json", inventory=inv, env=cli_env(LAB_A_KEY="s3cret")
    )
    rows = _rows(r.out)
    assert rows["lab-a"]["status"] == "failed"
    assert "expected models not served: llama-3.1-8b-instruct" in rows["lab-a"]["reasons"]
    assert all(auth == "Bearer s3cret" for _, auth in wrong.requests)
    assert rows["lab-b"]["status"] == "unreachable" and r.rc == 4
    assert "s3cret" not in r.out + r.err


def _with_key_env(inv: Path, site_name: str, var: str) -> None:
    site = inv / "sites" / f"{site_name}.yaml"
    site.write_text(site.read_text().replace("models:", f"api_key_env: {var}\nmodels:"))


def test_api_key_with_a_trailing_newline_is_sent_stripped(
    tmp_path: Path, ssh_fleet: Fleet, endpoints
) -> None:
    ep = endpoints(api_key="s3cret")
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet, endpoints={"lab-a": ep.url})
    _with_key_env(inv, "lab-a", "LAB_A_KEY")
    env = cli_env(LAB_A_KEY="  s3cret\n")  # a keyfile's newline (EnvironmentFile, ...) and stray spaces
    r = run_cli("health", "lab-a", "--sites-only", "-o", "json", inventory=inv, env=env)
    assert r.rc == 0, r
    assert _rows(r.out)["lab-a"]["status"] == "ok"
    assert ep.requests and all(auth == "Bearer s3cret" for _, auth in ep.requests)


@pytest.mark.parametrize("key", ["s3\rcret", "s3\ncret", "s3cret\x7fx"])
def test_api_key_with_a_control_character_is_an_endpoint_error_not_a_crash(
    tmp_path: Path, ssh_fleet: Fleet, endpoints, key: str
) -> None:
    ep = endpoints(api_key="s3cret")
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet, endpoints={"lab-a": ep.url, "lab-b": ep.url})
    _with_key_env(inv, "lab-a", "LAB_A_KEY")
    env = cli_env(LAB_A_KEY=key)
    r = run_cli("health", "lab-a,lab-b", "--sites-only", "-o", "json", inventory=inv, env=env)
    assert r.rc == 4, r  # an unreachable endpoint, as for any endpoint error
    rows = _rows(r.out)
    assert rows["lab-a"]["status"] == "unreachable", rows["lab-a"]
    why = "API key in $LAB_A_KEY contains a control character; set it to the key alone"
    reason = f"endpoint unreachable: {ep.url}/health: {why}"
    assert rows["lab-a"]["reasons"] == [reason]
    assert rows["lab-b"]["status"] == "failed"  # its own answer (401: no key), probed as usual
    assert all(auth is None for _, auth in ep.requests)  # the bad key was never sent
    assert "cret" not in r.out + r.err and "bug" not in r.err
    table = run_cli("health", "lab-a", "--sites-only", inventory=inv, env=env)
    assert table.rc == 4 and "API key in $LAB_A_KEY contains a control character" in table.out, table


def test_results_are_saved_for_site_ls(tmp_path: Path, ssh_fleet: Fleet, endpoints) -> None:
    good = endpoints()
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet, endpoints={"lab-a": good.url})
    assert run_cli("site", "ls", "-o", "json", inventory=inv).out.count('"health": null') == 2
    run_cli("health", "lab-a,lab-b", "--sites-only", inventory=inv)
    sites = {s["name"]: s for s in json.loads(run_cli("site", "ls", "-o", "json", inventory=inv).out)}
    assert sites["lab-a"]["health"]["status"] == "ok"
    assert sites["lab-b"]["health"]["status"] == "unreachable"
    assert sites["lab-a"]["health"]["checked_at"].endswith("Z")
    table = run_cli("site", "ls", inventory=inv).out.splitlines()
    assert (
        table[0].split()[-1] == "HEALTH"
        and table[1].split()[-1] == "ok"
        and table[2].split()[-1] == "unreachable"
    )


def test_table_output_and_summary(fleet_inv: Path) -> None:
    r = run_cli("health", "lab-a/node000,lab-a/node003", "--nodes-only", inventory=fleet_inv)
    assert r.rc == 3
    lines = r.out.splitlines()
    assert lines[0].split()[:3] == ["TARGET", "KIND", "STATUS"]
    assert any(line.startswith("lab-a/node003") and " failed " in line for line in lines)
    assert "2 targets: 1 ok, 1 failed (lab-a/node003)" in r.err


# ---- host keys ---------------------------------------------------------------


@pytest.fixture
def lone_node(tmp_path: Path) -> Fleet:
    fleet = Fleet(tmp_path / "lone", ["healthy-h100x8"])
    fleet.start()
    yield fleet
    fleet.stop()


def test_node_trust_flow_and_changed_key(tmp_path: Path, ssh_fleet: Fleet, lone_node: Fleet) -> None:
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet, pin=False)
    lone = lone_node.nodes[0]
    site = inv / "sites" / "lab-b.yaml"
    site.write_text(
        site.read_text() + f"  - name: lone\n    host: 127.0.0.1\n    port: {lone.port}\n"
        f"    key: {lone_node.client_key}\n    gpus: {{model: H100, count: 8}}\n"
    )
    # unknown keys: refused, nothing pinned
    r = run_cli("exec", "lab-b/lone", "--", "true", inventory=inv)
    assert r.rc == 4 and "unknown host key" in r.err
    # trust without a terminal needs --yes, but shows the fingerprints first
    r = run_cli("node", "trust", "lab-b/lone", inventory=inv)
    assert r.rc == 2 and "refusing without --yes" in r.err
    fp = lone.host_key.with_suffix(".pub").read_text()
    assert "SHA256:" in r.out and "new" in r.out
    assert (inv / "known_hosts").read_text() == ""
    r = run_cli("node", "trust", "lab-b/lone", "--yes", "--dry-run", inventory=inv)  # shown, not pinned
    assert r.rc == 0 and "SHA256:" in r.out and "would pin 1 host key" in r.err, r
    assert (inv / "known_hosts").read_text() == ""
    r = run_cli("node", "trust", "lab-b/lone", "--yes", "-o", "json", inventory=inv)
    assert r.rc == 0, r
    assert json.loads(r.out)[0]["verdict"] == "new"
    assert f"[127.0.0.1]:{lone.port} ssh-ed25519 {fp.split()[1]}" in (inv / "known_hosts").read_text()
    assert run_cli("exec", "lab-b/lone", "--", "true", inventory=inv).rc == 0
    r = run_cli("node", "trust", "lab-b/lone", "-o", "json", inventory=inv)
    assert r.rc == 0 and json.loads(r.out)[0]["verdict"] == "pinned" and "nothing to pin" in r.err
    # the node is reinstalled: a new host key is refused loudly, other nodes carry on
    lone.restart_with_new_host_key()
    r = run_cli("exec", "lab-b/lone,lab-b/node007", "--accept-new", "-o", "json", "--", "true", inventory=inv)
    assert r.rc == 4
    rows = {d["node"]: d for d in json.loads(r.out)}
    assert "HOST KEY CHANGED" in rows["lone"]["error"] and rows["node007"]["status"] == "ok"
    before = (inv / "known_hosts").read_text()
    r = run_cli("node", "trust", "lab-b/lone", "--yes", inventory=inv)
    assert r.rc == 1 and "changed" in r.err and "HOST KEY CHANGED" in r.err
    assert (inv / "known_hosts").read_text().count(f"[127.0.0.1]:{lone.port} ") == 1
    assert fp.split()[1] in (inv / "known_hosts").read_text()
    r = run_cli("node", "trust", "lab-b/lone", "--yes", "--replace", inventory=inv)
    assert r.rc == 0, r
    after = (inv / "known_hosts").read_text()
    assert after != before and after.count(f"[127.0.0.1]:{lone.port} ") == 1
    assert run_cli("exec", "lab-b/lone", "--", "true", inventory=inv).rc == 0


def test_gpu_without_a_driver_says_so_and_exits_4() -> None:
    r = run_cli("gpu", "-o", "json")
    assert r.rc == 4
    assert "no NVIDIA GPU reachable here" in r.err and "Traceback" not in r.err and r.out == ""
