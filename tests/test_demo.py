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
    # a proxy in the environment (a dead one) must not catch the demo's requests to its own daemon
    proxy = "http://127.0.0.1:9"
    env = cli_env(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, ALL_PROXY=proxy, http_proxy=proxy, all_proxy=proxy)
    r = run_cli(
        "demo", "--per-region", "3", "--speed", "5", "--sim-seconds", "20", "-o", "json", env=env, timeout=300
    )
    assert r.rc == 0, r
    data = json.loads(r.out)
    sent = data["requests"]
    assert len(sent) == 6 and all(s["status"] == 200 for s in sent)
    assert all(s["site"] in EU for s in sent if s["region"] == "eu-de")
    assert all(s["site"] not in EU for s in sent if s["region"] == "us-east")
    assert all(s["why"] for s in sent)
    for s in sent:  # the counts add up: every excluded site once in the total
        m = re.search(r"(\d+) excluded \(([^)]*)\)", s["why"])
        assert m, s["why"]
        total, breakdown = int(m.group(1)), m.group(2).split("; ")
        counts = [int(part.rsplit(" ", 1)[1]) for part in breakdown[0].split(", ")]
        both = int(breakdown[1].split()[0]) if len(breakdown) > 1 else 0
        assert sum(counts) == total + both and max(counts) <= total, s["why"]
    # from Frankfurt, phl-edge-04 is both drained and outside the EU: once in the 9, and said so
    eu = next(s["why"] for s in sent if s["region"] == "eu-de")
    assert "9 excluded (sovereignty 9, drained 1; 1 for both)" in eu, eu
    assert [p["policy"] for p in data["simulation"]["policies"]] == ["grid", "central"]
    url = re.search(r"daemon at (http://127\.0\.0\.1:\d+)", r.err).group(1)  # type: ignore[union-attr]
    assert _refuses(url)


@pytest.mark.parametrize(
    ("reasons", "summary"),
    [
        ([], "0 excluded"),
        (
            [["drained"], ["jurisdiction US not allowed for eu-de data (EU)"]],
            "2 excluded (drained 1, sovereignty 1)",
        ),
        (
            [["jurisdiction US not allowed"]] * 2 + [["drained", "jurisdiction US not allowed"]],
            "3 excluded (sovereignty 3, drained 1; 1 for both)",
        ),
        (
            [
                ["drained", "last health check failed", "jurisdiction FR not allowed"],
                ["drained"],
                ["round trip 90 ms"],
            ],
            "3 excluded (drained 2, over SLO 1, sovereignty 1, unhealthy 1; 1 for more than one reason)",
        ),
    ],
)
def test_excluded_summary_counts_each_site_once(reasons: list[list[str]], summary: str) -> None:
    from gridctl.demo import build_excluded_summary

    assert build_excluded_summary([{"site": f"s{i}", "reasons": r} for i, r in enumerate(reasons)]) == summary


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


def test_demo_next_steps_carry_i_when_the_inventory_is_not_the_default(inv) -> None:  # type: ignore[no-untyped-def]
    args = ("demo", "--per-region", "1", "--speed", "5", "--sim-seconds", "5")
    r = run_cli(*args, timeout=300)  # from the repository: ./inventory is the default
    assert r.rc == 0, r
    assert "Next: gridctl lab up, gridctl daemon run, gridctl sim --plot sim.svg (see README)" in r.out
    r = run_cli(*args, inventory=inv, timeout=300)
    assert r.rc == 0, r
    g = f"gridctl -i {inv.resolve()} "
    assert f"Next: {g}lab up, {g}daemon run, {g}sim --plot sim.svg (see README)" in r.out, r.out
