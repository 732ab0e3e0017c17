"""``gridctl exec`` against real sshd nodes: output, exit codes, deadlines, host keys."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tests.conftest import run_cli
from tests.fleet.conftest import write_fleet_inventory
from tests.fleet.sshd import free_port


def test_exec_on_all_nodes_prefixes_output(fleet_inv: Path) -> None:
    r = run_cli("exec", "all", "--", "echo hello from $GRIDCTL_FAKE_GPU_STATE", inventory=fleet_inv)
    assert r.rc == 0, r
    lines = sorted(r.out.splitlines())
    states = [
        "healthy-h100x8",
        "healthy-h100x8",
        "hot",
        "ecc",
        "xid79",
        "driver-not-loaded",
        "hang",
        "healthy-h100x8",
    ]
    assert lines == [f"node{i:03d} | hello from {s}" for i, s in enumerate(states)]
    assert "8 nodes: 8 ok" in r.err


def test_exec_json_shape_and_failing_command(fleet_inv: Path) -> None:
    r = run_cli(
        "exec", "lab-a", "-o", "json", "--", "sh", "-c", "echo out; echo err >&2; exit 3", inventory=fleet_inv
    )
    assert r.rc == 1, r
    data = json.loads(r.out)
    assert [d["node"] for d in data] == ["node000", "node001", "node002", "node003"]
    first = data[0]
    assert set(first) == {"node", "site", "status", "rc", "stdout", "stderr", "seconds", "error"}
    assert first["site"] == "lab-a" and first["rc"] == 3 and first["status"] == "failed"
    assert first["stdout"] == "out\n" and first["stderr"] == "err\n"
    assert "4 failed (node000, node001, node002, node003)" in r.err


def test_arguments_are_quoted_one_by_one(fleet_inv: Path) -> None:
    tricky = "a b; echo INJECTED $HOME 'q'"
    r = run_cli("exec", "lab-a/node000", "-o", "json", "--", "printf", "%s\\n", tricky, inventory=fleet_inv)
    assert r.rc == 0, r
    assert json.loads(r.out)[0]["stdout"] == tricky + "\n"


def test_large_output_on_both_streams_does_not_deadlock(fleet_inv: Path) -> None:
    cmd = "head -c 3000000 /dev/zero | tr '\\0' a; head -c 2500000 /dev/zero | tr '\\0' b >&2"
    r = run_cli(
        "exec", "lab-a/node000,lab-b/node004", "-o", "json", "--", cmd, inventory=fleet_inv, timeout=120
    )
    assert r.rc == 0, r
    for d in json.loads(r.out):
        assert d["stdout"] == "a" * 3_000_000 and d["stderr"] == "b" * 2_500_000


def test_hanging_command_ends_at_the_deadline(fleet_inv: Path) -> None:
    start = time.monotonic()
    r = run_cli("exec", "lab-a", "--timeout", "2", "--", "sleep 60", inventory=fleet_inv)
    elapsed = time.monotonic() - start
    assert r.rc == 1, r
    assert "command timed out" in r.err
    assert elapsed < 2 + 5  # the deadline plus process start-up; speed itself is in bench/


def sleep_arg() -> str:
    """A duration no other process on this machine sleeps for: how a test finds its
    command on the node (the nodes are loopback sshd, so their processes are ours to see)."""
    return f"{random.randint(100, 999)}.{random.randint(10**8, 10**9)}"


def sleepers(arg: str) -> list[int]:
    """Pids of the processes running ``sleep ARG``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # ended while we looked
            continue
        if len(argv) >= 2 and Path(argv[0].decode()).name == "sleep" and argv[1].decode() == arg:
            pids.append(int(cmdline.parent.name))
    return pids


