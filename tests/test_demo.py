"""``gridctl demo`` end to end: lab, daemon, requests, simulation; nothing left behind."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, cli_env, run_cli, sigint_default

EU = {"ber-edge-01", "fra-pop-01", "muc-co-02", "lyo-co-05", "par-edge-02", "par-pop-01"}


def _refuses(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=2)
    except httpx.HTTPError:
        return True
    return False


def test_demo_end_to_end(tmp_path) -> None:
    r = run_cli("demo", "--per-region", "3", "--speed", "5", "--sim-seconds", "20", "-o", "json", timeout=300)
    assert r.rc == 0, r
    data = json.loads(r.out)
    sent = data["requests"]
    assert len(sent) == 6 and all(s["status"] == 200 for s in sent)
    assert all(s["site"] in EU for s in sent if s["region"] == "eu-de")
    assert all(s["site"] not in EU for s in sent if s["region"] == "us-east")
    assert all(s["why"] for s in sent)
    assert [p["policy"] for p in data["simulation"]["policies"]] == ["grid", "central"]
    url = re.search(r"daemon at (http://127\.0\.0\.1:\d+)", r.err).group(1)  # type: ignore[union-attr]
    assert _refuses(url)


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_demo_ctrl_c_stops_everything(sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridctl", "demo", "--speed", "0.2", "--per-region", "4"],
        preexec_fn=sigint_default,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )
    assert proc.stderr is not None
    url = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"daemon at (http://127\.0\.0\.1:\d+)", line)
        if m:
            url = m.group(1)
            break
    assert url, "the demo never started its daemon"
    time.sleep(0.5)  # requests in flight
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert _refuses(url)
