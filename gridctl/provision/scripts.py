"""The remote shell scripts of a provisioning run. Pure builders: text in, text out.

Every path and value is quoted with ``shlex.quote``; file contents travel
base64-encoded inside the command (``printf %s '<base64>' | base64 -d``), so
no byte of a file is ever read by the shell. An upload is atomic per file: the
new content goes to a temp file in the destination's own directory, gets its
mode (and owner), and is then renamed over the destination. The previous
version is kept under ``<prefix>/var/lib/gridctl/provision/backup/`` for the
rollback.
"""

from __future__ import annotations

import base64
import posixpath
import shlex
from collections.abc import Sequence

from gridctl.provision.context import remote_path
from gridctl.provision.facts import MARK
from gridctl.provision.plan import FileChange

STATE_DIR = "var/lib/gridctl/provision"
SCRIPT_LIMIT = 60_000  # characters per command: well under what sshd takes in one request
CHUNK = 45_000  # base64 characters per printf
BACKED_UP = MARK + "backed-up"  # printed between the backups and the renames
COMMITTED = MARK + "committed"

q = shlex.quote


def backup_path(prefix: str, dest: str) -> str:
    rel = posixpath.relpath(dest, prefix) if prefix != "/" else dest.lstrip("/")
    return remote_path(prefix, f"{STATE_DIR}/backup/{rel}")


def temp_path(dest: str, token: str) -> str:
    head, tail = posixpath.split(dest)
    return posixpath.join(head, f".{tail}.gridctl-{token}")


def build_upload_scripts(
    changes: Sequence[FileChange], prefix: str, owner: str | None, token: str
) -> list[str]:
    """Scripts to run in order: staging (temp files) then one commit (backups, renames).

    Small files fit in one script. The commit prints ``COMMITTED`` as its last act.
    """
    units: list[list[str]] = []
    for c in changes:
        tmp = temp_path(c.file.dest, token)
        data = base64.b64encode(c.file.content).decode("ascii")
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [""]
        units.append([f"mkdir -p {q(posixpath.dirname(c.file.dest))}"])
        for i, chunk in enumerate(chunks):
            redirect = ">" if i == 0 else ">>"
            units.append([f"(umask 077; printf %s {q(chunk)} | base64 -d {redirect} {q(tmp)})"])
        unit = [f"chmod {c.file.mode:04o} {q(tmp)}"]
        if owner:
            unit.append(f"chown {q(owner)} {q(tmp)}")
        units.append(unit)
    commit = []
    for c in changes:
        dest, bak = c.file.dest, backup_path(prefix, c.file.dest)
        commit.append(f"(umask 077; mkdir -p {q(posixpath.dirname(bak))})")
        if c.action == "update":
            commit.append(f"cp -p {q(dest)} {q(bak + '.tmp')} && mv -f {q(bak + '.tmp')} {q(bak)}")
        else:
            commit.append(f"rm -f {q(bak)}")
    commit.append(f"echo {q(BACKED_UP)}")
    commit += [f"mv -f {q(temp_path(c.file.dest, token))} {q(c.file.dest)}" for c in changes]
    commit.append(f"echo {q(COMMITTED)}")
    head = ["set -eu", "umask 022"]
    trap = f"trap {q('rm -f ' + ' '.join(q(temp_path(c.file.dest, token)) for c in changes))} EXIT"
    scripts: list[list[str]] = [list(head)]
    for unit in units:
        if len(scripts[-1]) > 2 and sum(len(x) + 1 for x in scripts[-1] + unit) > SCRIPT_LIMIT:
            scripts.append(list(head))
        scripts[-1].extend(unit)
    if sum(len(x) + 1 for x in scripts[-1] + commit) + len(trap) > SCRIPT_LIMIT:
        scripts.append(list(head))
    # the last script removes the temp files if anything in it fails (the caller
    # cleans up after a failed earlier one)
    scripts[-1][2:2] = [trap]
    scripts[-1] += [*commit, "trap - EXIT"]
    return ["\n".join(s) + "\n" for s in scripts]


def build_cleanup_command(changes: Sequence[FileChange], token: str) -> str:
    """Remove temp files a failed staging left."""
    return "rm -f " + " ".join(q(temp_path(c.file.dest, token)) for c in changes) + "\n"


def build_restore_script(changes: Sequence[FileChange], prefix: str) -> str:
    """Put the previous versions back (atomically), remove files that were new.

    Tries every file; exits non-zero if any could not be restored."""
    lines = ["set -u", "gridctl_rc=0"]
    for c in changes:
        dest = c.file.dest
        if c.action == "update":
            tmp = dest + ".gridctl-restore"
            bak = backup_path(prefix, dest)
            lines.append(
                f"cp -p {q(bak)} {q(tmp)} && mv -f {q(tmp)} {q(dest)} || "
                f"{{ echo {q('cannot restore ' + dest)} >&2; gridctl_rc=1; }}"
            )
        else:
            lines.append(f"rm -f {q(dest)} || gridctl_rc=1")
    lines.append("exit $gridctl_rc")
    return "\n".join(lines) + "\n"


def build_fetch_command(paths: Sequence[str], limit: int = 1 << 20) -> str:
    """Print the node's current content of ``paths`` (base64), for ``--diff``."""
    return (
        f"for gridctl_f in {' '.join(q(p) for p in paths)}; do\n"
        f"  echo {q(MARK + 'file')}\n"
        f'  if [ -f "$gridctl_f" ]; then head -c {int(limit)} "$gridctl_f" | base64; '
        f"else echo {q(MARK + 'missing')}; fi\n"
        f"done\necho {q(MARK + 'end')}\n"
    )


def parse_fetch(stdout: str, n: int) -> list[bytes | None] | None:
    """Contents in order (None: absent on the node), or None when the output is unreadable."""
    if MARK + "end" not in stdout:
        return None
    blocks = stdout.split(MARK + "file\n")[1:]
    if len(blocks) != n:
        return None
    out: list[bytes | None] = []
    for block in blocks:
        body = block.split(MARK + "end")[0]
        if body.startswith(MARK + "missing"):
            out.append(None)
            continue
        try:
            out.append(base64.b64decode("".join(body.split())))
        except ValueError:
            return None
    return out
