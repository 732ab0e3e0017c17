"""``gridctl node provision`` against real sshd nodes on loopback, with the lab profile."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import REPO, cli_env, run_cli
from tests.provision.conftest import MODEL, Grid


def _rows(out: str) -> dict[str, dict]:
    return {r["node"]: r for r in json.loads(out)}


def test_check_shows_the_plan_and_changes_nothing(grid: Grid) -> None:
    r = grid.provision("all", "--check")
    assert r.rc == 0, r
    for node in grid.nodes:
        assert grid.files(node) == {}, node  # nothing written under any prefix
        env = grid.prefix(node) / "etc" / "gridctl-lab" / f"site-{node}.env"
        assert f"+ {env}  (new file; mode 0644)" in r.out
    assert "$ sh " in r.out and " restart" in r.out
    assert "4 nodes (check: nothing changed): 4 would-change" in r.err
    r = grid.provision("all", "--check", "-o", "json")
    rows = _rows(r.out)
    assert {row["status"] for row in rows.values()} == {"would-change"}
    assert all(row["changed"] == 4 and not row["restarted"] for row in rows.values())
    assert all(grid.files(n) == {} for n in grid.nodes)


def test_apply_then_reapply_is_idempotent_and_health_reports_the_site_ok(grid: Grid) -> None:
    r = grid.provision("all", "--yes", "-o", "json")
    assert r.rc == 0, r
    rows = _rows(r.out)
    assert all(row["status"] == "changed" and row["restarted"] for row in rows.values()), rows
    assert all(row["verified_seconds"] is not None for row in rows.values())
    pids = {n: grid.pid(n) for n in grid.nodes}
    assert all(pids.values())
    before = {n: grid.config(n) for n in grid.nodes}
    mtimes = {p: p.stat().st_mtime_ns for n in grid.nodes for p in grid.prefix(n).rglob("*") if p.is_file()}

    again = grid.provision("all", "--yes", "-o", "json")
    assert again.rc == 0, again
    rows = _rows(again.out)
    assert all(row["status"] == "unchanged" and row["changed"] == 0 for row in rows.values()), rows
    assert not any(row["restarted"] or row["commands"] for row in rows.values())
    assert {n: grid.pid(n) for n in grid.nodes} == pids  # no restart happened
    assert {n: grid.config(n) for n in grid.nodes} == before
    log_files = {p for p in mtimes if p.suffix == ".log"}
    assert {p: p.stat().st_mtime_ns for p in mtimes if p not in log_files} == {
        p: t for p, t in mtimes.items() if p not in log_files
    }
    assert "4 nodes: 4 unchanged" in again.err

    health = run_cli("health", "all", "-o", "json", inventory=grid.inv)
    assert health.rc == 0, health
    sites = [row for row in json.loads(health.out) if row["kind"] == "site"]
    assert len(sites) == 4 and all(row["status"] == "ok" for row in sites), sites
    assert all(MODEL in row["readings"]["endpoint"]["models"] for row in sites)


def test_a_changed_variable_changes_exactly_the_affected_node(grid: Grid) -> None:
    assert grid.provision("all", "--yes").rc == 0
    pids = {n: grid.pid(n) for n in grid.nodes}
    before = {n: grid.config(n) for n in grid.nodes}
    grid.node_vars["node002"] = {"lab_env": ["GRIDCTL_LAB_NOTE=canary"]}
    grid.write()

    diff = grid.provision("all", "--check", "--diff")
    assert diff.rc == 0, diff
    assert "+export GRIDCTL_LAB_NOTE=canary" in diff.out
    assert diff.out.count("file(s) would change") == 1

    r = grid.provision("all", "--yes", "-o", "json")
    assert r.rc == 0, r
    rows = _rows(r.out)
    assert rows["node002"]["status"] == "changed"
    assert [f["path"] for f in rows["node002"]["files"]] == [
        str(grid.prefix("node002") / "etc" / "gridctl-lab" / "site-node002.env")
    ]
    assert rows["node002"]["files"][0]["reasons"] == ["content"]
    others = [n for n in grid.nodes if n != "node002"]
    assert all(rows[n]["status"] == "unchanged" for n in others)
    after = {n: grid.pid(n) for n in grid.nodes}
    assert after["node002"] != pids["node002"]
    assert {n: after[n] for n in others} == {n: pids[n] for n in others}
    assert {n: grid.config(n) for n in others} == {n: before[n] for n in others}
    backup = grid.prefix("node002") / "var/lib/gridctl/provision/backup/etc/gridctl-lab/site-node002.env"
    assert backup.read_bytes() == before["node002"]["etc/gridctl-lab/site-node002.env"]


def test_endpoint_that_never_comes_up_is_rolled_back(grid: Grid) -> None:
    assert grid.provision("all", "--yes").rc == 0
    good = grid.config("node001")
    old_pid = grid.pid("node001")
    grid.node_vars["node001"] = {"lab_server": ["false"]}  # starts, exits at once
    grid.write()

    r = grid.provision("all", "--yes", "--wait", "2", "-o", "json")
    assert r.rc == 1, r
    rows = _rows(r.out)
    bad = rows["node001"]
    assert bad["status"] == "failed" and bad["rolled_back"], bad
    assert "endpoint not up after" in bad["error"] and "cannot connect" in bad["error"], bad["error"]
    assert "previous files restored and restarted; endpoint up again" in bad["error"], bad["error"]
    assert "tail -n 20" in bad["diagnostics"]
    assert grid.config("node001") == good  # the old files are back
    assert grid.pid("node001") not in (None, old_pid)  # the old server runs again
    assert all(rows[n]["status"] == "unchanged" for n in grid.nodes if n != "node001")
    assert "1 failed (site-node001/node001)" in r.err


def test_unreachable_node_is_reported_while_the_others_finish(tmp_path: Path, prov_fleet) -> None:
    from tests.fleet.sshd import free_port

    g = Grid(tmp_path, prov_fleet, extra={"gone": free_port()}).write()
    try:
        r = g.provision("all", "--yes", "--timeout", "5", "-o", "json")
        assert r.rc == 4, r
        rows = _rows(r.out)
        assert rows["gone"]["status"] == "unreachable" and "connection refused" in rows["gone"]["error"]
        assert all(rows[n]["status"] == "changed" for n in g.nodes if n != "gone")
        assert all(g.pid(n) for n in g.nodes if n != "gone")
    finally:
        g.stop_servers()


def test_api_key_with_a_control_character_fails_preflight_and_touches_no_node(grid: Grid) -> None:
    for node in grid.nodes:
        site = grid.inv / "sites" / f"{grid.site(node)}.yaml"
        site.write_text(site.read_text().replace("models:", "api_key_env: LAB_KEY\nmodels:", 1))
    env = cli_env(LAB_KEY="s3\rcret")
    r = run_cli("node", "provision", "all", "--yes", "-o", "json", inventory=grid.inv, env=env, timeout=120)
    assert r.rc == 1, r
    rows = _rows(r.out)
    want = "preflight: API key in $LAB_KEY contains a control character; set it to the key alone"
    assert {row["status"] for row in rows.values()} == {"failed"}, rows
    assert all(row["error"] == want for row in rows.values()), rows
    assert all(grid.files(n) == {} for n in grid.nodes)  # refused before anything was pushed
    assert "cret" not in r.out + r.err
    # a trailing newline is stripped: the same run goes through
    env = cli_env(LAB_KEY="s3cret\n")
    r = run_cli("node", "provision", "all", "--yes", "-o", "json", inventory=grid.inv, env=env, timeout=120)
    assert r.rc == 0, r
    assert all(row["status"] == "changed" for row in _rows(r.out).values())


def test_template_error_touches_no_node(grid: Grid, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates" / "provision" / "lab", templates / "provision" / "lab")
    ctl = templates / "provision" / "lab" / "lab-ctl.sh.j2"
    lines = ctl.read_text().splitlines(keepends=True)
    lines.insert(6, "# {{ no_such_variable }}\n")
    ctl.write_text("".join(lines))
    r = run_cli("--templates", str(templates), "node", "provision", "all", "--yes", inventory=grid.inv)
    assert r.rc == 1, r
    assert (
        "templates/provision/lab/lab-ctl.sh.j2:7: 'no_such_variable' is undefined: define it in "
        "the inventory's provision.vars"
    ) in r.err
    assert (
        "(rendering for site-node000/node000, site-node001/node001, site-node002/node002, +1 more)" in r.err
    )
    assert "error: 1 template problem; no node was touched" in r.err
    assert all(grid.files(n) == {} for n in grid.nodes)

    ctl.write_text("{% if x %}\nno end\n")  # syntax error
    r = run_cli("--templates", str(templates), "node", "provision", "all", "--check", inventory=grid.inv)
    assert r.rc == 1 and "templates/provision/lab/lab-ctl.sh.j2:2: Unexpected end of template" in r.err, r


def test_missing_variable_of_a_builtin_profile_is_located(grid: Grid) -> None:
    site = grid.inv / "sites" / "site-node000.yaml"
    site.write_text(site.read_text().replace("profile: lab", "profile: vllm"))
    r = grid.provision("site-node000", "--yes")
    assert r.rc == 1, r
    assert "templates/provision/vllm/vllm.env.j2:4: 'model' is undefined" in r.err
    assert grid.files("node000") == {}


def test_serial_with_max_fail_stops_a_bad_rollout(grid: Grid) -> None:
    grid.site_vars = {"lab_server": ["false"]}
    grid.write()
    r = grid.provision("all", "--yes", "--serial", "1", "--max-fail", "0", "--wait", "1.5", "-o", "json")
    assert r.rc == 1, r
    rows = [json.loads(r.out)[i] for i in range(4)]
    assert rows[0]["status"] == "failed" and rows[0]["rolled_back"]
    assert "new files removed" in rows[0]["error"]
    assert [row["status"] for row in rows[1:]] == ["skipped"] * 3
    assert all("rollout stopped: 1 of 1 nodes tried failed" in row["error"] for row in rows[1:])
    assert grid.config("node000") == {}  # a failed first install leaves no files
    assert all(grid.files(n) == {} for n in grid.nodes[1:])  # never touched


def test_without_a_terminal_it_needs_yes(grid: Grid) -> None:
    r = grid.provision("all")
    assert r.rc == 2, r
    assert "refusing without --yes" in r.err and "--check" in r.err
    assert all(grid.files(n) == {} for n in grid.nodes)


def _on_tty(grid: Grid, answer: str) -> tuple[int, str]:
    """Run provision on a terminal; answer the confirmation prompt with ``answer``."""
    import os
    import pty
    import subprocess
    import sys
    import time

    from tests.conftest import cli_env

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridctl", "-i", str(grid.inv), "node", "provision", "all"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(),
        cwd=REPO,
    )
    os.close(slave)
    seen, answered = b"", False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        seen += data
        if not answered and b"Apply these changes to 4 nodes?" in seen:
            os.write(master, answer.encode() + b"\n")
            answered = True
    rc = proc.wait(timeout=30)
    os.close(master)
    return rc, seen.decode(errors="replace")


def test_on_a_terminal_it_shows_the_plan_and_asks(grid: Grid) -> None:
    rc, text = _on_tty(grid, "n")
    assert rc == 1 and "aborted; nothing was changed" in text, text
    assert "file(s) would change" in text and "$ sh " in text
    assert all(grid.files(n) == {} for n in grid.nodes)
    rc, text = _on_tty(grid, "y")
    assert rc == 0, text
    assert "4 nodes: 4 changed" in text
    assert all(grid.pid(n) for n in grid.nodes)
