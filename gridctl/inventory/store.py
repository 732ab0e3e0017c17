"""Atomic, locked writes to the inventory.

Every change runs as a transaction: take the lock, load and validate the
inventory, compute the new text of each touched file, validate the inventory
*as it would be* with those texts, and only then write each file atomically
(temp file in the same directory, fsync, rename, fsync the directory). A
process killed at any point leaves each file either old or new; two writers
are serialized by an ``flock`` on ``.gridctl.lock``; a change that would make
the inventory invalid writes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from gridctl.errors import InventoryError, LockError
from gridctl.inventory.load import load_inventory
from gridctl.inventory.model import Inventory

LOCK_FILE = ".gridctl.lock"
LOCK_TIMEOUT_S = 30.0

# rel path -> new text, or None to delete the file
Changes = Mapping[str, str | None]


@contextlib.contextmanager
def inventory_lock(root: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock on the inventory; waits up to ``timeout`` seconds."""
    path = root / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:  # another user's lock file: flock needs a descriptor, not write access
        fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"inventory {root} is locked by another gridctl (waited {timeout:g}s)",
                        hint=f"try again; if no gridctl is running, check {path}",
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_file(path: Path) -> None:
    os.unlink(path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_change(root: Path, plan: Callable[[Inventory], Changes]) -> tuple[Inventory, Changes]:
    """Lock, plan the change on the current inventory, validate the result, write it.

    ``plan`` returns the files to write (or delete); it raises to refuse.
    Returns the inventory as it now is and the changes that were written.
    """
    with inventory_lock(root):
        current = load_inventory(root)
        changes = plan(current)
        if not changes:
            return current, changes
        try:
            after = load_inventory(root, overrides=changes)
        except InventoryError as exc:
            raise InventoryError(
                exc.problems, str(root), hint="nothing was written; fix the values and retry", refused=True
            ) from None
        for rel, text in changes.items():
            if text is None:
                remove_file(root / rel)
            else:
                write_atomic(root / rel, text)
        return after, changes