def wait_until_gone(arg: str, within: float = 10.0) -> list[int]:
    """Pids still sleeping ``ARG`` after ``within`` seconds (none, once they all end)."""
    deadline = time.monotonic() + within
    while (left := sleepers(arg)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_timed_out_command_is_ended_on_the_node(fleet_inv: Path) -> None:
    # one node runs a plain sleep; the other a shell that ignores TERM and has a child
    # that ignores it too: the whole group goes (TERM, then KILL)
    plain, stubborn = sleep_arg(), sleep_arg()
    cmd = (
        f'if [ "$GRIDCTL_FAKE_GPU_STATE" = hot ]; then trap "" TERM; sleep {stubborn} & sleep {stubborn};'
        f" wait; else sleep {plain}; fi"
    )
    r = run_cli("exec", "lab-a/node000,lab-a/node002", "--timeout", "2", "--", cmd, inventory=fleet_inv)
    assert r.rc == 1, r
    assert r.err.count("command timed out") == 2, r
    assert wait_until_gone(plain) == [], "the timed-out sleep still runs on the node"
    assert wait_until_gone(stubborn) == [], "the TERM-ignoring group still runs on the node"


def test_command_has_its_own_group_and_no_stdin(fleet_inv: Path) -> None:
    # its own process group (pgid == its pid), not the login shell's; stdin /dev/null,
    # so a command that reads it ends at once instead of waiting for the deadline
    cmd = "ps -o pid=,pgid= -p $$; cat; echo read-done; echo to-err >&2"
    r = run_cli("exec", "lab-a/node000", "-o", "json", "--timeout", "20", "--", cmd, inventory=fleet_inv)
    assert r.rc == 0, r
    data = json.loads(r.out)[0]
    pid, pgid, done = data["stdout"].split()
    assert pid == pgid and done == "read-done"
    assert data["stderr"] == "to-err\n"  # stdout and stderr stay apart


def test_tty_gives_the_command_a_terminal(fleet_inv: Path) -> None:
    cmd = "tty; test -t 0 && test -t 1 && echo both-ttys; echo to-err >&2"
    r = run_cli("exec", "lab-a/node000", "--tty", "-o", "json", "--", cmd, inventory=fleet_inv)
    assert r.rc == 0, r
    data = json.loads(r.out)[0]
    # a terminal has one output: stderr arrives in stdout, line ends as \n
    assert data["stdout"].startswith("/dev/pts/") and data["stdout"].endswith("both-ttys\nto-err\n")
    assert data["stderr"] == "" and "\r" not in data["stdout"]
    # without --tty the same command has none
    r = run_cli("exec", "lab-a/node000", "-o", "json", "--", cmd, inventory=fleet_inv)
    data = json.loads(r.out)[0]
    assert r.rc == 0 and data["stdout"] == "not a tty\n" and data["stderr"] == "to-err\n", r


def test_tty_command_is_ended_at_the_deadline(fleet_inv: Path) -> None:
    arg = sleep_arg()
    r = run_cli(
        "exec", "lab-a/node000", "--tty", "--timeout", "2", "--", f"sleep {arg}; echo", inventory=fleet_inv
    )
    assert r.rc == 1 and "command timed out" in r.err, r
    assert wait_until_gone(arg) == [], "the terminal's hang-up left the command running"


def test_unreachable_nodes_are_reported_and_others_finish(
    tmp_path: Path, ssh_fleet, frozen, blackhole
) -> None:
    refused = free_port()
    inv = write_fleet_inventory(
        tmp_path / "inv",
        ssh_fleet,
        extra_nodes={"frozen": frozen.port, "refused": refused, "hole": blackhole.port},
    )
    start = time.monotonic()
    r = run_cli("exec", "all", "--timeout", "3", "-o", "json", "--", "echo ok", inventory=inv)
    elapsed = time.monotonic() - start
    assert r.rc == 4, r
    data = {d["node"]: d for d in json.loads(r.out)}
    assert all(data[f"node{i:03d}"]["status"] == "ok" for i in range(8))
    assert data["refused"]["status"] == "unreachable" and "connection refused" in data["refused"]["error"]
    assert data["frozen"]["status"] == "unreachable" and "handshake" in data["frozen"]["error"]
    assert data["hole"]["status"] == "unreachable"
    assert data["frozen"]["seconds"] < 3 + 1.5 and data["hole"]["seconds"] < 3 + 1.5
    assert "3 unreachable" in r.err and "frozen" in r.err
    assert elapsed < 3 + 6


def test_unknown_host_key_fails_that_node_only(tmp_path: Path, ssh_fleet) -> None:
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet)
    lines = (inv / "known_hosts").read_text().splitlines(keepends=True)
    (inv / "known_hosts").write_text("".join(lines[1:]))  # forget node000's key
    r = run_cli("exec", "lab-a", "-o", "json", "--", "true", inventory=inv)
    assert r.rc == 4
    data = {d["node"]: d for d in json.loads(r.out)}
    assert data["node000"]["status"] == "unreachable"
    assert "unknown host key" in data["node000"]["error"] and "SHA256:" in data["node000"]["error"]
    assert "gridctl node trust lab-a/node000" in data["node000"]["error"]
    assert all(data[f"node{i:03d}"]["status"] == "ok" for i in (1, 2, 3))
    assert (inv / "known_hosts").read_text() == "".join(lines[1:])  # nothing pinned silently


