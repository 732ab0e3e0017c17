"""The probe script for real: through ``sh -c`` with the stand-in nvidia-smi,
journalctl and dmesg first on PATH, one run per recorded state."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gridctl.core.health.classify import classify_node
from gridctl.core.health.model import NodeProbe, Status
from gridctl.core.health.nvidia_smi import build_node_probe_command, parse_node_probe
from tests.health.recorded import EXPECTED, FIXTURES, STATES

BIN = FIXTURES / "bin"
SH = shutil.which("sh") or "/bin/sh"


def run_probe(
    state: str | None, timeout_s: float = 5, path: str | None = None, **env: str
) -> tuple[NodeProbe, subprocess.CompletedProcess[str]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCTL_")}
    environ["PATH"] = path or f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    if state is not None:
        environ["GRIDCTL_FAKE_GPU_STATE"] = state
    environ.update(env)
    proc = subprocess.run(
        [SH, "-c", build_node_probe_command(timeout_s)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    return parse_node_probe(proc.stdout, proc.stderr, proc.returncode), proc


@pytest.mark.parametrize("state", STATES)
def test_each_state_classifies_as_expected(state: str) -> None:
    model, count, status = EXPECTED[state]
    probe, proc = run_probe(state, timeout_s=1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("@@gridctl:end\n")
    health = classify_node(probe, model, count)
    assert health.status == status, (health.reasons, proc.stdout[-2000:])


def test_healthy_node_reads_every_section() -> None:
    probe, proc = run_probe("healthy-h100x8")
    for section in ("gpu", "remap", "temperature", "xid"):
        assert f"@@gridctl:section {section}\n" in proc.stdout
    assert "@@gridctl:source journalctl" in proc.stdout
    assert len(probe.gpus) == 8
    assert {g.slowdown_temperature_c for g in probe.gpus} == {89.0}
    assert {g.remapped_rows_pending for g in probe.gpus} == {False}
    assert probe.kernel_log_error is None and probe.xids == ()


def test_old_driver_falls_back_to_clocks_throttle_reasons() -> None:
    probe, proc = run_probe("legacy-l40sx4")
    assert "@@gridctl:fallback clocks_throttle_reasons.active" in proc.stdout
    assert probe.smi_error is None
    assert [g.driver_version for g in probe.gpus] == ["525.125.06"] * 4
    assert {g.clock_event_reasons for g in probe.gpus} == {0}


def test_hang_is_cut_at_the_timeout() -> None:
    probe, proc = run_probe("hang", timeout_s=1)
    assert probe.smi_error == "nvidia-smi hung (killed after 1 s)"
    assert "@@gridctl:section remap" not in proc.stdout  # no second wait after a hang


def test_driver_not_loaded_skips_the_other_queries() -> None:
    probe, proc = run_probe("driver-not-loaded")
    assert probe.smi_error is not None
    assert probe.smi_error.startswith("NVIDIA driver not loaded: NVIDIA-SMI has failed")
    assert "@@gridctl:rc 9" in proc.stdout
    assert "@@gridctl:section temperature" not in proc.stdout


def test_xid79_found_through_dmesg_when_the_journal_is_unreadable() -> None:
    probe, proc = run_probe("xid79", GRIDCTL_FAKE_JOURNAL="off")
    assert "@@gridctl:source dmesg" in proc.stdout
    assert "@@gridctl:uptime " in proc.stdout
    assert [(x.xid, x.pci) for x in probe.xids] == [(79, "0000:5d:00")]
    health = classify_node(probe, "H100", 8)
    assert health.status == Status.FAILED
    assert "XID 79 on PCI 0000:5d:00: GPU has fallen off the bus." in health.reasons


def _tools_without_nvidia_smi(tmp_path: Path) -> str:
    """A PATH holding the stand-in journalctl/dmesg and the few tools the script
    and stand-ins use, but no nvidia-smi (even on a host that has one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("journalctl", "dmesg", "_state.sh"):
        (bin_dir / name).symlink_to(BIN / name)
    for tool in ("timeout", "cut", "grep", "tail", "cat", "awk", "readlink", "dirname", "head"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_nvidia_smi_missing(tmp_path: Path) -> None:
    probe, proc = run_probe("healthy-h100x8", path=_tools_without_nvidia_smi(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert probe.smi_error == "nvidia-smi not found"
    health = classify_node(probe, "H100", 8)
    assert (health.status, health.reasons) == (Status.UNKNOWN, ("nvidia-smi not found",))


def test_state_file_beside_a_per_node_bin(tmp_path: Path) -> None:
    """A test sshd node can have its own bin/ of symlinks and a state file."""
    node = tmp_path / "node7"
    (node / "bin").mkdir(parents=True)
    for name in ("nvidia-smi", "journalctl", "dmesg"):
        (node / "bin" / name).symlink_to(BIN / name)
    (node / "state").write_text("hot\n")
    path = f"{node / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    probe, _ = run_probe(None, path=path)
    assert classify_node(probe, "H100", 8).status == Status.DEGRADED


def test_stand_in_refuses_unknown_states_and_queries() -> None:
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    nostate = subprocess.run([str(BIN / "nvidia-smi")], capture_output=True, text=True, env=env, timeout=10)
    assert nostate.returncode == 255
    assert "unknown state ''" in nostate.stderr and "healthy-h100x8" in nostate.stderr
    env["GRIDCTL_FAKE_GPU_STATE"] = "healthy-l4x2"
    other = subprocess.run(
        [str(BIN / "nvidia-smi"), "--query-gpu=index,name", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        env=env,
        timeout=10,
    )
    assert other.returncode == 2
    assert "differ from the recording" in other.stderr


@pytest.mark.parametrize("shell", [s for s in ("sh", "dash", "bash") if shutil.which(s)])
def test_script_parses_in_each_installed_shell(shell: str) -> None:
    proc = subprocess.run(
        [shell, "-n", "-c", build_node_probe_command()], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 0, proc.stderr
