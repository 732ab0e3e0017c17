"""The remote scripts and the facts command, run for real with the local ``sh``."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from gridctl.provision.facts import build_facts_command, parse_df, parse_facts, parse_sum_line
from gridctl.provision.plan import FileChange
from gridctl.provision.render import RenderedFile
from gridctl.provision.scripts import (
    BACKED_UP,
    COMMITTED,
    SCRIPT_LIMIT,
    backup_path,
    build_cleanup_command,
    build_fetch_command,
    build_restore_script,
    build_upload_scripts,
    parse_fetch,
)

NASTY = 'it\'s "quoted" $HOME `id` \\ back\nslash; rm -rf / && echo pwned\n'


def sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


def change(prefix: Path, rel: str, content: bytes, action: str, mode: int = 0o644) -> FileChange:
    dest = str(prefix / rel)
    return FileChange(RenderedFile(f"templates/x/{rel}.j2", dest, content, mode, ("restart",)), action)


def test_upload_commits_atomically_with_backups_and_restore_puts_them_back(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc" / "old.env").write_bytes(b"OLD=1\n")
    changes = [
        change(prefix, "etc/old.env", NASTY.encode(), "update", 0o600),
        change(prefix, "usr/local/bin/new tool", b"#!/bin/sh\necho hi\n", "create", 0o755),
    ]
    scripts = build_upload_scripts(changes, str(prefix), None, "t0k3n")
    assert len(scripts) == 1  # small files: one round trip
    res = sh(scripts[0])
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [BACKED_UP, COMMITTED]
    assert (prefix / "etc" / "old.env").read_bytes() == NASTY.encode()  # not a byte read by the shell
    assert (prefix / "etc" / "old.env").stat().st_mode & 0o777 == 0o600
    assert (prefix / "usr/local/bin/new tool").stat().st_mode & 0o777 == 0o755
    assert Path(backup_path(str(prefix), str(prefix / "etc" / "old.env"))).read_bytes() == b"OLD=1\n"
    assert not list(prefix.rglob(".*gridctl-t0k3n"))  # no temp file left

    res = sh(build_restore_script(changes, str(prefix)))
    assert res.returncode == 0, res.stderr
    assert (prefix / "etc" / "old.env").read_bytes() == b"OLD=1\n"
    assert not (prefix / "usr/local/bin/new tool").exists()


def test_a_failed_upload_leaves_nothing_behind(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc" / "a.env").write_bytes(b"A=1\n")
    (prefix / "blocked").write_text("a file where a directory is needed")
    changes = [
        change(prefix, "etc/a.env", b"A=2\n", "update"),
        change(prefix, "blocked/b.env", b"B=1\n", "create"),
    ]
    res = sh(build_upload_scripts(changes, str(prefix), None, "tok")[0])
    assert res.returncode != 0 and BACKED_UP not in res.stdout
    assert (prefix / "etc" / "a.env").read_bytes() == b"A=1\n"
    assert not list(prefix.rglob(".*gridctl-tok"))


def test_large_files_are_split_into_several_commands(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    big = os.urandom(120_000)
    changes = [change(prefix, "var/big.bin", big, "create"), change(prefix, "etc/small", b"x\n", "create")]
    scripts = build_upload_scripts(changes, str(prefix), None, "tok")
    assert len(scripts) > 1 and all(len(s) <= SCRIPT_LIMIT + 200 for s in scripts)
    for script in scripts[:-1]:
        assert sh(script).returncode == 0
        assert not (prefix / "var" / "big.bin").exists()  # nothing visible until the commit
    res = sh(scripts[-1])
    assert res.returncode == 0, res.stderr
    assert (prefix / "var" / "big.bin").read_bytes() == big
    assert sh(build_cleanup_command(changes, "tok")).returncode == 0


def test_owner_is_set_when_configured(tmp_path: Path) -> None:
    import grp
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    prefix = tmp_path / "root"
    changes = [change(prefix, "etc/owned", b"x\n", "create")]
    script = build_upload_scripts(changes, str(prefix), f"{user}:{group}", "tok")[0]
    assert f"chown {user}:{group} " in script
    assert sh(script).returncode == 0


def test_facts_command_reads_disk_commands_files_and_checksums(tmp_path: Path) -> None:
    present = tmp_path / "present file"
    present.write_bytes(b"hello\n")
    present.chmod(0o640)
    secret = tmp_path / "ngc.env"
    secret.write_text("NGC_API_KEY=x\n")
    paths = [str(present), str(tmp_path / "absent")]
    cmd = build_facts_command(
        paths,
        ["sh", "no-such-tool-xyz"],
        [str(secret), "/no/such/file"],
        str(tmp_path / "a" / "b"),
        gpus=False,
    )
    res = sh(cmd)
    facts = parse_facts(res.stdout, res.stderr, res.returncode, len(paths), gpus=False)
    assert facts.error is None and facts.complete, res
    assert facts.free_kb is not None and facts.free_kb > 0
    assert facts.commands["sh"] and not facts.commands["no-such-tool-xyz"] and facts.commands["sha256sum"]
    assert facts.files == {str(secret): True, "/no/such/file": False}
    here, absent = facts.sums
    assert here.exists and here.mode == 0o640 and here.sha256 == hashlib.sha256(b"hello\n").hexdigest()
    assert not absent.exists


def test_facts_command_embeds_the_gpu_probe(tmp_path: Path) -> None:
    from tests.fleet.sshd import FAKE_GPU_BIN

    env = {
        **os.environ,
        "PATH": f"{FAKE_GPU_BIN}:{os.environ['PATH']}",
        "GRIDCTL_FAKE_GPU_STATE": "healthy-l4x2",
    }
    cmd = build_facts_command([], [], [], str(tmp_path), gpus=True)
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=30)
    facts = parse_facts(res.stdout, res.stderr, res.returncode, 0, gpus=True)
    assert facts.error is None and facts.probe is not None
    assert len(facts.probe.gpus) == 2 and "L4" in facts.probe.gpus[0].name
    assert facts.probe.gpus[0].driver_version


@pytest.mark.parametrize(
    ("stdout", "error"),
    [
        ("", "facts not read: boom"),
        (
            "@@gridctl-provision:disk\n/dev/x 10 5 5 50% /\n@@gridctl-provision:sums\n",
            "facts output cut short",
        ),
        (
            "@@gridctl-provision:disk\n@@gridctl-provision:sums\nmissing\n@@gridctl-provision:end\n",
            "checksums for 1 of 2 files",
        ),
    ],
)
def test_unreadable_facts_are_an_error_not_a_crash(stdout: str, error: str) -> None:
    facts = parse_facts(stdout, "boom", 1, 2, gpus=False)
    assert facts.error is not None and facts.error.startswith(error)


def test_parsers() -> None:
    assert (
        parse_df(["Filesystem 1024-blocks Used Available Capacity Mounted on", "/dev/sda1 100 40 60 40% /"])
        == 60
    )
    assert parse_df(["df: /x: No such file or directory"]) is None
    line = parse_sum_line("755 root wheel " + "a" * 64 + "  -")
    assert (line.mode, line.user, line.group, line.sha256) == (0o755, "root", "wheel", "a" * 64)
    assert not parse_sum_line("missing").exists


def test_fetch_for_diffs(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(NASTY.encode())
    res = sh(build_fetch_command([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert parse_fetch(res.stdout, 2) == [NASTY.encode(), None]
    assert parse_fetch("garbage", 2) is None
