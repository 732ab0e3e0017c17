"""The provisioning fact: one shell command per node, and its pure parser.

As with pyinfra's facts, :func:`build_facts_command` is the command and
:func:`parse_facts` its ``process(output)``. One round trip reads everything a
plan needs: the GPU probe of ``gridctl health`` (only for profiles that need
GPUs), free space under the prefix, which required commands and files exist,
and for every destination path its mode, owner, group and SHA-256::

    <the node probe of gridctl.core.health, when GPUs are required>
    @@gridctl-provision:disk
    /dev/sda1 102400000 51200000 51200000 50% /
    @@gridctl-provision:commands
    yes sha256sum
    no docker
    @@gridctl-provision:files
    yes /etc/nim/ngc.env
    @@gridctl-provision:sums
    644 root root 9f86d0...  -
    missing
    @@gridctl-provision:end
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from gridctl.core.health import NodeProbe, build_node_probe_command, parse_node_probe

MARK = "@@gridctl-provision:"
FACTS_VERSION = "1"
# used by every upload, checksum and restore
BASE_COMMANDS = ("sha256sum", "base64", "stat", "mv", "cp", "mkdir")


@dataclass(frozen=True)
class RemoteFile:
    exists: bool
    mode: int | None = None
    user: str | None = None
    group: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Facts:
    probe: NodeProbe | None  # GPUs; None when the profile needs none
    free_kb: int | None  # available under the prefix (nearest existing directory)
    commands: dict[str, bool] = field(default_factory=dict)
    files: dict[str, bool] = field(default_factory=dict)
    sums: tuple[RemoteFile, ...] = ()  # one per destination path, in order
    complete: bool = False  # the end marker was seen
    error: str | None = None  # why the output could not be read


def build_facts_command(
    paths: Sequence[str],
    commands: Sequence[str],
    files: Sequence[str],
    probe_dir: str,
    gpus: bool,
    smi_timeout_s: float = 10.0,
) -> str:
    """One POSIX sh script; every path and name from the plan is quoted."""
    lines = ["LC_ALL=C; export LC_ALL"]
    if gpus:
        lines += ["(", build_node_probe_command(timeout_s=smi_timeout_s).rstrip("\n"), ") 2>&1"]
    lines += [
        f"echo {shlex.quote(MARK + 'disk')}",
        f"gridctl_d={shlex.quote(probe_dir)}",
        'while [ ! -d "$gridctl_d" ]; do gridctl_d=$(dirname "$gridctl_d"); done',
        'df -Pk "$gridctl_d" 2>&1 | tail -n 1',
        f"echo {shlex.quote(MARK + 'commands')}",
        f"for gridctl_c in {_words([*BASE_COMMANDS, *commands])}; do",
        '  if command -v "$gridctl_c" >/dev/null 2>&1; then echo "yes $gridctl_c"; '
        'else echo "no $gridctl_c"; fi',
        "done",
        f"echo {shlex.quote(MARK + 'files')}",
    ]
    if files:
        lines += [
            f"for gridctl_f in {_words(files)}; do",
            '  if [ -e "$gridctl_f" ]; then echo "yes $gridctl_f"; else echo "no $gridctl_f"; fi',
            "done",
        ]
    lines += [f"echo {shlex.quote(MARK + 'sums')}"]
    if paths:
        lines += [
            f"for gridctl_f in {_words(paths)}; do",
            '  if [ -f "$gridctl_f" ]; then',
            '    echo "$(stat -c \'%a %U %G\' "$gridctl_f") $(sha256sum < "$gridctl_f")"',
            "  else echo missing; fi",
            "done",
        ]
    lines += [f"echo {shlex.quote(MARK + 'end')}"]
    return "\n".join(lines) + "\n"


def _words(items: Sequence[str]) -> str:
    return " ".join(shlex.quote(i) for i in items)


def parse_facts(stdout: str, stderr: str, rc: int | None, n_paths: int, gpus: bool) -> Facts:
    """The script's output -> Facts. Never raises: unreadable output is ``error``."""
    head, sep, rest = stdout.partition(MARK + "disk\n")
    if not sep:
        why = (stderr or stdout).strip().splitlines()[-3:]
        return Facts(None, None, error="facts not read: " + (" ".join(why) or f"exit status {rc}"))
    probe = parse_node_probe(head, "", 0) if gpus else None
    sections: dict[str, list[str]] = {"disk": []}
    current = "disk"
    complete = False
    for line in rest.splitlines():
        if line.startswith(MARK):
            current = line[len(MARK) :].strip()
            complete = complete or current == "end"
            sections.setdefault(current, [])
            continue
        sections[current].append(line)
    sums = tuple(parse_sum_line(line) for line in sections.get("sums", []))
    error = None
    if not complete:
        error = "facts output cut short" + (" (timed out)" if rc is None else f" (exit status {rc})")
    elif len(sums) != n_paths:
        error = f"checksums for {len(sums)} of {n_paths} files"
    return Facts(
        probe=probe,
        free_kb=parse_df(sections["disk"]),
        commands=_yes_no(sections.get("commands", [])),
        files=_yes_no(sections.get("files", [])),
        sums=sums,
        complete=complete,
        error=error,
    )


def parse_df(lines: list[str]) -> int | None:
    """``df -Pk`` data line: the 4th column is the space available, in KiB."""
    for line in reversed(lines):
        parts = line.split()
        if len(parts) >= 6 and parts[3].isdigit():
            return int(parts[3])
    return None


def parse_sum_line(line: str) -> RemoteFile:
    parts = line.split()
    if len(parts) < 4 or parts[0] == "missing":
        return RemoteFile(exists=False)
    mode, user, group, digest = parts[:4]
    try:
        mode_int = int(mode, 8)
    except ValueError:
        mode_int = None
    ok = len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    return RemoteFile(True, mode_int, user, group, digest if ok else None)


def _yes_no(lines: list[str]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for line in lines:
        answer, _, name = line.partition(" ")
        if answer in ("yes", "no") and name:
            out[name] = answer == "yes"
    return out
