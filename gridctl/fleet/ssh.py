"""SSH sessions to nodes (paramiko), with a hard deadline on every step.

One ``Session`` per node per run, reused for every command of that run. The
deadline is absolute (``time.monotonic()``): connecting, the banner, the key
exchange, authentication and each command all get only what is left of it, so
a node that accepts TCP and never speaks SSH, one that drops packets, and a
command that hangs all end on time. Failures to reach a node are data
(``Unreachable`` with a kind and a sentence), never a crash of the run.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridctl.core.inventory.model import Node
from gridctl.fleet.dial import Dialer
from gridctl.fleet.hostkeys import KnownHosts, fingerprint, host_entry
from gridctl.fleet.libs import load_paramiko

if TYPE_CHECKING:
    import paramiko


def _quiet_paramiko() -> None:
    """paramiko logs every failed handshake from its own thread; a node's failure
    is reported once, in its result, not as a stray line on stderr."""
    import logging

    log = logging.getLogger("paramiko")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    log.propagate = False


MAX_STREAM_BYTES = 64 * 1024 * 1024  # per stream and command: more is cut, and said so
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


class Unreachable(Exception):
    """The node could not be reached or trusted: data for the node's result."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # connect | timeout | hostkey-unknown | hostkey-changed | auth | ssh
        self.message = message


@dataclass(frozen=True)
class CommandResult:
    rc: int | None  # None when the command did not finish (timed out, channel lost)
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    truncated: bool = False


@dataclass
class Identities:
    """Private keys for authentication, loaded once per run and shared by all nodes."""

    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _cache: dict[str, paramiko.PKey | Exception] = field(default_factory=dict)
    _agent: list[paramiko.PKey] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def for_node(self, node: Node) -> list[tuple[str, paramiko.PKey]]:
        """(label, key) to try in order; raises Unreachable when a named key can't be used."""
        if node.key:
            key = self._load(node.key)
            if isinstance(key, Exception):
                raise Unreachable("auth", f"cannot use key {node.key}: {key}")
            return [(node.key, key)]
        keys: list[tuple[str, paramiko.PKey]] = [("agent", k) for k in self._agent_keys()]
        for path in DEFAULT_IDENTITIES:
            if Path(path).expanduser().exists():
                key = self._load(path)
                if not isinstance(key, Exception):
                    keys.append((path, key))
        return keys

    def _load(self, path: str) -> paramiko.PKey | Exception:
        import paramiko

        with self._lock:
            if path not in self._cache:
                try:
                    self._cache[path] = paramiko.PKey.from_path(Path(path).expanduser())
                except paramiko.PasswordRequiredException:
                    self._cache[path] = ValueError("it is passphrase-protected; add it to ssh-agent")
                except (OSError, paramiko.SSHException, ValueError) as exc:
                    self._cache[path] = exc
            return self._cache[path]

    def _agent_keys(self) -> list[paramiko.PKey]:
        import paramiko

        with self._lock:
            if self._agent is None:
                self._agent = []
                if self.environ.get("SSH_AUTH_SOCK"):
                    with contextlib.suppress(paramiko.SSHException, OSError):
                        self._agent = list(paramiko.Agent().get_keys())
            return self._agent


@dataclass(frozen=True)
class SshOptions:
    known_hosts: KnownHosts
    identities: Identities
    accept_new: bool = False
    # called with (node, key) when --accept-new meets an unknown key; pins it
    on_new_key: Callable[[Node, paramiko.PKey], None] | None = None
    # connects started before the run was ready (see dial.py); taken by connect_socket
    dialer: Dialer | None = None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Unreachable("timeout", "timed out")
    return left


class Session:
    """An authenticated SSH connection to one node."""

    def __init__(
        self, node: Node, transport: paramiko.Transport, sock: socket.socket, via: Session | None = None
    ) -> None:
        self.node = node
        self.transport = transport
        self.sock = sock
        self.via = via  # the jump host's session, closed with this one

    def run(self, command: str, deadline: float, pty: bool = False) -> CommandResult:
        """Run ``command`` through the remote shell; both streams drained as they come.

        With ``pty`` the command gets a terminal (as ``ssh -t``): its stdout and
        stderr arrive merged, as stdout, with the terminal's line ends made ``\\n``;
        closing the channel hangs the terminal up, which ends the command's session."""
        import paramiko

        start = time.monotonic()
        try:
            channel = self._start(command, deadline, pty)
        except Unreachable:
            return CommandResult(None, "", "", time.monotonic() - start, timed_out=True)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            return CommandResult(None, "", f"cannot start command: {exc}", time.monotonic() - start)
        try:
            streams = _drain(channel, deadline)
            rc, timed_out = _exit_status(channel, deadline, streams.timed_out)
        finally:
            channel.close()
        stdout = streams.out.decode("utf-8", "replace")
        return CommandResult(
            rc if rc is None or rc >= 0 else None,
            stdout.replace("\r\n", "\n") if pty else stdout,
            streams.err.decode("utf-8", "replace"),
            time.monotonic() - start,
            timed_out=timed_out,
            truncated=streams.truncated,
        )

    def _start(self, command: str, deadline: float, pty: bool) -> paramiko.Channel:
        """A channel running ``command`` (on a terminal with ``pty``)."""
        channel = self.transport.open_session(timeout=_left(deadline))
        if pty:
            channel.get_pty(term=os.environ.get("TERM", "xterm"), width=200, height=50)
        channel.exec_command(command)
        return channel

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.close()
        if self.via is not None:
            self.via.close()
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class _Streams:
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    truncated: bool = False  # a stream passed MAX_STREAM_BYTES: the rest was dropped
    timed_out: bool = False


