"""``gridctl lab up | status | fail | down`` through the real CLI, on a scratch copy of the example."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx

from gridctl.lab.pids import pid_alive
from tests.conftest import Result, cli_env

MODEL = "llama-3.1-8b-instruct"


def lab_pid(inv: Path) -> tuple[int, str | None]:
    parts = (inv / ".state/lab/pid").read_text().split()
    return int(parts[0]), parts[1] if len(parts) > 1 else None


def status(cli, **kw) -> dict:  # type: ignore[no-untyped-def]
    r: Result = cli("lab", "status", "-o", "json", **kw)
    assert r.rc == 0, r
    return json.loads(r.out)


def test_up_status_fail_down(cli, inv: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("lab", "up", "--speed", "50")
    assert r.rc == 0, r
    overlay = Path(r.out.strip())
    assert overlay == (inv / ".state/lab/inventory").resolve()
    assert "waiting for 15 sites" in r.err and "hint: gridctl -i" in r.err
    pid, start = lab_pid(inv)
    assert pid_alive(pid, start)
    assert os.getsid(pid) == pid  # detached: its own session, no terminal
    try:
        # every command runs against the overlay
        sites = json.loads(cli("site", "ls", "-o", "json", inventory=overlay).out)
        assert len(sites) == 15 and all(s["endpoint"].startswith("http://127.0.0.1:") for s in sites)
        assert all(s["api_key_env"] is None for s in sites)

        st = status(cli)
        assert st["pid"] == pid and st["from"] == "us-east" and st["speed"] == 50
        assert st["hidden_speed"] == 1  # on by default, seed 1
        rows = {s["name"]: s for s in st["sites"]}
        assert len(rows) == 15 and {s["mode"] for s in rows.values()} == {"ok"}
        fra = rows["fra-pop-01"]
        assert fra["url"] == next(s["endpoint"] for s in sites if s["name"] == "fra-pop-01")
        assert fra["models"] == ["llama-3.1-8b-instruct", "llama-3.1-70b-instruct"]
        jc = rows["jc-edge-01"]
        assert [(m["gpu"], m["replicas"]) for m in jc["serving"]] == [("L4", 2), ("L4", 2)]
        assert 0.6 <= jc["speed_factor"] <= 1.4 and jc["speed_factor"] != 1.0

        with httpx.Client(trust_env=False, timeout=10) as c:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert c.post(fra["url"] + "/v1/chat/completions", json=body).status_code == 200
            served = {s["name"]: s for s in status(cli)["sites"]}["fra-pop-01"]
            assert (served["served"], served["in_flight"], served["waiting"]) == (1, 0, 0)

            table = cli("lab", "status")
            assert table.rc == 0 and f"Lab pid {pid}" in table.out
            assert "SERVED" in table.out and "fra-pop-01" in table.out and "hidden speed seed 1" in table.out
            wide = cli("lab", "status", "-o", "wide")
            assert wide.rc == 0 and "2x L4 (2 replicas)" in wide.out and "TRUE-SPEED" in wide.out
            assert cli("lab", "status", "-o", "name").out.split() == sorted(rows)

            r = cli("lab", "fail", "fra-pop-01", "503")
            assert (r.rc, r.out) == (0, "lab/fra-pop-01 mode 503 (was ok)\n")
            assert c.post(fra["url"] + "/v1/chat/completions", json=body).status_code == 503
            assert {s["name"]: s for s in status(cli)["sites"]}["fra-pop-01"]["mode"] == "503"
            r = cli("lab", "fail", "par-*", "slow", "--delay-ms", "5")
            assert r.rc == 0 and len(r.out.splitlines()) == 2
            # the same target patterns as every command: a list, selectors, & and !
            r = cli("lab", "fail", "fra-pop-01,par-pop-01", "ok")
            assert r.rc == 0 and sorted(r.out.split()[0::5]) == ["lab/fra-pop-01", "lab/par-pop-01"], r
            r = cli("lab", "fail", "region:eu-*,&kind:edge,!ber-*", "ok")
            assert (r.rc, r.out) == (0, "lab/par-edge-02 mode ok (was slow)\n"), r
            assert cli("lab", "fail", "zzz-*", "ok").rc == 1  # a glob that matches nothing
            r = cli("lab", "fail", "fra-[", "ok")
            assert r.rc == 2 and "never closed" in r.err
            assert cli("lab", "fail", "fra-pop-01", "ok").rc == 0
            assert c.post(fra["url"] + "/v1/chat/completions", json=body).status_code == 200

        r = cli("lab", "fail", "fra-pop-99", "503")
        assert r.rc == 1 and "no site named 'fra-pop-99'" in r.err and "fra-pop-01" in r.err
        assert cli("lab", "fail", "fra-pop-01", "explode").rc == 2

        again = cli("lab", "up")
        assert again.rc == 0 and "already up" in again.err and Path(again.out.strip()) == overlay
        assert lab_pid(inv) == (pid, start)
    finally:
        down = cli("lab", "down")
    assert down.rc == 0 and f"lab stopped (pid {pid})" in down.out, down
    assert not pid_alive(pid, start)
    assert not (inv / ".state").exists()  # nothing left behind

    r = cli("lab", "status")
    assert r.rc == 4 and "not running" in r.err
    assert cli("lab", "fail", "fra-pop-01", "503").rc == 4
    r = cli("lab", "down")
    assert r.rc == 0 and "not running" in r.err and r.out == ""


def test_synthetic_sites(cli, inv: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli(
        "lab",
        "up",
        "--sites",
        "5",
        "--from",
        "eu-de",
        "--hidden-speed",
        "off",
        env=cli_env(GRIDCTL_LAB_SPEED="40"),
    )
    assert r.rc == 0, r
    pid, start = lab_pid(inv)
    try:
        overlay = Path(r.out.strip())
        names = cli("site", "ls", "-o", "name", inventory=overlay).out.split()
        assert names == [f"lab-{i:03d}" for i in range(5)]
        st = status(cli)
        assert st["synthetic"] == 5 and st["from"] == "eu-de" and len(st["sites"]) == 5
        assert st["speed"] == 40  # from the environment
        assert st["hidden_speed"] is None and {s["speed_factor"] for s in st["sites"]} == {1.0}
        urls = [s["url"] for s in st["sites"]]
        with httpx.Client(trust_env=False, timeout=10) as c:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
            assert all(c.post(u + "/v1/completions", json=body).status_code == 200 for u in urls)
    finally:
        assert cli("lab", "down").rc == 0
    assert not pid_alive(pid, start)
    assert not (inv / ".state/lab").exists()


def test_up_that_cannot_start_stops_what_it_started_and_shows_the_log(cli, inv: Path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("lab", "up", "--port-base", str(port), "--timeout", "20")
    assert r.rc == 1, r
    assert "the lab did not come up" in r.err
    assert f"cannot listen on 127.0.0.1:{port}" in r.err  # from the log's tail
    assert not (inv / ".state/lab").exists()
    assert cli("lab", "status").rc == 4


def test_up_refuses_bad_options(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("lab", "up", "--from", "mars")
    assert r.rc == 2 and "no such client region" in r.err and "eu-de" in r.err
    assert cli("lab", "up", "--speed", "0").rc == 2
    assert cli("lab", "up", "--sites", "0").rc == 2
    r = cli("lab", "up", "--hidden-speed", "fast")
    assert r.rc == 2 and "expected a seed (an integer) or 'off'" in r.err and "hint:" in r.err


def run_in(cwd: Path, *args: str) -> Result:
    """The CLI from another working directory (run_cli runs from the repository)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "gridctl", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=cwd,
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_lab_found_from_any_directory_and_hints_carry_i(cli, inv: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("lab", "up", "--speed", "50")
    assert r.rc == 0, r
    overlay = Path(r.out.strip())
    pid, start = lab_pid(inv)
    try:
        # the inventory is not ./inventory: every hint names it, absolute, so it works from anywhere
        hint = next(line for line in r.err.splitlines() if line.startswith("hint:"))
        root = inv.resolve()
        assert hint == (
            f"hint: gridctl -i {overlay} site ls; gridctl -i {root} lab status; gridctl -i {root} lab down"
        ), r.err
        for command in hint.removeprefix("hint: ").split("; ")[:2]:
            ran = run_in(elsewhere, *command.split()[1:])
            assert ran.rc == 0, (command, ran)
        # -i relative to another directory, and -i the overlay itself, find the same lab
        rel = os.path.relpath(inv, elsewhere)
        for where in (rel, str(overlay)):
            ran = run_in(elsewhere, "-i", where, "lab", "status", "-o", "json")
            assert ran.rc == 0 and json.loads(ran.out)["pid"] == pid, (where, ran)
        ran = run_in(elsewhere, "-i", str(overlay), "lab", "fail", "fra-pop-01", "503")
        assert (ran.rc, ran.out) == (0, "lab/fra-pop-01 mode 503 (was ok)\n"), ran
        again = run_in(elsewhere, "-i", str(overlay), "lab", "up")
        assert again.rc == 0 and "already up" in again.err and lab_pid(inv) == (pid, start)
        # no -i from another directory: it says which inventory it looked at, and how to name one
        ran = run_in(elsewhere, "lab", "status")
        assert ran.rc == 4, ran
        assert f"not running for inventory {elsewhere.resolve() / 'inventory'}" in ran.err
        assert "-i" in ran.err.split("hint:", 1)[1]
    finally:
        down = run_in(elsewhere, "-i", str(overlay), "lab", "down")
    assert down.rc == 0 and f"lab stopped (pid {pid})" in down.out, down
    assert not pid_alive(pid, start) and not (inv / ".state").exists()


def test_down_signals_only_its_own_lab_process(cli, inv: Path) -> None:  # type: ignore[no-untyped-def]
    """The recorded pid now belongs to another process (pid reuse): lab down leaves it alone."""
    import subprocess

    from gridctl.lab.pids import process_start

    stranger = subprocess.Popen(["sleep", "120"])
    try:
        start = process_start(stranger.pid)
        lab = inv / ".state/lab"
        # with its true start time (a pid file that matches, but not a lab), then with none (lab.json only)
        for write in (
            lambda: (lab / "pid").write_text(f"{stranger.pid} {start}\n"),
            lambda: (lab / "lab.json").write_text(json.dumps({"pid": stranger.pid})),
        ):
            lab.mkdir(parents=True)
            write()
            assert cli("lab", "status").rc == 4
            r = cli("lab", "down", "--timeout", "1")
            assert r.rc == 0, r
            assert f"its recorded pid {stranger.pid} is now another process, left alone" in r.err
            assert stranger.poll() is None and pid_alive(stranger.pid, start)
            assert not lab.exists()
    finally:
        stranger.kill()
        stranger.wait()
