"""Read one inventory file safely: only a regular file, inside the inventory, of bounded size.

An inventory directory is data a user may have been handed (a git checkout, a tarball), so
a file in it is refused before a byte of it is parsed when it

- resolves outside the inventory directory (``sites/x.yaml`` a symlink to ``/etc/shadow``
  or an SSH key: its content would otherwise be parsed and quoted in errors and logs),
- is not a regular file (a FIFO would block the read forever, ``/dev/zero`` never ends),
- is larger than ``GRIDCTL_MAX_FILE_BYTES`` (default 4 MiB: a site file is a few KiB; a
  50 MB file would take seconds and gigabytes of memory before YAML gives up on it).

A symlink that stays inside the inventory (``sites/a.yaml -> ../shared/a.yaml``) is read.
The file is opened without following a final symlink and without blocking, then checked
by ``fstat`` on the open descriptor, so what is checked is what is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from gridctl.core.errors import UsageError

MAX_FILE_BYTES_ENV = "GRIDCTL_MAX_FILE_BYTES"
DEFAULT_MAX_FILE_BYTES = 4 * 1024 * 1024

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RefusedFileError(OSError):
    """An inventory file gridctl will not read. An OSError, so whatever reports "cannot
    read: ..." for a missing or unreadable file (after the file's name) reports this the
    same way; the message says why, never what the file holds."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_max_file_bytes(environ: Mapping[str, str]) -> int:
    """``$GRIDCTL_MAX_FILE_BYTES`` (a positive number of bytes), else 4 MiB."""
    raw = environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FILE_BYTES
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(
            f"{MAX_FILE_BYTES_ENV}={raw!r} is not a positive number of bytes",
            hint=f"set it to a byte count, e.g. {MAX_FILE_BYTES_ENV}={DEFAULT_MAX_FILE_BYTES} "
            "(the default), or unset it",
        )
    return value


def read_inventory_text(root: Path, rel: str, environ: Mapping[str, str] | None = None) -> str:
    """The text of ``root/rel`` (UTF-8, newlines as text mode reads them), or RefusedFileError.

    FileNotFoundError, PermissionError and UnicodeDecodeError pass through as from ``open``."""
    limit = parse_max_file_bytes(os.environ if environ is None else environ)
    data = _read_bounded(root, rel, limit)
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def read_bounded_text(path: Path, environ: Mapping[str, str] | None = None) -> str:
    """A file the user named (a scenario, a trace), read as an inventory file is but wherever
    it lives: a regular file (a FIFO would block, ``/dev/zero`` never ends), at most
    ``GRIDCTL_MAX_FILE_BYTES``; RefusedFileError otherwise."""
    limit = parse_max_file_bytes(os.environ if environ is None else environ)
    real = os.path.realpath(path)
    data = _read_bounded(Path(os.path.dirname(real)), os.path.basename(real), limit, inside=False)
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def _read_bounded(root: Path, rel: str, limit: int, inside: bool = True) -> bytes:
    base = os.path.realpath(root)
    real = os.path.realpath(root / rel)
    if inside:
        _check_inside(base, real)
    # the resolved path, its last component not followed: a symlink swapped in since is refused
    try:
        fd = os.open(real, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as exc:
        if _O_NOFOLLOW and exc.errno == getattr(os, "ELOOP", -1):
            raise RefusedFileError("became a symlink while being read: refused") from None
        raise
    try:
        if inside:
            _check_inside(base, _fd_path(fd) or real)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedFileError(
                f"{_kind(st.st_mode)}, not a regular file: refused (an inventory file is plain YAML)"
            )
        if st.st_size > limit:
            raise RefusedFileError(_too_big(f"{st.st_size} bytes", limit))
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = limit + 1  # one byte past the limit tells a file that grew since fstat
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise RefusedFileError(_too_big("grew while being read", limit))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_inside(base: str, real: str) -> None:
    if os.path.commonpath([base, real]) != base:
        raise RefusedFileError(
            f"resolves to {real}, outside the inventory directory {base}: refused "
            "(a symlink in the inventory must point inside it)"
        )


def _fd_path(fd: int) -> str | None:
    """Where the open descriptor really is (Linux), to check after the open too."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _too_big(size: str, limit: int) -> str:
    return (
        f"{size}, over the limit of {limit} bytes: refused "
        f"(raise {MAX_FILE_BYTES_ENV} if the file is meant to be this large)"
    )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "a special file"
