"""Inventory reads refuse files outside the inventory, non-regular files and huge files,
before parsing, and never quote a refused file's content."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gridctl.core.errors import UsageError
from gridctl.inventory.files import (
    DEFAULT_MAX_FILE_BYTES,
    RefusedFileError,
    parse_max_file_bytes,
    read_inventory_text,
)
from tests.conftest import cli_env, run_cli

SECRET = "TOPSECRET-3f9a"


def _secret_file(tmp_path: Path) -> Path:
    """A file outside the inventory, as /etc/shadow or an SSH key would be."""
    target = tmp_path / "outside" / "id_ed25519"
    target.parent.mkdir()
    target.write_text(f"root:{SECRET}:19000:0:::\n  broken: [\n", encoding="utf-8")
    return target


def test_symlink_out_of_the_inventory_is_refused_without_quoting_it(inv: Path, tmp_path: Path) -> None:
    (inv / "sites" / "x.yaml").symlink_to(_secret_file(tmp_path))
    r = run_cli("inventory", "validate", inventory=inv, timeout=30)
    assert r.rc == 5, r
    assert "sites/x.yaml: cannot read: resolves to" in r.err
    assert "outside the inventory directory" in r.err
    assert SECRET not in r.err + r.out
    assert "root:" not in r.err


def test_symlink_to_dev_zero_is_refused_not_read_forever(inv: Path) -> None:
    (inv / "sites" / "z.yaml").symlink_to("/dev/zero")
    r = run_cli("inventory", "validate", inventory=inv, timeout=30)
    assert r.rc == 5, r
    assert "sites/z.yaml: cannot read: resolves to /dev/zero, outside the inventory" in r.err


def test_fifo_in_sites_is_refused_not_waited_on(inv: Path) -> None:
    os.mkfifo(inv / "sites" / "pipe.yaml")
    r = run_cli("inventory", "validate", inventory=inv, timeout=30)  # a hang fails by TimeoutExpired
    assert r.rc == 5, r
    assert "sites/pipe.yaml: cannot read: a FIFO, not a regular file: refused" in r.err


def test_grid_yaml_as_a_fifo_is_refused(inv: Path) -> None:
    (inv / "grid.yaml").unlink()
    os.mkfifo(inv / "grid.yaml")
    r = run_cli("site", "ls", inventory=inv, timeout=30)
    assert r.rc == 5, r
    assert "grid.yaml: cannot read: a FIFO, not a regular file" in r.err


def test_a_file_over_the_limit_is_refused_before_parsing(inv: Path) -> None:
    big = inv / "sites" / "big.yaml"
    with open(big, "w", encoding="utf-8") as fh:
        fh.write("name: big\nitems:\n")
        line = f"  - {SECRET}\n"
        fh.write(line * (DEFAULT_MAX_FILE_BYTES // len(line) + 1))
    size = big.stat().st_size
    r = run_cli("inventory", "validate", inventory=inv, timeout=30)
    assert r.rc == 5, r
    limit = DEFAULT_MAX_FILE_BYTES
    assert f"sites/big.yaml: cannot read: {size} bytes, over the limit of {limit} bytes" in r.err
    assert "GRIDCTL_MAX_FILE_BYTES" in r.err
    assert SECRET not in r.err


def test_the_limit_comes_from_the_environment(inv: Path) -> None:
    size = (inv / "grid.yaml").stat().st_size
    r = run_cli("site", "ls", inventory=inv, env=cli_env(GRIDCTL_MAX_FILE_BYTES=str(size - 1)))
    assert r.rc == 5, r
    assert f"grid.yaml: cannot read: {size} bytes, over the limit of {size - 1} bytes" in r.err
    ok = run_cli("site", "ls", "-o", "name", inventory=inv, env=cli_env(GRIDCTL_MAX_FILE_BYTES="1_000_000"))
    assert ok.rc == 0, ok
    assert "nyc-pop-01" in ok.out


@pytest.mark.parametrize("value", ["abc", "0", "-5", "4MiB"])
def test_a_bad_limit_is_a_usage_error(inv: Path, value: str) -> None:
    r = run_cli("site", "ls", inventory=inv, env=cli_env(GRIDCTL_MAX_FILE_BYTES=value))
    assert r.rc == 2, r
    assert f"error: GRIDCTL_MAX_FILE_BYTES={value!r} is not a positive number of bytes" in r.err
    assert "hint:" in r.err


def test_a_write_beside_a_refused_file_never_reads_it(inv: Path, tmp_path: Path) -> None:
    # refused (5), or let through with a warning naming the problem (a write that touches
    # no broken file): either way the refused file is named, never quoted, never written
    secret = _secret_file(tmp_path)
    before = secret.read_bytes()
    (inv / "sites" / "x.yaml").symlink_to(secret)
    r = run_cli("site", "drain", "ber-edge-01", inventory=inv, timeout=30)
    assert r.rc in (0, 5), r
    assert "sites/x.yaml: cannot read: resolves to" in r.err
    assert SECRET not in r.err + r.out
    assert secret.read_bytes() == before
    assert (inv / "sites" / "x.yaml").is_symlink()


def test_a_symlink_inside_the_inventory_is_read(inv: Path) -> None:
    shared = inv / "shared"
    shared.mkdir()
    shutil.move(inv / "sites" / "ber-edge-01.yaml", shared / "ber-edge-01.yaml")
    (inv / "sites" / "ber-edge-01.yaml").symlink_to("../shared/ber-edge-01.yaml")
    r = run_cli("site", "show", "ber-edge-01", "-o", "json", inventory=inv)
    assert r.rc == 0, r
    assert '"ber-edge-01"' in r.out


def test_an_inventory_reached_through_a_symlink_is_read(inv: Path, tmp_path: Path) -> None:
    link = tmp_path / "inv-link"
    link.symlink_to(inv)
    r = run_cli("inventory", "validate", inventory=link)
    assert r.rc == 0, r


# ------------------------------------------------------------------ the reader itself


def test_text_reads_as_text_mode_did(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes("name: a\r\nnote: caf\u00e9\rend: 1\n".encode())
    assert read_inventory_text(tmp_path, "a.yaml", {}) == "name: a\nnote: caf\u00e9\nend: 1\n"


def test_missing_and_undecodable_files_raise_as_open_did(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_inventory_text(tmp_path, "nope.yaml", {})
    (tmp_path / "b.yaml").write_bytes(b"name: \xff\n")
    with pytest.raises(UnicodeDecodeError):
        read_inventory_text(tmp_path, "b.yaml", {})


def test_a_device_inside_the_root_is_refused() -> None:
    with pytest.raises(RefusedFileError, match="a character device, not a regular file"):
        read_inventory_text(Path("/dev"), "zero", {})


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(RefusedFileError, match="a directory, not a regular file"):
        read_inventory_text(tmp_path, "d.yaml", {})


def test_dotdot_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "inv"
    root.mkdir()
    (tmp_path / "x.yaml").write_text("a: 1\n", encoding="utf-8")
    with pytest.raises(RefusedFileError, match="outside the inventory directory"):
        read_inventory_text(root, "../x.yaml", {})


def test_exactly_the_limit_is_read(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: 1\n", encoding="utf-8")
    assert read_inventory_text(tmp_path, "a.yaml", {"GRIDCTL_MAX_FILE_BYTES": "5"}) == "a: 1\n"
    with pytest.raises(RefusedFileError, match="5 bytes, over the limit of 4 bytes"):
        read_inventory_text(tmp_path, "a.yaml", {"GRIDCTL_MAX_FILE_BYTES": "4"})


def test_parse_max_file_bytes() -> None:
    assert parse_max_file_bytes({}) == DEFAULT_MAX_FILE_BYTES == 4 * 1024 * 1024
    assert parse_max_file_bytes({"GRIDCTL_MAX_FILE_BYTES": " 8_388_608 "}) == 8388608
    with pytest.raises(UsageError):
        parse_max_file_bytes({"GRIDCTL_MAX_FILE_BYTES": "1.5"})


def test_a_file_the_user_names_is_read_bounded_wherever_it_lives(tmp_path: Path) -> None:
    """Scenario files (`sim --profile FILE`) may live anywhere, but are read as inventory files
    are: a regular file, at most GRIDCTL_MAX_FILE_BYTES, a FIFO refused without blocking."""
    import os

    from gridctl.inventory.files import RefusedFileError, read_bounded_text

    scenario = tmp_path / "elsewhere" / "s.yaml"
    scenario.parent.mkdir()
    scenario.write_text("name: s\r\n")
    assert read_bounded_text(scenario) == "name: s\n"
    link = tmp_path / "link.yaml"
    link.symlink_to(scenario)  # outside any inventory: fine for a file the user names
    assert read_bounded_text(link) == "name: s\n"
    with pytest.raises(RefusedFileError, match="over the limit of 4 bytes"):
        read_bounded_text(scenario, {"GRIDCTL_MAX_FILE_BYTES": "4"})
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(RefusedFileError, match="a FIFO, not a regular file"):
        read_bounded_text(fifo)
