"""Lab fixtures: lab sites on loopback (real HTTP), and the helpers the lab tests share."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gridctl.core.placement.perf import Serving, gpu_perf, model_factor
from gridctl.inventory.load import load_inventory
from gridctl.lab import LabOptions, LabThread, SiteSpec, run_lab
from tests.conftest import EXAMPLE

MODEL = "llama-3.1-8b-instruct"


def make_serving(
    site: str, capacity: int = 4, gpu: str = "H100", model: str = "m", replicas: int = 1
) -> Serving:
    """``model`` served by ``replicas`` replicas of one ``gpu`` each, sharing ``capacity`` slots."""
    row = gpu_perf(gpu)
    return Serving(
        site, model, row, replicas, 1, replicas, capacity, model_factor(model), row.kv_tokens * replicas
    )


def make_spec(
    name: str,
    capacity: int = 4,
    gpu: str = "H100",
    rtt: dict[str, float] | None = None,
    model: str = "m",
    replicas: int = 1,
) -> SiteSpec:
    """A hand-made site: regions 'near' (1 ms, the default) and 'far' (300 ms) unless told."""
    rtt = {"near": 1.0, "far": 300.0} if rtt is None else rtt
    return SiteSpec(name, (make_serving(name, capacity, gpu, model, replicas),), rtt, "near")


@pytest.fixture(scope="session")
def example_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabThread]:
    """One lab site per site of the example inventory, 50x faster than real time, with an overlay
    and the default hidden speeds. Shared: tests must not change its failure modes."""
    inv = load_inventory(EXAMPLE)
    overlay = tmp_path_factory.mktemp("lab") / "inventory"
    with run_lab(inv, speed=50, overlay=overlay, grace_s=0.2) as lab:
        yield lab


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10.0) as c:
        yield c


def start_sites(*specs: SiteSpec, speed: float = 1.0, hidden_speed: int | None = None) -> LabThread:
    """Hand-made sites, for ``with start_sites(...) as lab``; by default timed by the GPU table
    exactly (no hidden speed factor, no noise)."""
    return LabThread(specs, LabOptions(speed=speed, grace_s=0.2, hidden_speed=hidden_speed))


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(name, labels): value}; fails on any line that does not parse
    or a sample whose family has no TYPE line before it."""
    typed: set[str] = set()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("gauge", "counter"), line
            typed.add(name)
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        name, labels, value = m.groups()
        assert name in typed, f"{name} has no TYPE line before it"
        pairs = _LABEL.findall(labels or "")
        assert ",".join(f'{k}="{v}"' for k, v in pairs) == (labels or ""), f"bad labels in {line!r}"
        out[(name, frozenset(pairs))] = float(value)
    return out


def metric(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


def fetch_metrics(client: httpx.Client, url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = client.get(url + "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(r.text)


def sse_events(lines: list[str]) -> list[str]:
    """The data payloads of an SSE stream's lines."""
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def overlay_of(lab: LabThread) -> Path:
    assert lab.overlay is not None
    return lab.overlay
