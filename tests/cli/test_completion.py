"""Shell completion through each shell's protocol, as its script drives gridctl: bash
(COMP_WORDS / COMP_CWORD), zsh and fish (_TYPER_COMPLETE_ARGS), plus the real bash once."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli

HEAVY = ("paramiko", "httpx", "jinja2", "pynvml", "uvloop", "rich")


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridctl"],
        capture_output=True,
        text=True,
        env=cli_env(**env),
        timeout=30,
        cwd=REPO,
    )


def bash(line: str) -> list[str]:
    """What bash's script gets: COMP_WORDS as one string, COMP_CWORD the word being completed."""
    words = shlex.split(line)
    cword = len(words) if line.endswith(" ") else len(words) - 1
    proc = _run({"COMP_WORDS": line, "COMP_CWORD": str(cword), "_GRIDCTL_COMPLETE": "complete_bash"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def zsh(line: str) -> list[str]:
    proc = _run({"_TYPER_COMPLETE_ARGS": line, "_GRIDCTL_COMPLETE": "complete_zsh"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("_arguments '*: :((") and out.endswith("))'"), out
    return [w.strip('"').split(":", 1)[0] for w in out[len("_arguments '*: :((") : -3].split()]


def fish(line: str) -> list[str]:
    env = {"_TYPER_COMPLETE_ARGS": line, "_GRIDCTL_COMPLETE": "complete_fish"}
    proc = _run({**env, "_TYPER_COMPLETE_FISH_ACTION": "get-args"})
    assert proc.returncode == 0, proc.stderr
    return [ln.split("\t", 1)[0] for ln in proc.stdout.splitlines() if ln]


@pytest.mark.parametrize("shell", [bash, zsh, fish])
def test_site_names_in_every_shell(shell, inv: Path) -> None:  # type: ignore[no-untyped-def]
    assert shell(f"gridctl -i {inv} site show phl-") == ["phl-co-12", "phl-edge-04", "phl-pop-01"]


def test_names_and_values_from_the_inventory(inv: Path) -> None:
    i = f"gridctl -i {inv}"
    assert bash(f"{i} node rm fra-pop-01 ") == ["fra-pop-01-gpu-01", "fra-pop-01-gpu-02"]
    assert bash(f"{i} region show eu-") == ["eu-de", "eu-de-sovereign", "eu-fr"]
    assert bash(f"{i} route test --from us-") == ["us-central", "us-east", "us-phl"]
    assert "llama-3.1-70b-instruct" in bash(f"{i} route test --from us-east --model llama")
    assert bash(f"{i} site ls region:eu-d") == ["region:eu-de", "region:eu-de-sovereign"]
    assert bash(f"{i} site ls fra-pop-01,!nw") == ["fra-pop-01,!nwk-co-03"]
    assert bash(f"{i} site add x --region eu-f") == ["eu-fr"]
    assert bash(f"{i} lab fail nyc-") == ["nyc-pop-01"]


def test_enumerated_values(inv: Path) -> None:
    i = f"gridctl -i {inv}"
    assert bash(f"{i} route render --format ") == ["envoy", "haproxy", "json", "nginx", "yaml"]
    assert bash(f"{i} sim --policy grid,ne") == ["grid,nearest"]
    assert "voice-burst" in bash(f"{i} sim --profile ")
    assert bash(f"{i} site ls -o ") == ["table", "wide", "json", "yaml", "name"]
    assert bash(f"{i} lab fail nyc-pop-01 ") == ["ok", "503", "hang", "drop", "slow"]
    assert bash("gridctl completion ") == ["bash", "zsh", "fish"]


def test_inventory_option_after_the_command_and_from_the_environment(inv: Path) -> None:
    assert bash(f"gridctl site show -i {inv} ber") == ["ber-edge-01"]
    words = "gridctl site show ber"
    proc = _run(
        {
            "COMP_WORDS": words,
            "COMP_CWORD": "3",
            "_GRIDCTL_COMPLETE": "complete_bash",
            "GRIDCTL_INVENTORY": str(inv),
        }
    )
    assert proc.stdout.split() == ["ber-edge-01"]


def test_broken_and_refused_files_give_fewer_names_never_a_hang(inv: Path, tmp_path: Path) -> None:
    os.mkfifo(inv / "sites" / "pipe.yaml")
    (inv / "sites" / "fra-pop-01.yaml").write_text("nodes: [\n", encoding="utf-8")
    secret = tmp_path / "secret"
    secret.write_text("nodes: [{name: LEAKED-NODE}]\n", encoding="utf-8")
    (inv / "sites" / "evil.yaml").symlink_to(secret)
    nodes = bash(f"gridctl -i {inv} node trust ")  # a FIFO read would hang: _run times out
    assert "ber-edge-01-gpu-01" in nodes
    assert "LEAKED-NODE" not in nodes
    assert not any(n.startswith("fra-pop-01-") for n in nodes)
    assert bash(f"gridctl -i {tmp_path / 'nowhere'} site show ") == []


def test_completion_imports_no_ssh_http_or_template_library(inv: Path) -> None:
    probe = (
        "import sys\nfrom gridctl.cli.main import run\ntry:\n    run([])\nexcept SystemExit:\n    pass\n"
        f"print('loaded:', *sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    for line in (f"gridctl -i {inv} node rm fra-pop-01 ", f"gridctl -i {inv} route render --format "):
        env = {"COMP_WORDS": line, "COMP_CWORD": str(len(line.split())), "_GRIDCTL_COMPLETE": "complete_bash"}
        proc = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            env=cli_env(**env),
            timeout=30,
            cwd=REPO,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == "loaded:", proc.stdout
        assert "fra-pop-01-gpu-01" in proc.stdout or "nginx" in proc.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_command_prints_the_script(shell: str) -> None:
    r = run_cli("completion", shell)
    assert r.rc == 0, r
    assert f"_GRIDCTL_COMPLETE=complete_{shell}" in r.out
    bad = run_cli("completion", "tcsh")
    assert bad.rc == 2, bad
    assert "'tcsh' is not one of" in bad.err


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_real_bash_completes_through_the_printed_script(inv: Path, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "gridctl"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m gridctl "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    script = (
        "source <(gridctl completion bash)\n"
        f"COMP_WORDS=(gridctl -i {shlex.quote(str(inv))} site show phl-); COMP_CWORD=5\n"
        "_gridctl_completion gridctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = cli_env(PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=30, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["phl-co-12", "phl-edge-04", "phl-pop-01"]