def test_accept_new_pins_unknown_keys(tmp_path: Path, ssh_fleet) -> None:
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet, pin=False)
    r = run_cli("exec", "lab-b", "--accept-new", "--", "true", inventory=inv)
    assert r.rc == 0, r
    pinned = (inv / "known_hosts").read_text()
    for node in ssh_fleet.nodes[4:8]:
        assert f"[127.0.0.1]:{node.port} ssh-ed25519" in pinned
    assert f"[127.0.0.1]:{ssh_fleet.nodes[0].port} " not in pinned
    r = run_cli("exec", "lab-b", "--", "true", inventory=inv)  # now known
    assert r.rc == 0, r


def test_wrong_key_is_an_auth_failure(tmp_path: Path, ssh_fleet) -> None:
    from tests.fleet.sshd import keygen

    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet)
    other = keygen(tmp_path / "other_key")
    site = inv / "sites" / "lab-a.yaml"
    site.write_text(site.read_text().replace(str(ssh_fleet.client_key), str(other)))
    r = run_cli("exec", "lab-a,lab-b/node004", "-o", "json", "--", "true", inventory=inv)
    assert r.rc == 4
    data = {d["node"]: d for d in json.loads(r.out)}
    assert "authentication failed" in data["node000"]["error"]
    assert data["node004"]["status"] == "ok"


def test_no_matching_nodes_is_exit_4(fleet_inv: Path) -> None:
    r = run_cli("exec", "zzz-*", "--", "true", inventory=fleet_inv)
    assert r.rc == 4 and "no nodes match" in r.err


def test_jump_host(tmp_path: Path, ssh_fleet) -> None:
    inv = write_fleet_inventory(tmp_path / "inv", ssh_fleet)
    site = inv / "sites" / "lab-b.yaml"
    hop = ssh_fleet.nodes[0].port
    # node004 reached only through node000 (the node's own address is loopback too,
    # so the test proves the path by the jump host's traffic, below)
    text = site.read_text().replace(
        f"port: {ssh_fleet.nodes[4].port}\n",
        f"port: {ssh_fleet.nodes[4].port}\n    jump: 127.0.0.1:{hop}\n",
        1,
    )
    site.write_text(text)
    r = run_cli("exec", "lab-b/node004", "-o", "json", "--", "echo $SSH_CONNECTION", inventory=inv)
    assert r.rc == 0, r
    # sshd on node004 sees the connection coming from the jump host's forwarding, not from us directly
    conn = json.loads(r.out)[0]["stdout"].split()
    assert conn[2] == "127.0.0.1" and conn[3] == str(ssh_fleet.nodes[4].port)
    r = run_cli("node", "trust", "lab-b/node004", "-o", "json", inventory=inv)
    assert r.rc == 0 and json.loads(r.out)[0]["verdict"] == "pinned"
    # a jump host that is down makes the node unreachable, with the jump host named
    site.write_text(text.replace(f"jump: 127.0.0.1:{hop}", f"jump: 127.0.0.1:{free_port()}"))
    r = run_cli("exec", "lab-b/node004", "-o", "json", "--", "true", inventory=inv)
    assert r.rc == 4 and "jump host 127.0.0.1:" in json.loads(r.out)[0]["error"]


def test_ctrl_c_stops_the_run_with_130(fleet_inv: Path) -> None:
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env, sigint_default

    arg = sleep_arg()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridctl", "-i", str(fleet_inv), "exec", "all", "--", f"sleep {arg}"],
        preexec_fn=sigint_default,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )
    time.sleep(2.0)  # connected and running
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert time.monotonic() - start < 10
    assert wait_until_gone(arg) == [], "Ctrl-C left the command running on the nodes"


def test_killed_gridctl_leaves_nothing_running(fleet_inv: Path) -> None:
    # gridctl gets no chance to clean up (SIGKILL): the connection drops, and that is enough
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    arg = sleep_arg()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridctl", "-i", str(fleet_inv), "exec", "lab-b", "--", f"sleep {arg}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
        cwd=REPO,
    )
    deadline = time.monotonic() + 20
    while len(sleepers(arg)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(sleepers(arg)) == 4  # running on every node of lab-b
    proc.kill()
    proc.wait(timeout=10)
    assert wait_until_gone(arg) == [], "the dropped connection left the command running"
