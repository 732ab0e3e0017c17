"""Readings -> Health, after NVIDIA DCGM's health watches.

failed:    uncorrected ECC errors, a row-remap failure, a GPU the driver cannot
           open, GPU count or model other than the inventory's, a critical XID
degraded:  page retirement or row remap pending, thermal or power slowdown,
           temperature near slowdown, memory nearly full, a slow endpoint
unknown:   nvidia-smi missing, failing, hanging; driver not loaded
unreachable: the node or endpoint could not be reached

Every rule that trips adds its reason; the status is the worst of them. The
numbers come from :mod:`gridctl.core.health.thresholds` only. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from gridctl.core.health.model import (
    EndpointProbe,
    GpuReading,
    Health,
    NodeProbe,
    Status,
    XidEvent,
    clock_event_reason_names,
    worst,
)
from gridctl.core.health.nvidia_smi import pci_key
from gridctl.core.health.thresholds import CRITICAL_XIDS, DEFAULT, Thresholds

__all__ = [
    "EndpointProbe",
    "classify_endpoint",
    "classify_node",
    "model_matches",
    "unreachable",
]

Finding = tuple[Status, str]


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^0-9a-z]+", name.lower()) if t and t != "nvidia"]


def model_matches(expected: str, actual: str) -> bool:
    """Lenient model match: every word of the inventory's model is a whole word
    of the GPU's name. "H100" matches "NVIDIA H100 80GB HBM3", "RTX PRO 6000"
    matches "NVIDIA RTX PRO 6000 Blackwell Server Edition"; "L4" does not match
    "NVIDIA L40S"."""
    want = _tokens(expected)
    have = set(_tokens(actual))
    return bool(want) and all(t in have for t in want)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _gpu_findings(gpu: GpuReading, expected_model: str | None, t: Thresholds) -> list[Finding]:
    out: list[Finding] = []
    who = gpu.label
    if expected_model and not model_matches(expected_model, gpu.name):
        out.append((Status.FAILED, f"{who}: model {gpu.name}, inventory expects {expected_model}"))
    ecc = gpu.ecc_uncorrected_volatile
    if ecc is not None and ecc > 0:
        out.append((Status.FAILED, f"{who}: {_plural(ecc, 'uncorrected ECC error')} (volatile)"))
    if gpu.remapped_rows_failure:
        out.append((Status.FAILED, f"{who}: row remapping failed; the GPU needs replacing"))
    if gpu.remapped_rows_pending:
        out.append((Status.DEGRADED, f"{who}: row remapping pending; reset the GPU to apply it"))
    if gpu.retired_pages_pending:
        out.append((Status.DEGRADED, f"{who}: page retirement pending; reset the GPU to apply it"))
    slow = (gpu.clock_event_reasons or 0) & t.slowdown_clock_events
    if slow:
        names = ", ".join(clock_event_reason_names(slow))
        out.append((Status.DEGRADED, f"{who}: clocks slowed by {names} ({slow:#x})"))
    out.extend(_temperature(gpu, t))
    pct = gpu.memory_used_pct
    if pct is not None and pct >= t.memory_used_pct:
        out.append(
            (
                Status.DEGRADED,
                f"{who}: memory {pct:.1f}% used ({gpu.memory_used_mib}/{gpu.memory_total_mib}"
                f" MiB), at or above {_fmt(t.memory_used_pct)}%",
            )
        )
    return out


def _temperature(gpu: GpuReading, t: Thresholds) -> list[Finding]:
    temp, slowdown = gpu.temperature_c, gpu.slowdown_temperature_c
    if temp is None:
        return []
    if slowdown is not None:
        if temp >= slowdown - t.temperature_margin_c:
            return [
                (
                    Status.DEGRADED,
                    f"{gpu.label}: {_fmt(temp)} °C, within {_fmt(t.temperature_margin_c)} °C"
                    f" of its {_fmt(slowdown)} °C slowdown temperature",
                )
            ]
        return []
    if temp >= t.temperature_fallback_c:
        return [
            (
                Status.DEGRADED,
                f"{gpu.label}: {_fmt(temp)} °C, at or above {_fmt(t.temperature_fallback_c)} °C"
                " (slowdown temperature unknown)",
            )
        ]
    return []


def _xid_findings(probe: NodeProbe) -> tuple[list[Finding], list[str]]:
    labels = {pci_key(e.pci_bus_id or ""): e.label for e in probe.gpu_errors if e.index is not None}
    labels.update({pci_key(g.pci_bus_id or ""): g.label for g in probe.gpus})
    counts = Counter((x.xid, x.pci) for x in probe.xids)
    first: dict[tuple[int, str], XidEvent] = {}
    for x in probe.xids:
        first.setdefault((x.xid, x.pci), x)
    findings: list[Finding] = []
    notes: list[str] = []
    for (xid, pci), n in counts.items():
        label = labels.get(pci_key(pci))
        where = f"{label} at PCI {pci}" if label else f"PCI {pci}"
        times = f", {n} times" if n > 1 else ""
        text = f"XID {xid} on {where}{times}: {first[(xid, pci)].message or 'no message'}"
        if xid in CRITICAL_XIDS:
            findings.append((Status.FAILED, text))
        else:
            notes.append(f"{text} (not a critical XID)")
    return findings, notes


def classify_node(
    probe: NodeProbe,
    expected_gpu_model: str | None = None,
    expected_gpu_count: int | None = None,
    thresholds: Thresholds = DEFAULT,
) -> Health:
    """Judge one node's readings against the inventory and the thresholds."""
    findings: list[Finding] = []
    notes: list[str] = []
    if probe.smi_error:
        findings.append((Status.UNKNOWN, probe.smi_error))
    for err in probe.gpu_errors:
        findings.append((Status.FAILED, f"{err.label}: inaccessible: {err.message}"))
    for gpu in probe.gpus:
        findings.extend(_gpu_findings(gpu, expected_gpu_model, thresholds))
    if not probe.smi_error:
        found = len(probe.gpus)
        if expected_gpu_count is not None and found != expected_gpu_count:
            findings.append(
                (
                    Status.FAILED,
                    f"{_plural(found, 'GPU')} found, inventory expects {expected_gpu_count}",
                )
            )
        elif expected_gpu_count is None and found == 0 and not probe.gpu_errors:
            findings.append((Status.UNKNOWN, "nvidia-smi reported no GPUs"))
    xid_findings, xid_notes = _xid_findings(probe)
    findings.extend(xid_findings)
    notes.extend(xid_notes)
    if probe.kernel_log_error:
        notes.append(f"XIDs not checked: {probe.kernel_log_error}")
    return Health(
        status=worst(s for s, _ in findings),
        reasons=tuple(r for _, r in findings),
        notes=tuple(notes),
        gpus=probe.gpus,
        gpu_errors=probe.gpu_errors,
        xids=probe.xids,
        smi_error=probe.smi_error,
    )


