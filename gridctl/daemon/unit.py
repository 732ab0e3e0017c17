"""The daemon's systemd unit (``templates/daemon/gridctl-daemon.service.j2``), sandboxed to
what the daemon needs, decided when it is rendered.

The sandbox hides home directories (``ProtectHome=``) and the host's temporary directories
(``PrivateTmp=``); whatever the daemon reads from there (an inventory in a home directory, a
Python under ``~/.pyenv``) is bound back in read-only, and ``.state`` read-write. A port below
1024 gets ``CAP_NET_BIND_SERVICE``, and only then. ``build_unit`` is pure: it takes the command that
starts gridctl and the paths its Python runs from (``gridctl_command`` and ``python_paths``
find them) as data.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from gridctl.daemon.config import DaemonConfig, check_security, parse_listen
from gridctl.inventory.state import STATE_DIR
from gridctl.provision.render import quote_systemd
from gridctl.templating import build_environment

# what ProtectHome= hides and PrivateTmp= replaces (systemd.exec(5))
HIDDEN_BY_PROTECT_HOME = ("/home", "/root", "/run/user")
HIDDEN_BY_PRIVATE_TMP = ("/tmp", "/var/tmp")
PRIVILEGED_PORTS_BELOW = 1024  # binding one needs CAP_NET_BIND_SERVICE
UNIT_TEMPLATE = Path("daemon") / "gridctl-daemon.service.j2"


@dataclass(frozen=True)
class UnitSpec:
    """Everything the template renders from."""

    user: str
    inventory: str
    state_dir: str
    exec_start: str
    token_file: str | None
    privileged_port: bool  # AmbientCapabilities=CAP_NET_BIND_SERVICE, no PrivateUsers=
    protect_home: str  # "yes", or "tmpfs" when something under a home directory is bound back
    bind_read_only: tuple[str, ...]  # hidden paths the daemon reads, bound back read-only
    state_hidden: bool  # .state is under a hidden path: BindPaths= rather than ReadWritePaths=
    drain_timeout_s: int


def build_unit(
    *,
    inventory: str,
    python: Iterable[str],
    gridctl: Iterable[str],
    listen: str,
    region: str | None,
    workers: int,
    slo_policy: str,
    user: str,
    token_file: str | None,
    drain_timeout_s: int = 30,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    tokens: str | None = None,
    insecure_plaintext: bool = False,
) -> UnitSpec:
    """The unit for a daemon reading ``inventory`` (an absolute, resolved path), started by the
    ``gridctl`` command (absolute, resolved) and running from the ``python`` paths (interpreter,
    standard library, site-packages, gridctl's source). The TLS files and the token file
    (absolute paths) are passed on to ``daemon run`` and readable in the sandbox. Raises
    UsageError for a bad ``listen``, and where ``daemon run`` would refuse to start (off
    loopback: a token, from ``token_file`` or ``tokens``, and TLS or ``insecure_plaintext``)."""
    files = _DaemonFiles(tls_cert, tls_key, tls_client_ca, tokens)
    port = _check_like_daemon_run(inventory, listen, token_file, files, insecure_plaintext)
    command = list(gridctl)
    state_dir = str(PurePosixPath(inventory) / STATE_DIR)
    read = [inventory, str(PurePosixPath(command[0]).parent), *python, *files.given()]
    hidden = [p for p in _outermost(read) if _hidden(p)]
    args = [*command, *_daemon_run_args(listen, region, slo_policy, workers, files, insecure_plaintext)]
    return UnitSpec(
        user=user,
        inventory=inventory,
        state_dir=state_dir,
        exec_start=" ".join(quote_systemd(a) for a in args),
        token_file=token_file,
        privileged_port=0 < port < PRIVILEGED_PORTS_BELOW,
        protect_home="tmpfs" if any(_under(p, HIDDEN_BY_PROTECT_HOME) for p in hidden) else "yes",
        bind_read_only=tuple(hidden),
        state_hidden=_hidden(state_dir),
        drain_timeout_s=drain_timeout_s,
    )


class _DaemonFiles(NamedTuple):
    """The files ``daemon run`` is given (absolute paths), each when given."""

    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    tokens: str | None

    def given(self) -> list[str]:
        return [f for f in self if f]

    def flags(self) -> list[str]:
        pairs = zip(("--tls-cert", "--tls-key", "--tls-client-ca", "--tokens"), self, strict=True)
        return [word for flag, value in pairs if value for word in (flag, value)]


def _check_like_daemon_run(
    inventory: str, listen: str, token_file: str | None, files: _DaemonFiles, insecure_plaintext: bool
) -> int:
    """The port of ``listen``; UsageError for a bad ``listen`` and where ``daemon run`` would
    refuse to start with these settings."""
    host, port = parse_listen(listen)
    check_security(
        DaemonConfig(
            Path(inventory),
            host,
            port,
            token="from the EnvironmentFile" if token_file else None,  # its content is not read here
            tokens_file=Path(files.tokens) if files.tokens else None,
            tls_cert=Path(files.tls_cert) if files.tls_cert else None,
            tls_key=Path(files.tls_key) if files.tls_key else None,
            tls_client_ca=Path(files.tls_client_ca) if files.tls_client_ca else None,
            insecure_plaintext=insecure_plaintext,
        )
    )
    return port


def _daemon_run_args(
    listen: str,
    region: str | None,
    slo_policy: str,
    workers: int,
    files: _DaemonFiles,
    insecure_plaintext: bool,
) -> list[str]:
    """``daemon run`` and its options as the unit passes them (defaults left out)."""
    args = ["daemon", "run", "--listen", listen]
    if region:
        args += ["--region", region]
    if slo_policy != "best-effort":
        args += ["--slo-policy", slo_policy]
    args += ["--workers", str(workers), *files.flags()]
    if insecure_plaintext:
        args.append("--insecure-plaintext")
    return args


def _under(path: str, roots: Iterable[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(r) or PurePosixPath(r) in p.parents for r in roots)


def _hidden(path: str) -> bool:
    return _under(path, HIDDEN_BY_PROTECT_HOME + HIDDEN_BY_PRIVATE_TMP)


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths, without those inside another one of them, sorted."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(o != p and _under(p, [o]) for o in unique)]


def gridctl_command() -> list[str]:
    """How the unit starts gridctl: the ``gridctl`` on PATH, else this Python's ``-m gridctl``."""
    found = shutil.which("gridctl")  # resolved: pipx's ~/.local/bin/gridctl is a link into its venv
    return [os.path.realpath(found)] if found else [sys.executable, "-m", "gridctl"]


def python_paths() -> list[str]:
    """Where this Python and gridctl run from: the daemon reads the same files."""
    import gridctl

    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(sys.executable).resolve().parent.parent),
        str(Path(gridctl.__file__).resolve().parent.parent),
        # not sys.path[0]: the script's directory, or the current one under -m (say a home)
        *(p for p in sys.path[1:] if Path(p).is_absolute()),
    ]
    return sorted({os.path.realpath(p) for p in candidates if os.path.isdir(p)})


_PATH_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def quote_path(value: object) -> str:
    """One path (or NAME=path) word of a unit file: specifiers escaped, quoted when needed."""
    text = str(value).replace("%", "%%")
    if _PATH_PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(templates_dir: Path, spec: UnitSpec) -> str:
    """The unit text; raises OSError or jinja2.TemplateError (with ``lineno``)."""
    env = build_environment(filters={"sdpath": quote_path, "q": lambda v: shlex.quote(str(v))})
    template = env.from_string((templates_dir / UNIT_TEMPLATE).read_text(encoding="utf-8"))
    return template.render(unit=spec)
