"""``gridctl node trust``: fetch nodes' host keys, show fingerprints, pin them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gridctl.core.inventory.model import Node
from gridctl.fleet.fanout import Register, run_on_nodes
from gridctl.fleet.hostkeys import KnownHosts, fingerprint
from gridctl.fleet.ssh import SshOptions, handshake, open_link

if TYPE_CHECKING:
    import paramiko


@dataclass(frozen=True)
class HostKeyReport:
    node: Node
    verdict: str  # new | pinned | changed | unreachable
    key_type: str | None
    fingerprint: str | None
    pinned: tuple[str, ...]
    error: str | None
    key: paramiko.PKey | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.name,
            "site": self.node.site,
            "host": self.node.host,
            "port": self.node.port,
            "verdict": self.verdict,
            "key_type": self.key_type,
            "fingerprint": self.fingerprint,
            "pinned": list(self.pinned),
            "error": self.error,
        }


def fetch_host_keys(
    nodes: Sequence[Node], opts: SshOptions, forks: int, timeout: float
) -> list[HostKeyReport]:
    """Each node's host key (key exchange only, no login; through its jump host
    if it has one), compared with known_hosts."""
    known = opts.known_hosts

    def task(node: Node, deadline: float, register: Register) -> paramiko.PKey:
        link, _sock, jump = open_link(node, opts, deadline, register)
        try:
            # Ask for the node's preferred key type, whatever is pinned: a changed
            # key must show up as changed, not as a failed negotiation.
            transport = handshake(link, node, KnownHosts.empty(), deadline)
            try:
                return transport.get_remote_server_key()
            finally:
                transport.close()
        finally:
            if jump is not None:
                jump.close()

    reports = []
    for r in run_on_nodes(nodes, task, forks=forks, timeout=timeout):
        if r.value is None:
            message = r.unreachable.message if r.unreachable else "unreachable"
            reports.append(HostKeyReport(r.node, "unreachable", None, None, (), message))
            continue
        check = known.check(r.node.host, r.node.port, r.value)
        verdict = {"known": "pinned", "unknown": "new", "changed": "changed"}[check.verdict]
        reports.append(
            HostKeyReport(
                r.node, verdict, r.value.get_name(), fingerprint(r.value), check.pinned, None, r.value
            )
        )
    return reports
