"""Pinned SSH host keys in ``inventory/known_hosts`` (OpenSSH format).

Nothing is accepted silently: an unknown key fails the node unless the
operator pins it (``gridctl node trust``) or asked for ``--accept-new``; a
changed key always fails, loudly.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gridctl.fleet.libs import load_paramiko
from gridctl.inventory.load import KNOWN_HOSTS

if TYPE_CHECKING:
    import paramiko


def known_hosts_path(root: Path) -> Path:
    return root / KNOWN_HOSTS


def host_entry(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: ``host`` or ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class KeyCheck:
    verdict: str  # "known" | "unknown" | "changed"
    presented: str  # fingerprint of the key the node presented
    pinned: tuple[str, ...] = ()  # fingerprints known_hosts holds for the host


class KnownHosts:
    """A read-only view of known_hosts, loaded once per run."""

    def __init__(self, path: Path) -> None:
        load_paramiko()  # the first import of paramiko in a run: see libs
        import paramiko

        self.path = path
        self._keys = paramiko.HostKeys()
        if path.exists():
            try:
                self._keys.load(str(path))
            except (OSError, ValueError) as exc:  # a corrupt line: say where, do not guess
                from gridctl.core.errors import GridctlError

                raise GridctlError(f"cannot read {path}: {exc}", hint="fix or remove the bad line") from None

    @classmethod
    def empty(cls) -> KnownHosts:
        """No pins: for fetching whatever key a node prefers."""
        return cls(Path("/nonexistent/known_hosts"))

    def types_for(self, host: str, port: int) -> list[str]:
        """Key types pinned for the host, so the handshake asks for one of them."""
        entry = self._keys.lookup(host_entry(host, port))
        return list(entry.keys()) if entry else []

    def check(self, host: str, port: int, key: paramiko.PKey) -> KeyCheck:
        presented = fingerprint(key)
        entry = self._keys.lookup(host_entry(host, port))
        if not entry:
            return KeyCheck("unknown", presented)
        pinned = tuple(fingerprint(k) for k in entry.values())
        known = entry.get(key.get_name())
        if known is not None and known.asbytes() == key.asbytes():
            return KeyCheck("known", presented, pinned)
        return KeyCheck("changed", presented, pinned)


def known_hosts_line(host: str, port: int, key: paramiko.PKey) -> str:
    return f"{host_entry(host, port)} {key.get_name()} {key.get_base64()}\n"


def pin_keys(root: Path, pins: list[tuple[str, int, paramiko.PKey]], replace: bool = False) -> int:
    """Add host keys to known_hosts under the inventory lock; returns how many were added.

    With ``replace``, existing lines for those hosts are dropped first (a key
    the operator confirmed has changed).
    """
    from gridctl.inventory.atomic import inventory_lock, write_atomic

    path = known_hosts_path(root)
    with inventory_lock(root):
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        if replace:
            names = {host_entry(h, p) for h, p, _ in pins}
            lines = [ln for ln in lines if ln.startswith("#") or ln.split(" ", 1)[0] not in names]
        added = 0
        for host, port, key in pins:
            line = known_hosts_line(host, port, key)
            if line not in lines:
                lines.append(line)
                added += 1
        if added or replace:
            write_atomic(path, "".join(lines))
        return added
