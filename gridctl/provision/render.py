"""Render a profile for a node: files, commands, preflight and verify settings.

jinja2 with ``StrictUndefined``: an undefined variable is an error, located as
``templates/provision/<profile>/<file>:LINE: message`` (or the manifest's line
for a template inside profile.yaml). Everything is rendered for every node
before any node is contacted, so a template error touches nothing.

Filters for what reaches a shell or a unit file: ``q`` (POSIX shell quoting,
``shlex.quote``), ``sd`` (one systemd command-line word: ``%`` and ``$``
escaped, quoted when needed), ``env_value`` (a value for an env file: refuses
newlines).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2

from gridctl.core.inventory.model import Gpus, Node, TlsFiles
from gridctl.provision.context import remote_path
from gridctl.provision.profile import Profile
from gridctl.templating import build_environment

DEST = re.compile(r"^[A-Za-z0-9._@+-]+(/[A-Za-z0-9._@+-]+)*$")
MAX_FILE_BYTES = 1 << 20
_SD_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def quote_systemd(value: Any) -> str:
    """One word of a systemd ExecStart= line: specifiers and variables escaped."""
    text = str(value).replace("%", "%%").replace("$", "$$")
    if _SD_PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_value(value: Any) -> str:
    """A value for an env file read by both systemd (EnvironmentFile=) and
    ``docker --env-file`` (which takes it literally): one line, nothing either
    of them would read differently."""
    text = str(value)
    bad = sorted({c for c in text if c in "\n\r\0\"'\\"})
    if bad:
        raise ValueError(f"env_value: {text[:40]!r} holds {bad!r}; env file values are one plain line")
    return text


@dataclass(frozen=True)
class RenderedFile:
    src: str  # as messages show it: templates/provision/<profile>/<src>
    dest: str  # absolute path on the node
    content: bytes
    mode: int
    notify: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Requirements:
    gpus: Gpus | None  # what nvidia-smi must show; None: no GPU checks
    driver: str  # minimum driver version, "" for any
    free_mb: int
    commands: tuple[str, ...]
    files: tuple[str, ...]
    probe_dir: str  # where free space is measured: the prefix


@dataclass(frozen=True)
class VerifyTarget:
    url: str
    health_path: str
    models: tuple[str, ...]
    timeout: float
    api_key_env: str | None
    tls: TlsFiles = TlsFiles()  # the site's tls_ca/tls_cert/tls_key: the node's server is the site's


@dataclass(frozen=True)
class NodeRender:
    node: Node
    profile: str
    prefix: str
    owner: str | None
    files: tuple[RenderedFile, ...]
    reload: tuple[str, ...]
    restart: tuple[str, ...]
    stop: tuple[str, ...]
    diagnose: tuple[str, ...]
    requires: Requirements
    verify: VerifyTarget


@dataclass(frozen=True)
class TemplateProblem:
    where: str  # file:line
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class RenderFailed(Exception):
    def __init__(self, problem: TemplateProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class Renderer:
    """One per profile: its jinja environment and compiled templates, reused for every node."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.env = build_environment(
            profile.directory,
            {"q": lambda v: shlex.quote(str(v)), "sd": quote_systemd, "env_value": env_value},
        )
        self._inline: dict[str, Any] = {}

    def render_node(
        self, node: Node, ctx: dict[str, Any], api_key_env: str | None, tls: TlsFiles | None = None
    ) -> NodeRender:
        """Everything for one node; raises RenderFailed with the first located problem."""
        p = self.profile
        prefix = str(ctx["prefix"])
        files = []
        seen: dict[str, str] = {}
        for i, spec in enumerate(p.files):
            field = f"files[{i}].dest"
            dest = self._inline_text(spec.dest, ctx, field)
            if not DEST.match(dest) or ".." in dest.split("/"):
                self._fail(field, f"rendered to {dest!r}: must be a relative path without '..' or spaces")
            absolute = remote_path(prefix, dest)
            if absolute in seen:
                self._fail(field, f"{absolute} is also the destination of {seen[absolute]}")
            seen[absolute] = spec.src
            content = self._file(spec.src, ctx).encode("utf-8")
            if len(content) > MAX_FILE_BYTES:
                self._fail(
                    field, f"{spec.src} rendered to {len(content)} bytes; the limit is {MAX_FILE_BYTES}"
                )
            files.append(RenderedFile(f"{p.shown}/{spec.src}", absolute, content, spec.mode, spec.notify))
        return NodeRender(
            node=node,
            profile=p.name,
            prefix=prefix,
            owner=ctx.get("owner"),
            files=tuple(files),
            reload=self._commands("reload", p.reload, ctx),
            restart=self._commands("restart", p.restart, ctx),
            stop=self._commands("stop", p.stop, ctx),
            diagnose=self._commands("diagnose", p.diagnose, ctx),
            requires=self._requires(node, ctx, prefix),
            verify=self._verify(ctx, api_key_env, tls or TlsFiles()),
        )

    # ------------------------------------------------------------ pieces

    def _requires(self, node: Node, ctx: dict[str, Any], prefix: str) -> Requirements:
        r = self.profile.requires
        if r.gpus and node.gpus is None:
            self._fail("requires.gpus", f"the profile needs GPUs, but node {node.address} lists none (gpus:)")
        rendered = [self._inline_text(t, ctx, f"requires.files[{i}]").strip() for i, t in enumerate(r.files)]
        for i, f in enumerate(rendered):
            if f and not f.startswith("/"):
                self._fail(f"requires.files[{i}]", f"rendered to {f!r}: must be an absolute path")
        return Requirements(
            gpus=node.gpus if r.gpus else None,
            driver=self._inline_text(r.driver, ctx, "requires.driver").strip() if r.driver else "",
            free_mb=r.free_mb,
            commands=tuple(
                c
                for i, t in enumerate(r.commands)
                if (c := self._inline_text(t, ctx, f"requires.commands[{i}]").strip())
            ),
            files=tuple(f for f in rendered if f),  # an empty one: not needed for this node
            probe_dir=prefix,
        )

    def _verify(self, ctx: dict[str, Any], api_key_env: str | None, tls: TlsFiles) -> VerifyTarget:
        v = self.profile.verify
        timeout_text = self._inline_text(v.timeout, ctx, "verify.timeout")
        try:
            timeout = float(timeout_text)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 86400:
            self._fail("verify.timeout", f"rendered to {timeout_text!r}: must be seconds, above 0")
        models = self._inline_text(v.models, ctx, "verify.models")
        return VerifyTarget(
            url=self._inline_text(v.url, ctx, "verify.url").strip().rstrip("/"),
            health_path=self._inline_text(v.health_path, ctx, "verify.health_path").strip() or "/health",
            models=tuple(m.strip() for m in models.split(",") if m.strip()),
            timeout=timeout,
            api_key_env=api_key_env,
            tls=tls,
        )

    def _commands(self, key: str, texts: tuple[str, ...], ctx: dict[str, Any]) -> tuple[str, ...]:
        out = (self._inline_text(t, ctx, f"{key}[{i}]").strip() for i, t in enumerate(texts))
        return tuple(c for c in out if c)

    def _file(self, src: str, ctx: dict[str, Any]) -> str:
        shown = f"{self.profile.shown}/{src}"
        try:
            return self.env.get_template(src).render(ctx)
        except jinja2.TemplateSyntaxError as exc:
            name = f"{self.profile.shown}/{exc.name}" if exc.name else shown
            raise RenderFailed(TemplateProblem(f"{name}:{exc.lineno}", exc.message or str(exc))) from None
        except RENDER_ERRORS as exc:
            file, line = _template_line(exc.__traceback__, self.profile, src)
            raise RenderFailed(
                TemplateProblem(f"{self.profile.shown}/{file}:{line}", _message(exc))
            ) from None

    def _inline_text(self, text: str, ctx: dict[str, Any], field: str) -> str:
        try:
            template = self._inline.get(text)
            if template is None:
                template = self._inline[text] = self.env.from_string(text)
            return str(template.render(ctx))
        except jinja2.TemplateSyntaxError as exc:
            self._fail(field, exc.message or str(exc))
        except RENDER_ERRORS as exc:
            self._fail(field, _message(exc))
        raise AssertionError("unreachable")

    def _fail(self, field: str, message: str) -> None:
        raise RenderFailed(TemplateProblem(self.profile.where(field), message))


# What a template can raise while rendering: jinja's own errors, and Python's from
# an operation on a wrong type (a list where a number was meant, ...).
RENDER_ERRORS: tuple[type[BaseException], ...] = (
    jinja2.TemplateError,
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    ArithmeticError,
)


def _message(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        where = "the inventory's provision.vars (site or node) or the profile's defaults"
        return f"{exc.message}: define it in {where}"
    return str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"


def _template_line(tb: TracebackType | None, profile: Profile, src: str) -> tuple[str, int]:
    """The innermost frame that belongs to one of the profile's templates (jinja
    rewrites tracebacks so those frames carry the template's file and line)."""
    base = str(profile.directory.resolve())
    found = (src, 0)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        try:
            resolved = str(Path(filename).resolve())
        except OSError:
            resolved = filename
        if resolved.startswith(base + "/"):
            found = (resolved[len(base) + 1 :], tb.tb_lineno)
        tb = tb.tb_next
    return found
