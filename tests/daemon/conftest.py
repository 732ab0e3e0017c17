"""Lab sites on loopback and the daemon as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gridctl.inventory.load import load_inventory
from gridctl.lab.grid import run_lab
from tests.conftest import EXAMPLE, REPO, cli_env
from tests.fleet.sshd import free_port

M8 = "llama-3.1-8b-instruct"


@dataclass
class DaemonProc:
    proc: subprocess.Popen[str]
    url: str
    inventory: Path

    def post(self, body: dict, headers: dict | None = None, timeout: float = 30) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=timeout
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def start_daemon(
    inventory: Path,
    *args: str,
    env: dict | None = None,
    host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    **popen: Any,
) -> DaemonProc:
    """The daemon on ``host`` (polled on loopback); ``tls``: it serves https, and this context
    (trusting its CA, with a client certificate for mutual TLS) is what polls it."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gridctl",
            "-i",
            str(inventory),
            "daemon",
            "run",
            "--listen",
            f"{host}:{port}",
            "--probe-interval",
            "0.5",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=REPO,
        **popen,
    )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}: {proc.stderr.read()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1, verify=tls or True).status_code in (200, 401):
                return DaemonProc(proc, url, inventory)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("daemon did not come up")


@pytest.fixture
def lab(tmp_path: Path):
    """The example inventory's sites as lab sites (fast), with an overlay inventory."""
    with run_lab(load_inventory(EXAMPLE), speed=50.0, overlay=tmp_path / "overlay", control=False) as lab:
        yield lab


@pytest.fixture
def daemon(lab) -> Iterator[DaemonProc]:
    d = start_daemon(lab.overlay, "--region", "us-east")
    yield d
    d.stop()


def set_capacity(overlay: Path, site: str, capacity: int) -> None:
    path = overlay / "sites" / f"{site}.yaml"
    path.write_text(re.sub(r"capacity: \d+", f"capacity: {capacity}", path.read_text()))


def set_endpoint(overlay: Path, site: str, url: str) -> None:
    path = overlay / "sites" / f"{site}.yaml"
    path.write_text(re.sub(r"endpoint: .*", f"endpoint: {url}", path.read_text()))


def probed_status(d: DaemonProc, site: str, timeout: float = 10) -> dict:
    """The site's entry in /grid/status once the daemon has probed it (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = next(s for s in httpx.get(d.url + "/grid/status").json()["sites"] if s["site"] == site)
        if entry["probe_ok"] is not None or time.monotonic() > deadline:
            return entry
        time.sleep(0.1)


def chat(content: str = "hello", stream: bool = False, max_tokens: int = 8, model: str = M8) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_inventory(root: Path, sites: dict[str, dict], slo_ms: float = 500) -> Path:
    """A small inventory: one client region ``metro`` (New York) and ``sites``: name ->
    {gpu, gpus, capacity, cost, rtt_ms, endpoint}."""
    (root / "sites").mkdir(parents=True, exist_ok=True)
    latency = "".join(f"      {name}: {s['rtt_ms']}\n" for name, s in sites.items())
    (root / "grid.yaml").write_text(
        "name: test-grid\n"
        f"defaults:\n  slo_ms: {slo_ms}\n"
        "regions:\n"
        "  - name: metro\n"
        "    location: {lat: 40.71, lon: -74.0}\n"
        "    jurisdiction: US\n"
        "    allowed_jurisdictions: [US]\n"
        "    latency_ms:\n" + latency
    )
    for name, s in sites.items():
        (root / "sites" / f"{name}.yaml").write_text(
            f"name: {name}\n"
            "kind: regional-pop\n"
            "region: metro\n"
            "jurisdiction: US\n"
            "location: {lat: 40.72, lon: -74.04}\n"
            f"endpoint: {s.get('endpoint', 'http://127.0.0.1:9')}\n"
            f"cost_per_gpu_hour: {s['cost']}\n"
            "drain: false\n"
            "models:\n"
            f"  - name: {M8}\n"
            f"    capacity: {s['capacity']}\n"
            "    tensor_parallel: 1\n"
            "nodes:\n"
            f"  - name: {name}-gpu-01\n"
            f"    host: gpu-01.{name}.example.net\n"
            f"    gpus: {{model: {s['gpu']}, count: {s['gpus']}}}\n"
        )
    return root


FIRST = "nwk-co-03"  # the cheapest site predicted to meet the SLO for chat() from us-east
SECOND = "chi-co-07"  # ... the next


def route_sites(d: DaemonProc, **params: str) -> list[str]:
    """The daemon's /grid/route order for a chat() request (3 prompt tokens, 8 output)."""
    q = {"model": M8, "prompt_tokens": "3", "max_tokens": "8", **params}
    return [x["site"] for x in httpx.get(d.url + "/grid/route", params=q).json()["ranked"]]


def two_sites(root: Path, bad_url: str, good_url: str) -> Path:
    """``bad`` (cheaper: tried first) and ``good``, both near the metro region (500 ms SLO)."""
    sites = {
        "bad": {"gpu": "H100", "gpus": 8, "capacity": 64, "cost": 1.0, "rtt_ms": 1.0, "endpoint": bad_url},
        "good": {"gpu": "H100", "gpus": 8, "capacity": 64, "cost": 4.0, "rtt_ms": 1.0, "endpoint": good_url},
    }
    return write_inventory(root, sites, slo_ms=500)


def status(d: DaemonProc) -> dict[str, dict]:
    return {s["site"]: s for s in httpx.get(d.url + "/grid/status", timeout=5).json()["sites"]}
