"""paramiko imported without invoke (fleet/libs.py); health's probes without httpx."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, cli_env

CODE = """
import sys
from gridctl.fleet.libs import load_paramiko
paramiko = load_paramiko()
assert paramiko.Transport
import gridctl.fleet.healthcheck
left_out = sorted(m for m in sys.modules if m.split(".")[0] in ("invoke", "httpx", "rich", "pygments"))
assert not left_out, left_out
assert load_paramiko() is paramiko
import invoke  # hidden only while paramiko was first imported: still importable
print("ok")
"""


def test_paramiko_loads_without_invoke() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=cli_env(), cwd=REPO
    )
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
