"""Real OpenSSH servers on loopback for the fleet tests and benchmarks.

Each node is its own ``sshd -D`` with its own host key, on a free port of
127.0.0.1, logging in the current user with a test client key. A node's
environment (``SetEnv``) puts the stand-in GPU tools first on PATH and picks
their state. Also here: a "frozen" node (accepts TCP, never speaks SSH) and a
"black hole" (a full listen backlog: SYNs are dropped, connect hangs).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
FAKE_GPU_BIN = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


@dataclass
class SshdNode:
    name: str
    workdir: Path
    authorized_keys: Path
    state: str = "healthy"
    port: int = 0
    host_key: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            keygen(self.host_key)

    def config(self) -> str:
        user = getpass.getuser()
        path = f"{FAKE_GPU_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return "\n".join(
            [
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {self.host_key}",
                f"PidFile {self.workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password" if user == "root" else "",
                f"AllowUsers {user}",
                "StrictModes no",
                "UsePAM no",
                "UseDNS no",
                "MaxStartups 500:30:1000",
                "MaxSessions 50",
                # SHLVL=1: bash skips ~/.bashrc for ssh commands (root's runs pyenv init, slow and
                # lock-prone with many nodes); sshd honours only the first SetEnv line
                f"SetEnv GRIDCTL_FAKE_GPU_STATE={self.state} PATH={path} SHLVL=1",
                "LogLevel ERROR",
                "",
            ]
        )

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        cfg = self.workdir / "sshd_config"
        cfg.write_text(self.config())
        Path("/run/sshd").mkdir(parents=True, exist_ok=True) if os.geteuid() == 0 else None
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "sshd.log", "ab"),  # noqa: SIM115
        )
        wait_for_port(self.port, proc=self.proc, log=self.workdir / "sshd.log")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart_with_new_host_key(self) -> None:
        self.stop()
        self.host_key.unlink()
        self.host_key.with_suffix(".pub").unlink()
        keygen(self.host_key)
        self.start()


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"sshd exited with {proc.returncode}: {detail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class FrozenServer:
    """Accepts TCP connections and never says anything (a hung sshd)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


class BlackHole:
    """A listener whose backlog is full: further SYNs are dropped, connect() hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = int(self.sock.getsockname()[1])
        self.fillers: list[socket.socket] = []
        for _ in range(4):  # fill the accept queue; never accept
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", self.port))
            self.fillers.append(s)
        time.sleep(0.05)

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()


@dataclass
class Fleet:
    """N sshd nodes plus a client key; writes an inventory that names them."""

    root: Path
    states: list[str]
    nodes: list[SshdNode] = field(default_factory=list)
    client_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.client_key = self.root / "client_ed25519"
        if not self.client_key.exists():
            keygen(self.client_key)
        auth = self.root / "authorized_keys"
        auth.write_text(self.client_key.with_suffix(".pub").read_text())
        for i, state in enumerate(self.states):
            self.nodes.append(SshdNode(f"node{i:03d}", self.root / f"node{i:03d}", auth, state=state))

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def known_hosts_lines(self) -> str:
        lines = []
        for n in self.nodes:
            kind, b64 = n.host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"[127.0.0.1]:{n.port} {kind} {b64}\n")
        return "".join(lines)
