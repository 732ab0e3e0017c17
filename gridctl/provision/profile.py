"""A provisioning profile: ``templates/provision/<name>/profile.yaml`` and its templates.

The manifest is plain data. Every string in it that ends up on a node (a
destination path, a command, a verify setting) is itself a jinja template,
rendered per node with the same context as the files::

    description: one line
    defaults: {var: value}            # lowest-priority variables
    requires:                         # preflight, checked on each node before anything changes
      gpus: true                      # nvidia-smi: count and model as in the inventory, driver loaded
      driver: "{{ min_driver }}"      # minimum driver version (empty: any)
      free_mb: 20000                  # free space under the prefix
      commands: ["{{ runtime }}"]     # on PATH on the node
      files: ["{{ secret_env }}"]     # must exist on the node (absolute paths)
    files:
      - src: unit.service.j2          # template, relative to the profile directory
        dest: etc/systemd/system/x.service   # relative to the node's prefix
        mode: "0644"
        notify: [reload, restart]     # default: both
    reload: ["systemctl daemon-reload"]
    restart: ["systemctl restart x.service"]
    stop: ["systemctl stop x.service"]        # used when a first install is rolled back
    diagnose: ["journalctl -u x -n 20"]       # output attached to a failed node's result
    verify: {url: "{{ site.endpoint }}", health_path: /health, models: "a,b", timeout: 600}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridctl.core.errors import GridctlError, NotFoundError
from gridctl.core.inventory.yamldoc import DocumentError, parse_document, path_str

MANIFEST = "profile.yaml"
NOTIFY = ("reload", "restart")
TOP_KEYS = {"description", "defaults", "requires", "files", "reload", "restart", "stop", "diagnose", "verify"}
REQUIRES_KEYS = {"gpus", "driver", "free_mb", "commands", "files"}
FILE_KEYS = {"src", "dest", "mode", "notify"}
VERIFY_KEYS = {"url", "health_path", "models", "timeout"}
SRC = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
MODE = re.compile(r"^0?[0-7]{3,4}$")


class ProfileError(GridctlError):
    """A profile that cannot be used: manifest or template problems, each located."""

    def __init__(self, problems: list[str], message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.problems = problems


@dataclass(frozen=True)
class FileSpec:
    src: str
    dest: str  # template text
    mode: int
    notify: tuple[str, ...]
    line: int  # of the entry in the manifest


@dataclass(frozen=True)
class Requires:
    gpus: bool = False
    driver: str = ""  # template text
    free_mb: int = 0
    commands: tuple[str, ...] = ()  # template texts
    files: tuple[str, ...] = ()  # template texts


@dataclass(frozen=True)
class VerifySpec:
    url: str = "{{ site.endpoint }}"
    health_path: str = "{{ site.health_path }}"
    models: str = "{{ models | join(',') }}"
    timeout: str = "120"


@dataclass(frozen=True)
class Profile:
    name: str
    directory: Path
    shown: str  # how messages name the directory: templates/provision/<name>
    description: str
    defaults: dict[str, Any]
    requires: Requires
    files: tuple[FileSpec, ...]
    reload: tuple[str, ...]
    restart: tuple[str, ...]
    stop: tuple[str, ...]
    diagnose: tuple[str, ...]
    verify: VerifySpec
    lines: dict[str, int]  # manifest field path -> line, for locating errors in its templates

    def where(self, field: str) -> str:
        line = self.lines.get(field, 0)
        return f"{self.shown}/{MANIFEST}" + (f":{line}" if line else "") + f": {field}"


def shown_root(templates_dir: Path, builtin: Path) -> str:
    """How messages name the templates directory: ``templates`` for the built-in one."""
    try:
        same = templates_dir.resolve() == builtin.resolve()
    except OSError:
        same = False
    return "templates" if same else str(templates_dir)


def list_profiles(templates_dir: Path) -> list[str]:
    base = templates_dir / "provision"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / MANIFEST).is_file())


def load_profile(templates_dir: Path, name: str, shown: str) -> Profile:
    directory = templates_dir / "provision" / name
    manifest = directory / MANIFEST
    if not manifest.is_file():
        known = list_profiles(templates_dir)
        raise NotFoundError(
            f"no provisioning profile '{name}': {shown}/provision/{name}/{MANIFEST} not found",
            hint=f"profiles in {shown}/provision: {', '.join(known) or 'none'}; "
            "set provision.profile in the inventory to one of them",
        )
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GridctlError(f"cannot read {shown}/provision/{name}/{MANIFEST}: {exc}") from None
    return parse_profile(text, name, directory, f"{shown}/provision/{name}")


def parse_profile(text: str, name: str, directory: Path, shown: str) -> Profile:
    """The manifest's text -> Profile, or ProfileError listing every problem with its line."""
    where = f"{shown}/{MANIFEST}"
    try:
        doc = parse_document(text)
    except DocumentError as exc:
        raise ProfileError([f"{where}:{exc.line}: {exc.message}"], f"profile '{name}' is invalid") from None
    found: list[tuple[int, str]] = []

    def fail(path: tuple[str | int, ...], message: str) -> None:
        line = doc.line_of(path)
        found.append((line, f"{where}:{line}: {path_str(path)}: {message}"))

    top = doc.value if isinstance(doc.value, dict) else None
    if top is None:
        raise ProfileError([f"{where}:1: must be a mapping"], f"profile '{name}' is invalid")
    for key in top:
        if key not in TOP_KEYS:
            fail((str(key),), f"unknown key; expected one of: {', '.join(sorted(TOP_KEYS))}")
    defaults = top.get("defaults") or {}
    if not isinstance(defaults, dict):
        fail(("defaults",), "must be a mapping of variable to value")
        defaults = {}
    requires = _requires(top.get("requires") or {}, fail)
    files = _files(top.get("files"), fail, directory, doc.line_of)
    lists = {k: _strings(top.get(k) or [], (k,), fail) for k in ("reload", "restart", "stop", "diagnose")}
    verify = _verify(top.get("verify") or {}, fail)
    if found:
        raise ProfileError([text for _, text in sorted(found)], f"profile '{name}' is invalid")
    lines = {path_str(p): doc.line_of(p) for p in _template_paths(top)}
    return Profile(
        name=name,
        directory=directory,
        shown=shown,
        description=str(top.get("description") or ""),
        defaults=dict(defaults),
        requires=requires,
        files=tuple(files),
        reload=lists["reload"],
        restart=lists["restart"],
        stop=lists["stop"],
        diagnose=lists["diagnose"],
        verify=verify,
        lines=lines,
    )


