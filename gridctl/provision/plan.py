"""What provisioning would do on a node: pure functions of the render and the facts.

``check_preflight`` says which checks fail and why; ``build_plan`` compares each
rendered file with what the node holds (SHA-256, mode, owner) and lists the
commands the changes call for. The same plan drives ``--check``, the
confirmation prompt and the real run.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gridctl.core.health import model_matches
from gridctl.provision.facts import BASE_COMMANDS, Facts, RemoteFile
from gridctl.provision.render import NodeRender, RenderedFile

MAX_DIFF_LINES = 400


@dataclass(frozen=True)
class FileChange:
    file: RenderedFile
    action: str  # create | update | unchanged
    reasons: tuple[str, ...] = ()  # content, mode 600 -> 644, owner a:b -> c:d

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.file.dest,
            "template": self.file.src,
            "action": self.action,
            "reasons": list(self.reasons),
            "mode": f"{self.file.mode:04o}",
            "sha256": self.file.sha256,
        }


@dataclass(frozen=True)
class Plan:
    changes: tuple[FileChange, ...]
    commands: tuple[str, ...]  # reload then restart commands the changes call for

    @property
    def changed(self) -> tuple[FileChange, ...]:
        return tuple(c for c in self.changes if c.action != "unchanged")

    @property
    def restarts(self) -> bool:
        return bool(self.commands)

    def signature(self) -> tuple[tuple[str, str], ...]:
        """What the operator confirmed: each changed path and its new checksum."""
        return tuple((c.file.dest, c.file.sha256) for c in self.changed)


def check_preflight(render: NodeRender, facts: Facts) -> list[str]:
    """Every failing check, as 'check: why'. Empty when the node is ready."""
    req = render.requires
    failures: list[str] = []
    if req.gpus is not None:
        failures += _gpu_failures(facts, req.gpus.model, req.gpus.count, req.driver)
    if req.free_mb and facts.free_kb is not None and facts.free_kb < req.free_mb * 1024:
        failures.append(
            f"disk: {facts.free_kb / 1024:.0f} MiB free under {req.probe_dir}, "
            f"the profile needs {req.free_mb} MiB"
        )
    elif req.free_mb and facts.free_kb is None:
        failures.append(f"disk: free space under {req.probe_dir} not read (df)")
    missing = [c for c in (*BASE_COMMANDS, *req.commands) if not facts.commands.get(c, False)]
    if missing:
        failures.append(f"commands: not found on the node: {', '.join(missing)}")
    absent = [f for f in req.files if not facts.files.get(f, False)]
    if absent:
        failures.append(f"files: missing on the node: {', '.join(absent)} (put them there first)")
    return failures


def _gpu_failures(facts: Facts, model: str, count: int, min_driver: str) -> list[str]:
    probe = facts.probe
    if probe is None:
        return ["gpus: not read"]
    if probe.smi_error:
        return [f"gpus: {probe.smi_error}"]
    out = []
    if probe.gpu_errors:
        out.append(f"gpus: {len(probe.gpu_errors)} GPU(s) inaccessible: {probe.gpu_errors[0].message}")
    if len(probe.gpus) != count:
        out.append(f"gpus: {len(probe.gpus)} found, the inventory says {count}")
    wrong = sorted({g.name for g in probe.gpus if not model_matches(model, g.name)})
    if wrong:
        out.append(f"gpus: model {', '.join(wrong)}, the inventory says {model}")
    drivers = sorted({g.driver_version or "?" for g in probe.gpus})
    if "?" in drivers:
        out.append("driver: version not reported by nvidia-smi")
    elif min_driver and drivers and version_key(drivers[0]) < version_key(min_driver):
        out.append(f"driver: {drivers[0]} is older than the {min_driver} the profile needs")
    return out


def version_key(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)) or (0,)


def build_plan(render: NodeRender, sums: Sequence[RemoteFile]) -> Plan:
    changes = tuple(_change(f, r, render.owner) for f, r in zip(render.files, sums, strict=True))
    notified = {n for c in changes if c.action != "unchanged" for n in c.file.notify}
    commands = (render.reload if "reload" in notified else ()) + (
        render.restart if "restart" in notified else ()
    )
    return Plan(changes, commands)


def _change(file: RenderedFile, remote: RemoteFile, owner: str | None) -> FileChange:
    if not remote.exists:
        return FileChange(file, "create", ("new file",))
    reasons = []
    if remote.sha256 != file.sha256:
        reasons.append("content")
    if remote.mode != file.mode:
        was = f"{remote.mode:04o}" if remote.mode is not None else "?"
        reasons.append(f"mode {was} -> {file.mode:04o}")
    if owner:
        user, _, group = owner.partition(":")
        if remote.user != user or (group and remote.group != group):
            reasons.append(f"owner {remote.user}:{remote.group} -> {owner}")
    return FileChange(file, "update" if reasons else "unchanged", tuple(reasons))


def build_diff(change: FileChange, old: bytes | None) -> str:
    """A unified diff of the node's file (``old``; None when absent) and the rendered one."""
    new = change.file.content
    path = change.file.dest
    try:
        old_text = "" if old is None else old.decode("utf-8")
        new_text = new.decode("utf-8")
    except UnicodeDecodeError:
        return f"Binary files {path} differ\n"
    lines = list(
        difflib.unified_diff(
            old_text.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile="/dev/null" if old is None else f"{path} (on the node)",
            tofile=f"{path} (rendered)",
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = lines[:MAX_DIFF_LINES] + [f"... {len(lines) - MAX_DIFF_LINES} more diff lines\n"]
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
