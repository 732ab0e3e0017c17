"""Connects started early (fleet/dial.py): the sessions that use them check host keys,
keep their deadline and fail with the same messages as a plain connect."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

from gridctl.core.inventory.model import Node
from gridctl.fleet.dial import Dialer, dial_early
from gridctl.fleet.execute import run_exec
from gridctl.fleet.hostkeys import KnownHosts
from gridctl.fleet.ssh import Identities, SshOptions, ssh_options_for
from tests.fleet.sshd import BlackHole, Fleet, FrozenServer, free_port


def _node(name: str, port: int, fleet: Fleet, host: str = "127.0.0.1") -> Node:
    return Node(name, "lab", host, port, None, str(fleet.client_key), None)


def _known_hosts(tmp_path: Path, fleet: Fleet, lines: str | None = None) -> KnownHosts:
    path = tmp_path / "known_hosts"
    path.write_text(fleet.known_hosts_lines() if lines is None else lines)
    return KnownHosts(path)


def _opts(known: KnownHosts, dialer: Dialer) -> SshOptions:
    return SshOptions(known_hosts=known, identities=Identities(environ={}), dialer=dialer)


def test_dialled_sockets_carry_the_sessions_and_the_same_failures(
    tmp_path: Path, ssh_fleet: Fleet, frozen: FrozenServer, blackhole: BlackHole
) -> None:
    good = [_node(n.name, n.port, ssh_fleet) for n in ssh_fleet.nodes[:2]]
    bad = [
        _node("refused", free_port(), ssh_fleet),
        _node("frozen", frozen.port, ssh_fleet),
        _node("hole", blackhole.port, ssh_fleet),
    ]
    dialer = dial_early(good + bad)
    assert len(dialer) == 5  # all started before the run, refused one included
    results = {
        r.node.name: r
        for r in run_exec(good + bad, "echo ok", _opts(_known_hosts(tmp_path, ssh_fleet), dialer), 8, 2.0)
    }
    assert len(dialer) == 0  # every one was handed to its node
    assert all(results[n.name].status == "ok" and results[n.name].stdout == "ok\n" for n in good)
    assert "connection refused by 127.0.0.1" in (results["refused"].error or "")
    assert "no SSH handshake" in (results["frozen"].error or "")
    assert results["hole"].status == "unreachable"
    # the hard deadline covers the wait for the connect and the handshake (plus the watchdog's grace)
    assert results["frozen"].seconds < 2.0 + 1.5 and results["hole"].seconds < 2.0 + 1.5


def test_dialled_sockets_still_refuse_unknown_and_changed_host_keys(tmp_path: Path, ssh_fleet: Fleet) -> None:
    a, b, c = ssh_fleet.nodes[:3]
    nodes = [_node(n.name, n.port, ssh_fleet) for n in (a, b, c)]
    pinned = ssh_fleet.known_hosts_lines().splitlines(keepends=True)
    # a: not pinned; b: pinned with another node's key (as if reinstalled); c: pinned right
    b_wrong = pinned[3].replace(f"[127.0.0.1]:{ssh_fleet.nodes[3].port}", f"[127.0.0.1]:{b.port}")
    known = _known_hosts(tmp_path, ssh_fleet, b_wrong + pinned[2])
    dialer = dial_early(nodes)
    results = {r.node.name: r for r in run_exec(nodes, "true", _opts(known, dialer), 8, 10.0)}
    assert results[a.name].status == "unreachable"
    assert "unknown host key" in (results[a.name].error or "")
    assert results[b.name].status == "unreachable"
    assert "HOST KEY CHANGED" in (results[b.name].error or "")
    assert results[c.name].status == "ok"
    assert (tmp_path / "known_hosts").read_text() == b_wrong + pinned[2]  # nothing pinned


def test_only_literal_addresses_reached_directly_are_dialled(ssh_fleet: Fleet) -> None:
    n0, n1 = ssh_fleet.nodes[:2]
    named = _node("named", n0.port, ssh_fleet, host="localhost")  # a DNS lookup: left to its turn
    jumped = replace(_node("jumped", n1.port, ssh_fleet), jump=f"127.0.0.1:{n0.port}")
    direct = _node("direct", n1.port, ssh_fleet)
    dialer = dial_early([named, jumped, direct, direct])
    assert len(dialer) == 1
    assert dialer.take("localhost", n0.port) is None
    sock = dialer.take("127.0.0.1", n1.port)
    assert isinstance(sock, socket.socket)
    assert dialer.take("127.0.0.1", n1.port) is None  # handed over once
    sock.close()


def test_close_closes_the_sockets_nobody_took(ssh_fleet: Fleet) -> None:
    nodes = [_node(n.name, n.port, ssh_fleet) for n in ssh_fleet.nodes[:3]]
    dialer = dial_early(nodes)
    started = [dialer._started[(n.host, n.port)] for n in nodes]
    dialer.close()
    assert len(dialer) == 0
    assert all(isinstance(s, socket.socket) and s.fileno() == -1 for s in started)


def test_ssh_options_for_hands_the_dialer_to_connect(tmp_path: Path, ssh_fleet: Fleet) -> None:
    (tmp_path / "known_hosts").write_text(ssh_fleet.known_hosts_lines())
    node = _node(ssh_fleet.nodes[0].name, ssh_fleet.nodes[0].port, ssh_fleet)
    dialer = dial_early([node])
    opts = ssh_options_for(tmp_path, False, {}, dialer)
    [result] = run_exec([node], "echo $GRIDCTL_FAKE_GPU_STATE", opts, 1, 10.0)
    assert result.status == "ok" and result.stdout == "healthy-h100x8\n"
    assert len(dialer) == 0