def classify_endpoint(
    probe: EndpointProbe,
    expected_models: Sequence[str] = (),
    thresholds: Thresholds = DEFAULT,
) -> Health:
    """Judge a site endpoint: reachable, healthy, serving the expected models, fast."""
    if probe.error:
        return Health(Status.UNREACHABLE, (f"endpoint unreachable: {probe.error}",), endpoint=probe)
    findings: list[Finding] = []
    code = probe.health_status_code
    if code is not None and not 200 <= code < 300:
        findings.append((Status.FAILED, f"health route returned HTTP {code}"))
    if expected_models:
        wanted = ", ".join(expected_models)
        if probe.models is None:
            findings.append((Status.UNKNOWN, f"model list not read; cannot confirm {wanted}"))
        else:
            missing = [m for m in expected_models if m not in probe.models]
            if missing:
                findings.append((Status.FAILED, "expected models not served: " + ", ".join(missing)))
    if probe.rtt_ms is not None and probe.rtt_ms >= thresholds.endpoint_slow_ms:
        findings.append(
            (
                Status.DEGRADED,
                f"round trip {_fmt(probe.rtt_ms)} ms, at or above {_fmt(thresholds.endpoint_slow_ms)} ms",
            )
        )
    return Health(
        status=worst(s for s, _ in findings),
        reasons=tuple(r for _, r in findings),
        endpoint=probe,
    )


def unreachable(reason: str) -> Health:
    """The verdict for a node the fleet could not reach (connect, auth, host key)."""
    return Health(Status.UNREACHABLE, (reason,))