def _drain(channel: paramiko.Channel, deadline: float) -> _Streams:
    """Both streams of ``channel`` as they come, until it ends or ``deadline`` passes."""
    streams = _Streams()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            streams.timed_out = True
            return streams
        select.select([channel], [], [], min(left, 0.5))
        while channel.recv_ready():
            _keep(streams, streams.out, channel.recv(1 << 16))
        while channel.recv_stderr_ready():
            _keep(streams, streams.err, channel.recv_stderr(1 << 16))
        if (channel.eof_received or channel.closed) and not (
            channel.recv_ready() or channel.recv_stderr_ready()
        ):
            return streams


def _keep(streams: _Streams, into: bytearray, chunk: bytes) -> None:
    if len(into) < MAX_STREAM_BYTES:
        into += chunk
    else:
        streams.truncated = True


def _exit_status(channel: paramiko.Channel, deadline: float, timed_out: bool) -> tuple[int | None, bool]:
    """The command's exit status (None when unknown) and whether it timed out: the status
    may follow the end of the streams, by at most 5 s (and never past ``deadline``)."""
    if timed_out:
        return None, True
    if channel.status_event.wait(max(0.0, min(deadline - time.monotonic(), 5))):
        return channel.exit_status, False
    return None, True


def connect_socket(host: str, port: int, deadline: float, dialer: Dialer | None = None) -> socket.socket:
    """A TCP connection to ``host:port`` by the deadline: the one ``dialer`` started
    early, if it did, else a new one."""
    early = dialer.take(host, port) if dialer is not None else None
    try:
        if early is None:
            return socket.create_connection((host, port), timeout=_left(deadline))
        if isinstance(early, OSError):
            raise early
        return _finish_connect(early, deadline)
    except ConnectionRefusedError:
        raise Unreachable("connect", f"connection refused by {host}:{port} (is sshd running?)") from None
    except socket.gaierror as exc:
        raise Unreachable("connect", f"cannot resolve {host}: {exc.strerror}") from None
    except TimeoutError:
        raise Unreachable("timeout", f"no answer from {host}:{port} (connect timed out)") from None
    except OSError as exc:
        raise Unreachable("connect", f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None


def _finish_connect(sock: socket.socket, deadline: float) -> socket.socket:
    """Wait, until the deadline, for a non-blocking connect to end; raise what
    ``socket.create_connection`` would have raised (TimeoutError, ConnectionRefusedError...)."""
    try:
        poller = select.poll()  # not select.select: file descriptors may exceed FD_SETSIZE
        poller.register(sock, select.POLLOUT)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError("timed out")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))  # OSError picks the subclass from errno
        sock.setblocking(True)
        sock.settimeout(_left(deadline))  # as create_connection leaves it
        return sock
    except BaseException:
        sock.close()
        raise


def handshake(sock: Any, node: Node, known: KnownHosts, deadline: float) -> paramiko.Transport:
    """SSH banner and key exchange, asking for a key type that is pinned when one is."""
    load_paramiko()
    import paramiko

    _quiet_paramiko()
    transport = paramiko.Transport(sock)
    pinned = known.types_for(node.host, node.port)
    if pinned:
        opts = transport.get_security_options()
        offered = [t for t in opts.key_types if t in pinned]
        if offered:
            opts.key_types = offered
    left = _left(deadline)
    transport.banner_timeout = left
    transport.handshake_timeout = left
    try:
        transport.start_client(timeout=left)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        if time.monotonic() >= deadline:
            raise Unreachable("timeout", f"no SSH handshake from {node.host}:{node.port} in time") from None
        raise Unreachable("ssh", f"SSH handshake with {node.host}:{node.port} failed: {exc}") from None
    if not (transport.is_active() and getattr(transport, "initial_kex_done", True)):
        # start_client gives up at its timeout without raising
        transport.close()
        raise Unreachable("timeout", f"no SSH handshake from {node.host}:{node.port} in time (no banner?)")
    return transport


