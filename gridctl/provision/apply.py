"""Provision one node over its SSH session: facts, preflight, plan, upload, restart, verify, rollback.

Round trips on a node that is already up to date: one (the facts command).
After a change: the upload (one command for small files), the reload/restart
commands, then the endpoint wait. Every outcome is data (``NodeOutcome``);
nothing here raises for a node's failure.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gridctl.core.inventory.model import Node
from gridctl.fleet.ssh import CommandResult, Session
from gridctl.provision.facts import build_facts_command, parse_facts
from gridctl.provision.plan import FileChange, Plan, build_diff, build_plan, check_preflight
from gridctl.provision.render import NodeRender
from gridctl.provision.scripts import (
    BACKED_UP,
    COMMITTED,
    build_cleanup_command,
    build_fetch_command,
    build_restore_script,
    build_upload_scripts,
    parse_fetch,
)
from gridctl.provision.verify import check_api_key, wait_for_endpoint

KEEPALIVE_S = 15
TAIL_CHARS = 600


@dataclass(frozen=True)
class RunOptions:
    check: bool = False  # plan only, change nothing
    diff: bool = False  # fetch the node's files and show unified diffs
    environ: Mapping[str, str] = field(default_factory=dict)
    smi_timeout_s: float = 10.0
    # SITE/NODE -> plan signature the operator confirmed; a node whose plan differs now fails
    confirmed: Mapping[str, tuple[tuple[str, str], ...]] | None = None


@dataclass(frozen=True)
class NodeOutcome:
    node: Node
    profile: str | None
    status: str  # changed | unchanged | would-change | failed | unreachable | skipped
    changes: tuple[FileChange, ...] = ()  # files that changed (or would)
    commands: tuple[str, ...] = ()  # reload/restart commands run (or that would run)
    restarted: bool = False
    rolled_back: bool = False
    verified_s: float | None = None  # how long the endpoint took to come up
    error: str | None = None
    diffs: Mapping[str, str] = field(default_factory=dict)
    diagnostics: str = ""
    seconds: float = 0.0
    signature: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.name,
            "site": self.node.site,
            "profile": self.profile,
            "status": self.status,
            "changed": len(self.changes),
            "files": [dict(c.to_dict(), diff=self.diffs.get(c.file.dest)) for c in self.changes],
            "commands": list(self.commands),
            "restarted": self.restarted,
            "rolled_back": self.rolled_back,
            "verified_seconds": None if self.verified_s is None else round(self.verified_s, 3),
            "error": self.error,
            "diagnostics": self.diagnostics or None,
            "seconds": round(self.seconds, 3),
        }


def _tail(text: str) -> str:
    text = " ".join(text.strip().split())
    return text if len(text) <= TAIL_CHARS else "..." + text[-TAIL_CHARS:]


def _why(cmd: CommandResult) -> str:
    if cmd.timed_out:
        return "timed out"
    detail = _tail(cmd.stderr or cmd.stdout)
    status = "no exit status" if cmd.rc is None else f"exit status {cmd.rc}"
    return status + (f": {detail}" if detail else "")


class _Node:
    """The steps of one node's run; holds the session, the deadline and the render."""

    def __init__(self, session: Session, deadline: float, render: NodeRender, opts: RunOptions) -> None:
        self.s, self.deadline, self.r, self.opts = session, deadline, render, opts
        self.start = time.monotonic()

    def outcome(self, status: str, **kw: Any) -> NodeOutcome:
        return NodeOutcome(self.r.node, self.r.profile, status, seconds=time.monotonic() - self.start, **kw)

    def run(self) -> NodeOutcome:
        req = self.r.requires
        paths = [f.dest for f in self.r.files]
        command = build_facts_command(
            paths, req.commands, req.files, req.probe_dir, req.gpus is not None, self.opts.smi_timeout_s
        )
        res = self.s.run(command, self.deadline)
        rc = None if res.timed_out else res.rc
        facts = parse_facts(res.stdout, res.stderr, rc, len(paths), req.gpus is not None)
        if facts.error:
            return self.outcome("failed", error=f"{facts.error}; {_why(res)}" if res.rc else facts.error)
        failures = check_preflight(self.r, facts)
        key_problem = check_api_key(self.r.verify, self.opts.environ)  # verify could not send it
        if key_problem:
            failures.append(key_problem)
        if failures:
            return self.outcome("failed", error="preflight: " + "; ".join(failures))
        plan = build_plan(self.r, facts.sums)
        diffs = self.fetch_diffs(plan) if self.opts.diff and plan.changed else {}
        base: dict[str, Any] = {
            "changes": plan.changed,
            "commands": plan.commands,
            "diffs": diffs,
            "signature": plan.signature(),
        }
        if self.opts.check:
            return self.outcome("would-change" if plan.changed else "unchanged", **base)
        confirmed = self.opts.confirmed
        if confirmed is not None and confirmed.get(self.r.node.address, ()) != plan.signature():
            return self.outcome(
                "failed", error="the node changed since the plan was shown; nothing done, run again", **base
            )
        if not plan.changed:
            return self.outcome("unchanged", **base)
        return self.apply(plan, base)

    def fetch_diffs(self, plan: Plan) -> dict[str, str]:
        changed = plan.changed
        res = self.s.run(build_fetch_command([c.file.dest for c in changed]), self.deadline)
        olds = parse_fetch(res.stdout, len(changed))
        if olds is None:
            return {c.file.dest: f"(diff not available: {_why(res)})\n" for c in changed}
        return {c.file.dest: build_diff(c, old) for c, old in zip(changed, olds, strict=True)}

    # ------------------------------------------------------------ apply

    def apply(self, plan: Plan, base: dict[str, Any]) -> NodeOutcome:
        changed = plan.changed
        token = secrets.token_hex(4)
        scripts = build_upload_scripts(changed, self.r.prefix, self.r.owner, token)
        for script in scripts:
            res = self.s.run(script, self.deadline)
            if res.rc == 0 and not res.timed_out:
                continue
            if BACKED_UP in res.stdout and COMMITTED not in res.stdout:  # some renames may be done
                restored = self.s.run(build_restore_script(changed, self.r.prefix), self.deadline)
                note = "previous files restored" if restored.rc == 0 else f"restore failed: {_why(restored)}"
            else:
                self.s.run(build_cleanup_command(changed, token), self.deadline)
                note = "nothing changed"
            return self.outcome("failed", error=f"upload failed ({_why(res)}); {note}", **base)
        self.s.transport.set_keepalive(KEEPALIVE_S)  # quiet while the endpoint comes up
        error = self.run_commands(plan.commands)
        verified: float | None = None
        if error is None:
            v = wait_for_endpoint(self.r.verify, self.opts.environ, self.deadline)
            if v.ok:
                verified = v.seconds
            else:
                error = f"endpoint not up after {v.seconds:.0f} s: {v.error}"
        if error is None:
            return self.outcome("changed", restarted=bool(plan.commands), verified_s=verified, **base)
        diagnostics = self.diagnose()
        note = self.rollback(plan)
        return self.outcome(
            "failed",
            restarted=bool(plan.commands),
            rolled_back=True,
            error=f"{error}; rolled back: {note}",
            diagnostics=diagnostics,
            **base,
        )

    def run_commands(self, commands: tuple[str, ...]) -> str | None:
        for command in commands:
            res = self.s.run(command, self.deadline)
            if res.rc != 0 or res.timed_out:
                return f"`{command}` failed ({_why(res)})"
        return None

    def diagnose(self) -> str:
        out = []
        for command in self.r.diagnose:
            res = self.s.run(command, self.deadline)
            out.append(f"$ {command}\n{(res.stdout + res.stderr).rstrip()}\n")
        return "".join(out)

    def rollback(self, plan: Plan) -> str:
        """Previous files back, then reload/restart and wait again; returns what happened."""
        changed = plan.changed
        fresh = all(c.action == "create" for c in changed)
        if fresh and self.r.stop:  # a first install: stop what was started, with the files it used
            self.run_commands(self.r.stop)
        restored = self.s.run(build_restore_script(changed, self.r.prefix), self.deadline)
        if restored.rc != 0 or restored.timed_out:
            return f"restore FAILED ({_why(restored)}); the node is half-configured, check it"
        what = "new files removed" if fresh else "previous files restored"
        commands = tuple(c for c in plan.commands if c in self.r.reload) if fresh else plan.commands
        error = self.run_commands(commands)
        if error:
            return f"{what}, but {error}"
        if fresh:
            return what + (", service stopped" if self.r.stop else "")
        v = wait_for_endpoint(self.r.verify, self.opts.environ, self.deadline)
        if v.ok:
            return f"{what} and restarted; endpoint up again after {v.seconds:.1f} s"
        return f"{what} and restarted, but the endpoint is still down: {v.error}"


def provision_node(session: Session, deadline: float, render: NodeRender, opts: RunOptions) -> NodeOutcome:
    return _Node(session, deadline, render, opts).run()


def skipped(node: Node, profile: str | None, reason: str) -> NodeOutcome:
    return NodeOutcome(node, profile, "skipped", error=reason)


def unreachable(node: Node, profile: str | None, reason: str, seconds: float) -> NodeOutcome:
    return replace(NodeOutcome(node, profile, "unreachable", error=reason), seconds=seconds)
