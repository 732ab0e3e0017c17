"""``gridctl exec``: one command on many nodes, every node reported."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gridctl.core.inventory.model import Node
from gridctl.fleet.fanout import NodeResult, run_on_nodes, session_task
from gridctl.fleet.ssh import CommandResult, Session, SshOptions


def build_remote_command(argv: Sequence[str]) -> str:
    """One argument is a shell command line, as with ``ssh host 'a | b'``; several
    arguments are quoted one by one, so each reaches the remote side as one word."""
    if len(argv) == 1:
        return argv[0]
    return shlex.join(argv)


# Runs "$1" through the user's shell in a process group of its own (setsid), stdin
# from /dev/null, stdout and stderr as they are. A watcher reads the channel's stdin,
# which gridctl never writes nor closes: it ends only when the channel does (the
# deadline passed, Ctrl-C, gridctl killed, the connection lost), and then the
# watcher sends TERM to the whole group, and KILL two seconds later. sshd alone
# leaves a command without a terminal running when its channel closes.
# POSIX sh, no single quote (it is quoted whole), nothing a login shell expands.
GROUP_WRAPPER = """\
exec 3<&0 </dev/null
if command -v setsid >/dev/null 2>&1; then
  setsid "${SHELL:-/bin/sh}" -c "$1" 3<&- &
  group=-$!
else
  "${SHELL:-/bin/sh}" -c "$1" 3<&- &
  group=$!
fi
pid=$!
(
  while read -r _ <&3; do :; done
  kill -TERM $group && sleep 2 && kill -0 $group && kill -KILL $group
) >/dev/null 2>&1 &
watcher=$!
exec 3<&-
wait $pid
rc=$?
kill $watcher 2>/dev/null
exit $rc
"""


def build_group_command(command: str) -> str:
    """``command`` (a shell command line) wrapped so that it runs in its own process
    group on the node and that group is killed when the SSH channel closes."""
    return f"exec /bin/sh -c {shlex.quote(GROUP_WRAPPER)} gridctl-exec {shlex.quote(command)}"


@dataclass(frozen=True)
class ExecResult:
    node: Node
    status: str  # ok | failed | unreachable
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    error: str | None  # why it failed or could not be reached

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.name,
            "site": self.node.site,
            "status": self.status,
            "rc": self.rc,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


def _to_exec(result: NodeResult[CommandResult]) -> ExecResult:
    if result.unreachable is not None:
        u = result.unreachable
        return ExecResult(result.node, "unreachable", None, "", "", result.seconds, u.message)
    cmd = result.value
    assert cmd is not None
    if cmd.timed_out:
        error: str | None = f"command timed out after {result.seconds:.1f}s"
    elif cmd.rc is None:
        error = "command ended without an exit status"
    elif cmd.rc != 0:
        error = f"exit status {cmd.rc}"
    else:
        error = None
    if cmd.truncated:
        error = (error + "; " if error else "") + "output truncated"
    status = "ok" if cmd.rc == 0 and not cmd.timed_out else "failed"
    return ExecResult(result.node, status, cmd.rc, cmd.stdout, cmd.stderr, result.seconds, error)


def run_exec(
    nodes: Sequence[Node],
    command: str,
    opts: SshOptions,
    forks: int,
    timeout: float,
    on_done: Callable[[ExecResult], None] | None = None,
    tty: bool = False,
) -> list[ExecResult]:
    """``command`` on every node. Without ``tty`` it runs in a process group of its
    own, ended with the channel; with ``tty`` it gets a terminal, whose hang-up
    (the channel closing) ends it."""
    remote = command if tty else build_group_command(command)

    def work(session: Session, deadline: float) -> CommandResult:
        return session.run(remote, deadline, pty=tty)

    results = run_on_nodes(
        nodes,
        session_task(opts, work),
        forks=forks,
        timeout=timeout,
        on_done=(lambda r: on_done(_to_exec(r))) if on_done else None,
    )
    return [_to_exec(r) for r in results]