def verify_host_key(transport: paramiko.Transport, node: Node, opts: SshOptions) -> None:
    key = transport.get_remote_server_key()
    check = opts.known_hosts.check(node.host, node.port, key)
    where = host_entry(node.host, node.port)
    if check.verdict == "known":
        return
    if check.verdict == "changed":
        raise Unreachable(
            "hostkey-changed",
            f"HOST KEY CHANGED for {where}: known_hosts pins {', '.join(check.pinned)}, the node presented "
            f"{key.get_name()} {check.presented}. Someone may be intercepting the connection, or the node "
            f"was reinstalled. Refusing to connect; if the change is expected, re-pin it with "
            f"`gridctl node trust {node.address} --replace`",
        )
    if opts.accept_new and opts.on_new_key is not None:
        opts.on_new_key(node, key)
        return
    raise Unreachable(
        "hostkey-unknown",
        f"unknown host key for {where}: {key.get_name()} {check.presented}; "
        f"check it and pin it with `gridctl node trust {node.address}` (or run with --accept-new)",
    )


def authenticate(transport: paramiko.Transport, node: Node, opts: SshOptions, deadline: float) -> None:
    import paramiko

    user = node.user or getpass.getuser()
    keys = opts.identities.for_node(node)
    if not keys:
        raise Unreachable(
            "auth",
            f"no SSH key to offer as {user}: set `key:` in the inventory, or load one into ssh-agent",
        )
    tried = []
    for label, key in keys:
        transport.auth_timeout = _left(deadline)
        try:
            transport.auth_publickey(user, key)
            return
        except paramiko.AuthenticationException:
            tried.append(f"{label} ({fingerprint(key)})")
        except paramiko.SSHException as exc:
            if time.monotonic() >= deadline:
                raise Unreachable("timeout", "timed out during authentication") from None
            raise Unreachable("ssh", f"authentication failed: {exc}") from None
    raise Unreachable("auth", f"authentication failed as {user} with {', '.join(tried)}")


def open_session(
    node: Node, opts: SshOptions, deadline: float, register: Callable[[socket.socket], None]
) -> Session:
    """Connect (through the node's jump host, if any), check the host key,
    authenticate. ``register`` gets the socket so a watchdog can close it if
    anything overruns the deadline."""
    link, sock, jump = open_link(node, opts, deadline, register)
    try:
        transport = handshake(link, node, opts.known_hosts, deadline)
    except BaseException:
        if jump is not None:
            jump.close()
        raise
    try:
        verify_host_key(transport, node, opts)
        authenticate(transport, node, opts, deadline)
    except BaseException:
        transport.close()
        if jump is not None:
            jump.close()
        raise
    return Session(node, transport, sock, via=jump)


def open_link(
    node: Node, opts: SshOptions, deadline: float, register: Callable[[socket.socket], None]
) -> tuple[Any, socket.socket, Session | None]:
    """A byte stream to the node's sshd: a TCP socket, or a direct-tcpip channel
    through its jump host. Returns (stream, the TCP socket under it, jump session)."""
    import paramiko

    if not node.jump:
        sock = connect_socket(node.host, node.port, deadline, opts.dialer)
        register(sock)
        return sock, sock, None
    jump = _open_jump(node, opts, deadline, register)
    try:
        channel = jump.transport.open_channel(
            "direct-tcpip", (node.host, node.port), ("127.0.0.1", 0), timeout=_left(deadline)
        )
    except (paramiko.SSHException, OSError) as exc:
        jump.close()
        raise Unreachable(
            "connect", f"jump host {node.jump} cannot reach {node.host}:{node.port}: {exc}"
        ) from None
    return channel, jump.sock, jump


def _open_jump(
    node: Node, opts: SshOptions, deadline: float, register: Callable[[socket.socket], None]
) -> Session:
    from gridctl.core.inventory.checks import parse_jump

    assert node.jump is not None
    user, host, port = parse_jump(node.jump)
    hop = replace(node, name=f"{node.name}-jump", host=host, port=port, user=user or node.user, jump=None)
    try:
        return open_session(hop, opts, deadline, register)
    except Unreachable as exc:
        raise Unreachable(exc.kind, f"jump host {node.jump}: {exc.message}") from None


def ssh_options_for(
    root: Path, accept_new: bool, environ: dict[str, str], dialer: Dialer | None = None
) -> SshOptions:
    """Options for a run against the inventory at ``root``: its known_hosts, the
    operator's keys, with ``accept_new`` a callback that pins unknown keys, and
    the connects ``dialer`` started early."""
    from gridctl.fleet.hostkeys import known_hosts_path, pin_keys

    def pin(node: Node, key: paramiko.PKey) -> None:
        pin_keys(root, [(node.host, node.port, key)])

    return SshOptions(
        known_hosts=KnownHosts(known_hosts_path(root)),
        identities=Identities(environ=environ),
        accept_new=accept_new,
        on_new_key=pin if accept_new else None,
        dialer=dialer,
    )
