"""paramiko and httpx imported without invoke and httpx's command-line client (fleet/libs.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, cli_env

CODE = """
import sys
from gridctl.fleet.libs import load_httpx, load_paramiko
paramiko = load_paramiko()
httpx = load_httpx()
assert paramiko.Transport and httpx.Client
extras = ("invoke", "rich", "pygments")
left_out = sorted(m for m in sys.modules if m.split(".")[0] in extras or m == "httpx._main")
assert not left_out, left_out
assert load_paramiko() is paramiko and load_httpx() is httpx
import invoke  # hidden only while paramiko was first imported: still importable
import httpx._main
print("ok")
"""


def test_paramiko_and_httpx_load_without_their_extras() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=cli_env(), cwd=REPO
    )
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
