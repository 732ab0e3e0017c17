"""TCP connections to the first nodes of a run, started before gridctl is ready for them.

Between knowing its target nodes and working on the first of them, a run
still imports paramiko and the fleet code, reads known_hosts and loads the
keys: about 0.1 s of one CPU during which no node is contacted. ``Dialer``
starts non-blocking connects to the nodes the fan-out will begin with, right
when they are known, so meanwhile each node's sshd accepts, forks its
per-connection process and sends its banner (on a real fleet: the TCP round
trip and the node's own start-up happen during ours).

A dialled socket is handed over when its node's turn comes
(``connect_socket`` in ssh.py, through ``SshOptions.dialer``); finishing the
connect is waited for under that node's deadline and fails with the same
messages as a plain connect. Only literal IP addresses are dialled early: a
name's DNS lookup could block, and is left to the node's turn, as are nodes
behind a jump host. Sockets never handed over are closed by ``close``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable

from gridctl.core.inventory.model import Node


class Dialer:
    """Connects started early, by (host, port); each handed over at most once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[tuple[str, int], socket.socket | OSError] = {}

    def dial(self, nodes: Iterable[Node]) -> None:
        """Start a non-blocking connect to every node reached directly at a literal address."""
        for node in nodes:
            key = (node.host, node.port)
            family = _family(node.host)
            if node.jump or family is None or key in self._started:
                continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(key)
            except BlockingIOError:  # in progress: the usual case
                pass
            except OSError as exc:  # refused at once (loopback), unreachable network...
                sock.close()
                self._started[key] = exc
                continue
            self._started[key] = sock

    def take(self, host: str, port: int) -> socket.socket | OSError | None:
        """The connect started for ``host:port`` (a socket, maybe still connecting, or the
        error it already met), or None when none was started or it was taken already."""
        with self._lock:
            return self._started.pop((host, port), None)

    def close(self) -> None:
        """Close the sockets nobody took (their nodes were never worked on)."""
        with self._lock:
            left = list(self._started.values())
            self._started.clear()
        for sock in left:
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.close()

    def __len__(self) -> int:
        return len(self._started)


def dial_early(nodes: Iterable[Node]) -> Dialer:
    """A ``Dialer`` with connects started to ``nodes`` (those the fan-out begins with)."""
    dialer = Dialer()
    dialer.dial(nodes)
    return dialer


def _family(host: str) -> socket.AddressFamily | None:
    """The address family of a literal IP address; None for a name (or a scoped IPv6 address)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None
