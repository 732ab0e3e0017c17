"""``gridctl daemon unit``: the sandboxed systemd unit, scored and verified by systemd-analyze,
and the daemon serving a request under systemd with it."""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gridctl.daemon.unit import UnitSpec, _hidden, build_unit, quote_path
from tests.conftest import run_cli
from tests.daemon.conftest import M8, chat
from tests.daemon.systemd_host import systemd_host, why_not_available
from tests.fleet.sshd import free_port

MAX_EXPOSURE = 2.5
KEY_DIRECTIVES = (
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "NoNewPrivileges=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter=@system-service",
    "SystemCallArchitectures=native",
    "MemoryDenyWriteExecute=yes",
    "ProtectKernelTunables=yes",
    "ProtectControlGroups=yes",
    "RestrictNamespaces=yes",
    "LimitNOFILE=65536",
)
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def directives(unit: str) -> list[str]:
    return [ln for ln in unit.splitlines() if ln and not ln.startswith(("#", "["))]


def analyze(unit_text: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``verify``'s result and ``security --offline``'s overall exposure for the unit."""
    path = tmp_path / "gridctl-daemon.service"
    path.write_text(unit_text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    sec = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout)
    assert found, sec.stdout + sec.stderr
    assert sec.returncode == 0, sec.stdout  # --threshold: non-zero above 2.5
    return verify, float(found.group(1))


@needs_analyze
@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--listen", "0.0.0.0:443", "--token-file", "/etc/gridctl/daemon.env", "--workers", "4")
        + ("--tls-cert", "/etc/gridctl/cert.pem", "--tls-key", "/etc/gridctl/key.pem"),
        ("--listen", "[::]:8443", "--region", "us-east", "--slo-policy", "strict")
        + ("--tokens", "/etc/gridctl/tokens", "--insecure-plaintext"),
    ],
    ids=["loopback", "port-443", "ipv6"],
)
def test_rendered_unit_verifies_and_scores_at_most_2_5(
    inv: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    r = run_cli("daemon", "unit", *args, inventory=inv)
    assert r.rc == 0, r
    verify, exposure = analyze(r.out, tmp_path)
    complaints = [ln for ln in verify.stderr.splitlines() if "gridctl-daemon" in ln]
    assert verify.returncode == 0 and not complaints, verify.stderr
    assert exposure <= MAX_EXPOSURE
    lines = directives(r.out)
    for d in KEY_DIRECTIVES:
        assert d in lines, d
    state = inv.resolve() / ".state"
    # the inventory is under /tmp (PrivateTmp= would hide it): bound back, .state read-write
    assert f"BindReadOnlyPaths={inv.resolve()}" in lines and f"BindPaths=-{state}" in lines
    assert f"ReadOnlyPaths={inv.resolve()}" in lines


def test_a_privileged_port_keeps_only_cap_net_bind_service(inv: Path) -> None:
    off = ("--tokens", "/etc/gridctl/tokens", "--insecure-plaintext")  # what off loopback needs
    low = directives(run_cli("daemon", "unit", "--listen", "0.0.0.0:443", *off, inventory=inv).out)
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in low
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in low
    assert not any(d.startswith("PrivateUsers=") for d in low)  # a user namespace would void the capability
    high = directives(run_cli("daemon", "unit", "--listen", "0.0.0.0:1024", *off, inventory=inv).out)
    assert "CapabilityBoundingSet=" in high and "AmbientCapabilities=" in high and "PrivateUsers=yes" in high
    bad = run_cli("daemon", "unit", "--listen", "0.0.0.0:http", inventory=inv)
    assert bad.rc == 2 and "expected HOST:PORT" in bad.err and bad.out == ""


def spec(
    inventory: str, python: tuple[str, ...] = ("/usr",), gridctl: str = "/opt/grid bin/gridctl"
) -> UnitSpec:
    return build_unit(
        inventory=inventory,
        python=python,
        gridctl=[gridctl],
        listen="127.0.0.1:8080",
        region=None,
        workers=1,
        slo_policy="best-effort",
        user="gridctl",
        token_file=None,
    )


@pytest.mark.parametrize(
    ("inventory", "python", "home", "binds", "state_hidden"),
    [
        ("/srv/grid", ("/usr", "/opt/venv"), "yes", (), False),
        # pipx: gridctl (resolved) and its venv in a home directory, the inventory not
        (
            "/srv/grid",
            ("/home/ops/.local/pipx/venvs/gridctl", "/usr"),
            "tmpfs",
            ("/home/ops/.local/pipx/venvs/gridctl",),
            False,
        ),
        ("/home/ops/grid", ("/usr",), "tmpfs", ("/home/ops/grid",), True),
        # a Python under ~/.pyenv and a venv in the inventory's home: each bound back, once
        (
            "/root/grid",
            ("/root/.pyenv/versions/3.11.7", "/root/.pyenv/versions/3.11.7/lib/python3.11", "/srv/venv"),
            "tmpfs",
            ("/root/.pyenv/versions/3.11.7", "/root/grid"),
            True,
        ),
        ("/var/tmp/grid", ("/usr",), "yes", ("/var/tmp/grid",), True),  # PrivateTmp= hides /var/tmp
        ("/homestead/grid", ("/usr",), "yes", (), False),  # not under /home
    ],
)
def test_paths_hidden_by_the_sandbox_are_bound_back(
    inventory: str, python: tuple[str, ...], home: str, binds: tuple[str, ...], state_hidden: bool
) -> None:
    gridctl = f"{python[0]}/bin/gridctl"
    s = spec(inventory, python, gridctl)
    assert (s.protect_home, s.bind_read_only, s.state_hidden) == (home, binds, state_hidden)
    assert s.state_dir == f"{inventory}/.state"


def test_unit_refuses_what_daemon_run_would_and_passes_tls_and_tokens_on(tmp_path: Path) -> None:
    """Off loopback the daemon needs a token and TLS (or --insecure-plaintext): a unit without
    them would fail at every start, so it is not printed; with them, they reach ExecStart=, and
    files under a hidden path (/root, /home, /tmp) are bound back read-only."""
    r = run_cli("daemon", "unit", "--listen", "0.0.0.0:8443", "--token-file", "/etc/gridctl/daemon.env")
    assert r.rc == 2 and "in plain HTTP" in r.err and "--tls-cert" in r.err, r
    r = run_cli(
        "daemon", "unit", "--listen", "0.0.0.0:8443", "--tls-cert", "/etc/c.pem", "--tls-key", "/etc/k.pem"
    )
    assert r.rc == 2 and "without a token" in r.err, r
    certs = tmp_path / "certs"
    r = run_cli(
        "daemon", "unit", "--listen", "0.0.0.0:8443", "--tokens", str(certs / "tokens"),
        "--tls-cert", str(certs / "cert.pem"), "--tls-key", str(certs / "key.pem"),
    )  # fmt: skip
    assert r.rc == 0, r
    start = next(ln for ln in r.out.splitlines() if ln.startswith("ExecStart="))
    for flag, name in (("--tls-cert", "cert.pem"), ("--tls-key", "key.pem"), ("--tokens", "tokens")):
        assert f"{flag} {certs / name}" in start, start
    bound = [ln for ln in r.out.splitlines() if ln.startswith("BindReadOnlyPaths=")]
    if _hidden(str(certs)):  # pytest's tmp_path is under /tmp, which PrivateTmp= replaces
        assert any(str(certs) in ln for ln in bound), (bound, r.out)


def test_unit_words_are_quoted_for_systemd() -> None:
    assert (
        spec("/srv/grid").exec_start
        == '"/opt/grid bin/gridctl" daemon run --listen 127.0.0.1:8080 --workers 1'
    )
    assert quote_path("/srv/my grid/.state") == '"/srv/my grid/.state"'
    assert quote_path("/srv/100%/x") == "/srv/100%%/x"  # % starts a specifier in unit files


NOT_HERE = why_not_available()
CAP_NET_BIND_SERVICE = 1 << 10


def free_privileged_port() -> int:
    """A free loopback port below 1024 (this test runs as root, so it may bind one)."""
    for port in random.sample(range(600, 1024), 424):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


@pytest.mark.skipif(NOT_HERE is not None, reason=NOT_HERE or "")
@pytest.mark.parametrize("privileged", [False, True], ids=["port-above-1024", "port-below-1024"])
def test_the_daemon_serves_under_systemd_with_the_rendered_unit(
    lab, tmp_path: Path, privileged: bool
) -> None:
    """The rendered unit, as written, installed and started by systemd as user nobody: the
    daemon proxies a request through the sandbox, keeps calibration in .state (behind another
    user's lock file), cannot write the rest of the inventory, and holds no capability but
    CAP_NET_BIND_SERVICE for a port below 1024."""
    inventory = lab.overlay
    nobody = pwd.getpwnam("nobody")
    state = inventory / ".state"
    state.mkdir(exist_ok=True)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    # the lock an operator's own `gridctl site check` left: another user's, not writable by the daemon
    lock = state / ".gridctl.lock"
    lock.touch(mode=0o644)
    os.chown(lock, 0, 0)
    port = free_privileged_port() if privileged else free_port()
    r = run_cli(
        "daemon", "unit", "--user", "nobody", "--listen", f"127.0.0.1:{port}", "--region", "us-east",
        inventory=inventory,
    )  # fmt: skip
    assert r.rc == 0, r
    name = f"gridctl-test-{port}.service"
    with systemd_host(tmp_path) as host:
        host.install(name, r.out)
        try:
            started = host.systemctl("start", name)
            assert started.returncode == 0, started.stderr + host.journal(name)
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, lambda: host.journal(name))
            resp = httpx.post(url + "/v1/chat/completions", json=chat(), timeout=30)
            assert resp.status_code == 200, resp.text + host.journal(name)
            site = resp.headers["x-grid-site"]
            assert resp.json()["model"] == M8 and site
            pid = host.show(name, "MainPID")
            status = host.run("cat", f"/proc/{pid}/status").stdout
            caps = int(re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
            assert caps == (CAP_NET_BIND_SERVICE if privileged else 0), status
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.M) and re.search(
                r"^Seccomp:\s+2$", status, re.M
            )
            assert host.show(name, "MemoryDenyWriteExecute") == "yes"  # and CPython + uvloop ran under it
            # LimitNOFILE=65536, or the manager's own hard limit where it lacks CAP_SYS_RESOURCE
            # (systemd then sets the closest it can; its default soft limit would be 1024)
            ceiling = open_files(host.run("cat", "/proc/1/limits").stdout)[1]
            limits = host.run("cat", f"/proc/{pid}/limits").stdout
            assert open_files(limits) == (min(65536, ceiling),) * 2, limits
            # in the daemon's own mount namespace: the inventory is read-only, .state is not
            mine = ["nsenter", "-t", pid, "-m", "sh", "-c"]
            touch = host.run(*mine, f"touch {inventory}/grid.yaml {inventory}/new.yaml")
            assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch
            assert host.run(*mine, f"touch {state}/probe && rm {state}/probe").returncode == 0
            stopped = host.systemctl("stop", name)
            assert stopped.returncode == 0 and host.show(name, "Result") == "success", host.journal(name)
            log = host.journal(name)
        finally:
            host.uninstall(name)
    assert "could not keep calibration" not in log, log
    saved = state / "calibration.json"
    assert saved.exists(), log
    assert saved.stat().st_uid == nobody.pw_uid  # written by the service's user, through the sandbox
    assert json.loads(saved.read_text())["sites"][site]


def open_files(limits: str) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE from a /proc/PID/limits text."""
    found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M)
    assert found, limits
    return int(found.group(1)), int(found.group(2))


def wait_healthy(url: str, journal) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the daemon under systemd did not answer /healthz:\n{journal()}")