def _template_paths(top: dict[str, Any]) -> list[tuple[str | int, ...]]:
    paths: list[tuple[str | int, ...]] = []
    for i, _ in enumerate(top.get("files") or []):
        paths.append(("files", i, "dest"))
    for key in ("reload", "restart", "stop", "diagnose"):
        paths += [(key, i) for i, _ in enumerate(top.get(key) or [])]
    req = top.get("requires") or {}
    paths += [("requires", "driver")] if "driver" in req else []
    for key in ("commands", "files"):
        paths += [("requires", key, i) for i, _ in enumerate(req.get(key) or [])]
    paths += [("verify", k) for k in top.get("verify") or {}]
    return paths


Fail = Callable[[tuple[str | int, ...], str], None]  # (path in the manifest, message)


def _strings(value: Any, path: tuple[str | int, ...], fail: Fail) -> tuple[str, ...]:
    if not isinstance(value, list):
        fail(path, "must be a list of strings")
        return ()
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            fail((*path, i), "must be a non-empty string")
        else:
            out.append(item)
    return tuple(out)


def _requires(value: Any, fail: Fail) -> Requires:
    if not isinstance(value, dict):
        fail(("requires",), "must be a mapping")
        return Requires()
    for key in value:
        if key not in REQUIRES_KEYS:
            fail(("requires", str(key)), f"unknown key; expected one of: {', '.join(sorted(REQUIRES_KEYS))}")
    gpus = value.get("gpus", False)
    if not isinstance(gpus, bool):
        fail(("requires", "gpus"), "must be true or false")
        gpus = False
    free = value.get("free_mb", 0)
    if isinstance(free, bool) or not isinstance(free, int) or free < 0:
        fail(("requires", "free_mb"), "must be a whole number of MiB")
        free = 0
    driver = value.get("driver", "")
    if not isinstance(driver, str | int | float):
        fail(("requires", "driver"), "must be a driver version such as 535 (or a template)")
        driver = ""
    return Requires(
        gpus=gpus,
        driver=str(driver),
        free_mb=free,
        commands=_strings(value.get("commands") or [], ("requires", "commands"), fail),
        files=_strings(value.get("files") or [], ("requires", "files"), fail),
    )


def _files(
    value: Any, fail: Fail, directory: Path, line_of: Callable[[tuple[str | int, ...]], int]
) -> list[FileSpec]:
    if not isinstance(value, list) or not value:
        fail(("files",), "must be a non-empty list of {src, dest, mode, notify}")
        return []
    out = []
    for i, item in enumerate(value):
        path: tuple[str | int, ...] = ("files", i)
        if not isinstance(item, dict):
            fail(path, "must be a mapping of src, dest, mode, notify")
            continue
        for key in item:
            if key not in FILE_KEYS:
                fail((*path, str(key)), f"unknown key; expected one of: {', '.join(sorted(FILE_KEYS))}")
        src, dest = item.get("src"), item.get("dest")
        if not isinstance(src, str) or not SRC.match(src) or ".." in src.split("/"):
            fail((*path, "src"), "must be a template file name inside the profile directory")
            continue
        if not (directory / src).is_file():
            fail((*path, "src"), f"template {src} not found in the profile directory")
        if not isinstance(dest, str) or not dest.strip():
            fail((*path, "dest"), "must be a path relative to the node's prefix")
            continue
        mode = str(item.get("mode", "0644"))
        if not MODE.match(mode):
            fail((*path, "mode"), f'must be an octal mode such as "0644" (got {mode!r}); quote it')
            continue
        notify = item.get("notify", list(NOTIFY))
        if not isinstance(notify, list) or any(n not in NOTIFY for n in notify):
            fail((*path, "notify"), f"must be a list of {' and '.join(NOTIFY)} (or [])")
            continue
        out.append(FileSpec(src, dest, int(mode, 8), tuple(notify), line_of(path)))
    return out


def _verify(value: Any, fail: Fail) -> VerifySpec:
    if not isinstance(value, dict):
        fail(("verify",), "must be a mapping of url, health_path, models, timeout")
        return VerifySpec()
    base = VerifySpec()
    got: dict[str, str] = {}
    for key, item in value.items():
        if key not in VERIFY_KEYS:
            fail(("verify", str(key)), f"unknown key; expected one of: {', '.join(sorted(VERIFY_KEYS))}")
        elif isinstance(item, bool) or not isinstance(item, str | int | float):
            fail(("verify", key), "must be a string or a number (templates allowed)")
        else:
            got[key] = str(item)
    return VerifySpec(
        url=got.get("url", base.url),
        health_path=got.get("health_path", base.health_path),
        models=got.get("models", base.models),
        timeout=got.get("timeout", base.timeout),
    )
