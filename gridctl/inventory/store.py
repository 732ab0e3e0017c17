"""Atomic, locked writes to the inventory.

Every change runs as a transaction: take the lock, load and validate the
inventory, compute the new text of each touched file, validate the inventory
*as it would be* with those texts, and only then write each file atomically
(temp file in the same directory, fsync, rename, fsync the directory). A
process killed at any point leaves each file either old or new; two writers
are serialized by an ``flock`` on ``.gridctl.lock``; a change that would make
the inventory invalid writes nothing.

On an inventory that is already broken, a change that touches no broken file
and adds no problem is written (the result carries the existing problems, for
a warning): an incident drain must not wait for an unrelated typo. A change to
a broken file is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gridctl.core.errors import InventoryError, NotFoundError, Problem
from gridctl.core.inventory.model import Inventory
from gridctl.inventory.atomic import inventory_lock, remove_file, write_atomic
from gridctl.inventory.load import Loaded, load_partial

# rel path -> new text, or None to delete the file
Changes = Mapping[str, str | None]


@dataclass(frozen=True)
class FileChange:
    """One file a change writes, for ``--dry-run`` and ``-o json``: what happens to it and
    the unified diff from the old text to the new."""

    file: str  # relative to the inventory root
    action: str  # created | modified | deleted
    diff: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "action": self.action, "diff": self.diff}


@dataclass(frozen=True)
class ChangeResult:
    inventory: Inventory  # as it now is (or, in a dry run, would be)
    changes: Changes
    files: tuple[FileChange, ...]
    dry_run: bool = False
    # problems the inventory already had, in files the change did not touch (written anyway)
    existing: tuple[Problem, ...] = ()


def run_change(root: Path, plan: Callable[[Inventory], Changes]) -> tuple[Inventory, Changes]:
    """Lock, plan the change on the current inventory, validate the result, write it.

    ``plan`` returns the files to write (or delete); it raises to refuse.
    Returns the inventory as it now is and the changes that were written.
    """
    result = apply_change(root, plan)
    return result.inventory, result.changes


def apply_change(
    root: Path, plan: Callable[[Inventory], Changes], dry_run: bool = False, with_state: bool = False
) -> ChangeResult:
    """:func:`run_change`, and what it did to each file; with ``dry_run`` everything but the writes.

    Paths under ``.state/`` may be in the changes (what gridctl learned about a site that is
    removed): with ``with_state`` the plan runs holding the ``.state`` lock as well (taken
    after the inventory's, the only order anything takes both), so it reads and rewrites
    those files without racing the daemon. Order of the writes: files written, then files
    deleted, then ``.state``: a crash between two leaves an inventory that still validates
    (a ``latency_ms`` entry is dropped before the site it names).
    """
    with inventory_lock(root), _state_lock(root, with_state and not dry_run):
        before = load_partial(root)
        if before.inventory is None:  # grid.yaml cannot be built: there is nothing to plan on
            raise InventoryError(
                list(before.problems), str(root), hint="nothing was written; fix grid.yaml first"
            )
        changes = _plan(root, plan, before)
        if not changes:
            return ChangeResult(before.inventory, changes, (), dry_run, before.problems)
        assert with_state or not any(_is_state(rel) for rel in changes), "a .state change needs its lock"
        after = _validate_after(root, changes, before)
        files = tuple(_file_change(root, rel, text) for rel, text in changes.items())
        if not dry_run:
            _write(root, changes)
        return ChangeResult(after, changes, files, dry_run, before.problems)


def _plan(root: Path, plan: Callable[[Inventory], Changes], before: Loaded) -> Changes:
    """The plan's changes; a name it cannot find on a broken inventory may be in a broken file."""
    assert before.inventory is not None
    try:
        return plan(before.inventory)
    except NotFoundError as exc:
        if not before.problems:
            raise
        broken = ", ".join(sorted(before.broken))
        raise InventoryError(
            list(before.problems),
            str(root),
            hint=f"{exc.message} among the valid files; it may be in {broken}: "
            "fix the lines above first (by hand), then retry",
        ) from None


def _validate_after(root: Path, changes: Changes, before: Loaded) -> Inventory:
    """The inventory as it would be: refused when the change touches a broken file or adds a
    problem (the problems already there, in untouched files, do not block it)."""
    touched = sorted(set(changes) & before.broken)
    if touched:
        raise InventoryError(
            list(before.problems),
            str(root),
            hint=f"nothing was written: the change touches {', '.join(touched)}, which has "
            "problems; fix the lines above first (by hand), then retry",
        )
    after = load_partial(root, overrides=changes)
    known = set(before.problems)
    added = [p for p in after.problems if p not in known]
    if added:
        raise InventoryError(
            added, str(root), hint="nothing was written; fix the values and retry", refused=True
        )
    assert after.inventory is not None
    return after.inventory


def _write(root: Path, changes: Changes) -> None:
    """Files written, then files deleted, then ``.state``, each atomically."""
    ordered = sorted(changes.items(), key=lambda kv: (_is_state(kv[0]), kv[1] is None))
    for rel, text in ordered:
        if text is None:
            with contextlib.suppress(FileNotFoundError):
                remove_file(root / rel)
        else:
            write_atomic(root / rel, text)


STATE_PREFIX = ".state/"


def _is_state(rel: str) -> bool:
    return rel.startswith(STATE_PREFIX)


@contextlib.contextmanager
def _state_lock(root: Path, take: bool) -> Iterator[None]:
    if not take:
        yield
        return
    from gridctl.inventory.state import state_lock

    with state_lock(root):
        yield


def _file_change(root: Path, rel: str, text: str | None) -> FileChange:
    import difflib

    try:
        old: str | None = (root / rel).read_text(encoding="utf-8")
    except FileNotFoundError:
        old = None
    if text is None:
        n = len((old or "").splitlines())
        return FileChange(rel, "deleted", f"--- a/{rel}\n+++ /dev/null\n(file deleted: {n} lines)\n")
    diff = "".join(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"a/{rel}" if old is not None else "/dev/null",
            tofile=f"b/{rel}",
        )
    )
    return FileChange(rel, "created" if old is None else "modified", diff)
