"""The baseline for bench/daemon_bench.py's `--baseline REV`: gridctl as of REV, checked out by
`git worktree` into a temp dir, so that its daemon runs side by side with the current one.

The tree is removed at the end (`git worktree remove --force`, then `git worktree prune`), also on
Ctrl-C or an error. Every git call and the import check have a timeout: nothing here can hang.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 120.0
IMPORT_TIMEOUT_S = 60.0


class BaselineError(RuntimeError):
    """The baseline could not be checked out or did not start; the message says why and what to do."""


@dataclass(frozen=True)
class Baseline:
    rev: str  # as given
    sha: str
    short: str
    subject: str
    tree: Path  # the worktree's root: the PYTHONPATH and working directory of its daemon

    @property
    def name(self) -> str:
        """The target's name in the tables: `baseline (HEAD 0f7bb11)`, or `baseline (0f7bb11)`."""
        same = self.sha.startswith(self.rev.lower())
        return f"baseline ({self.short})" if same else f"baseline ({self.rev} {self.short})"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with the worktree first on PYTHONPATH, ahead of the venv's editable install."""
        path = [str(self.tree), *filter(None, base.get("PYTHONPATH", "").split(os.pathsep))]
        return {**base, "PYTHONPATH": os.pathsep.join(path)}


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise BaselineError(f"`git {' '.join(args)}` in {repo} took over {GIT_TIMEOUT_S:.0f} s") from exc


def load_commit(repo: Path, rev: str) -> tuple[str, str, str]:
    """REV -> (full sha, short sha, subject); a BaselineError when REV names no commit."""
    out = _git(repo, "log", "-1", "--format=%H%n%h%n%s", f"{rev}^{{commit}}", "--")
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["git log failed"])[-1]
        raise BaselineError(
            f"--baseline {rev}: not a commit in {repo} ({why}); give a commit id, a branch or a name like HEAD~1"
        )
    sha, short, subject = (out.stdout.splitlines() + ["", "", ""])[:3]
    return sha, short, subject


def run_import_check(py: str, base: Baseline, env: dict[str, str]) -> None:
    """The baseline's interpreter imports gridctl from the worktree, not the current checkout."""
    argv = [py, "-c", "import gridctl; print(gridctl.__file__)"]
    try:
        out = subprocess.run(
            argv, cwd=base.tree, env=base.env(env), capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise BaselineError(f"{base.name}: `import gridctl` took over {IMPORT_TIMEOUT_S:.0f} s") from exc
    if out.returncode != 0:
        raise BaselineError(
            f"{base.name}: `import gridctl` failed in {base.tree}:\n{out.stderr[-2000:]}\n"
            f"hint: {build_start_hint(out.stderr)}"
        )
    where = Path(out.stdout.strip()).resolve()
    if not where.is_relative_to(base.tree.resolve()):
        raise BaselineError(
            f"{base.name}: gridctl was imported from {where}, not from the worktree {base.tree}; "
            "the venv's install shadows PYTHONPATH (an editable install by import hook?): "
            "reinstall gridctl with `pip install -e .` (a path entry) and run again"
        )


def build_start_hint(log: str) -> str:
    """What to do about a baseline daemon that exited or never listened, from its log."""
    m = re.search(r"ModuleNotFoundError: No module named '([^']+)'", log)
    if m and not m.group(1).startswith("gridctl"):
        top = m.group(1).split(".")[0]
        return (
            f"the baseline's tree needs `{top}`, which this venv lacks: install it into the venv "
            f"(`python -m pip install {top}`; check the baseline's pyproject.toml for the exact "
            "package) or pick a later REV"
        )
    if "No such command" in log or "No such option" in log or "Usage:" in log:
        return "the baseline's CLI does not take the bench's `daemon run` arguments: pick a later REV"
    if "did not come up" in log:
        return (
            "the baseline's daemon ran but never answered /healthz (stuck in its startup?): run its "
            "command in a worktree of REV by hand to see where; with --keep its log stays in the temp dir"
        )
    return "see the baseline daemon's output above; with --keep its log stays in the temp dir"


def remove_worktree(repo: Path, tree: Path) -> None:
    """Best effort and bounded: used on the way out, Ctrl-C included."""
    with contextlib.suppress(BaselineError):
        _git(repo, "worktree", "remove", "--force", str(tree))
    shutil.rmtree(tree, ignore_errors=True)
    with contextlib.suppress(BaselineError):
        _git(repo, "worktree", "prune")


@contextlib.contextmanager
def baseline_tree(repo: Path, rev: str) -> Iterator[Baseline]:
    """A detached worktree of REV in a temp dir for the `with` block's duration."""
    sha, short, subject = load_commit(repo, rev)
    parent = Path(tempfile.mkdtemp(prefix="daemon-bench-baseline-"))
    tree = parent / short
    try:
        out = _git(repo, "worktree", "add", "--detach", str(tree), sha)
        if out.returncode != 0:
            raise BaselineError(f"--baseline {rev}: `git worktree add` failed: {out.stderr.strip()[-1000:]}")
        yield Baseline(rev, sha, short, subject, tree)
    finally:
        remove_worktree(repo, tree)
        shutil.rmtree(parent, ignore_errors=True)
