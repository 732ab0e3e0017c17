"""Health as plain, frozen data: readings in, a status with its reasons out.

``GpuReading`` is built the same way from ``nvidia-smi`` output
(:mod:`gridctl.core.health.nvidia_smi`) and from NVML readings
(:mod:`gridctl.core.health.nvml`), so both go through one classifier. A per-host
outcome is data, never an exception (docs/ARCHITECTURE.md: the core is pure).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gridctl.core.errors import ExitCode
from gridctl.core.health.thresholds import CLOCK_EVENT_REASONS


class Status(StrEnum):
    """The outcome of one node or site; a ``str`` (StrEnum), so it serialises as
    its value."""

    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


# Severity order: ok < unknown < degraded < failed < unreachable.
_SEVERITY: dict[Status, int] = {
    Status.OK: 0,
    Status.UNKNOWN: 1,
    Status.DEGRADED: 2,
    Status.FAILED: 3,
    Status.UNREACHABLE: 4,
}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status; ``ok`` for none."""
    return max(statuses, key=_SEVERITY.__getitem__, default=Status.OK)


def exit_code_for(statuses: Iterable[Status]) -> ExitCode:
    """Exit code for a run: 0 all ok, 4 any unreachable, else 3 (docs/ARCHITECTURE.md)."""
    seen = set(statuses)
    if Status.UNREACHABLE in seen:
        return ExitCode.UNREACHABLE
    if seen - {Status.OK}:
        return ExitCode.UNHEALTHY
    return ExitCode.OK


def clock_event_reason_names(mask: int | None) -> tuple[str, ...]:
    """Names of the bits set in an NVML clock event reasons mask, low bit first.
    An unknown bit is named by its value rather than dropped."""
    if not mask:
        return ()
    names: list[str] = []
    bit = 1
    while bit <= mask:
        if mask & bit:
            names.append(CLOCK_EVENT_REASONS.get(bit, f"unknown_{bit:#x}"))
        bit <<= 1
    return tuple(names)


@dataclass(frozen=True)
class GpuReading:
    """One GPU's readings. ``None`` is "not reported" (nvidia-smi's ``[N/A]`` or
    ``[Not Supported]``, or an NVML call that is not supported)."""

    index: int
    name: str
    uuid: str
    pci_bus_id: str | None = None  # "00000000:18:00.0", as nvidia-smi prints it
    driver_version: str | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    ecc_uncorrected_volatile: int | None = None
    # None when the GPU has no page retirement (Ampere and later remap rows).
    retired_pages_pending: bool | None = None
    # None when the GPU has no row remapping (before Ampere).
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    clock_event_reasons: int | None = None
    slowdown_temperature_c: float | None = None

    @property
    def clock_event_reason_names(self) -> tuple[str, ...]:
        return clock_event_reason_names(self.clock_event_reasons)

    @property
    def memory_used_pct(self) -> float | None:
        if self.memory_used_mib is None or not self.memory_total_mib:
            return None
        return 100.0 * self.memory_used_mib / self.memory_total_mib

    @property
    def label(self) -> str:
        """How reasons name this GPU: ``GPU 3 (GPU-566e6f65)``."""
        return f"GPU {self.index} ({self.uuid[:12]})" if self.uuid else f"GPU {self.index}"

    def to_dict(self) -> dict[str, Any]:
        pct = self.memory_used_pct
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "pci_bus_id": self.pci_bus_id,
            "driver_version": self.driver_version,
            "memory_total_mib": self.memory_total_mib,
            "memory_used_mib": self.memory_used_mib,
            "memory_used_pct": None if pct is None else round(pct, 1),
            "utilization_pct": self.utilization_pct,
            "temperature_c": self.temperature_c,
            "slowdown_temperature_c": self.slowdown_temperature_c,
            "power_draw_w": self.power_draw_w,
            "power_limit_w": self.power_limit_w,
            "ecc_uncorrected_volatile": self.ecc_uncorrected_volatile,
            "retired_pages_pending": self.retired_pages_pending,
            "remapped_rows_pending": self.remapped_rows_pending,
            "remapped_rows_failure": self.remapped_rows_failure,
            "clock_event_reasons": (
                None if self.clock_event_reasons is None else f"{self.clock_event_reasons:#x}"
            ),
            "clock_event_reason_names": list(self.clock_event_reason_names),
        }


@dataclass(frozen=True)
class GpuError:
    """A GPU the tool could not open, e.g. ``Unable to determine the device handle
    for GPU0000:5D:00.0: GPU is lost. ...``."""

    message: str
    pci_bus_id: str | None = None
    index: int | None = None

    @property
    def label(self) -> str:
        if self.index is not None and self.pci_bus_id:
            return f"GPU {self.index} ({self.pci_bus_id})"
        if self.index is not None:
            return f"GPU {self.index}"
        return f"GPU {self.pci_bus_id}" if self.pci_bus_id else "a GPU"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "pci_bus_id": self.pci_bus_id, "message": self.message}


@dataclass(frozen=True)
class XidEvent:
    """One ``NVRM: Xid (PCI:0000:3b:00): 79, ...`` kernel log line."""

    xid: int
    pci: str  # as the driver prints it: "0000:3b:00"
    message: str  # the text after the code, without "pid=..., name=..., "
    raw: str

    def to_dict(self) -> dict[str, Any]:
        return {"xid": self.xid, "pci": self.pci, "message": self.message, "raw": self.raw}


@dataclass(frozen=True)
class NodeProbe:
    """Everything read from one node, before judgement."""

    gpus: tuple[GpuReading, ...] = ()
    # Why the GPUs could not be read at all: "nvidia-smi not found",
    # "NVIDIA driver not loaded: <message>", "nvidia-smi failed (rc N): <stderr>",
    # "nvidia-smi hung (killed after N s)".
    smi_error: str | None = None
    xids: tuple[XidEvent, ...] = ()
    gpu_errors: tuple[GpuError, ...] = ()
    # Why the kernel log could not be read (XIDs not checked); not a GPU fault.
    kernel_log_error: str | None = None


@dataclass(frozen=True)
class EndpointProbe:
    """What the fleet learned from a site endpoint over HTTP."""

    health_status_code: int | None = None
    models: tuple[str, ...] | None = None  # ids from /v1/models; None if not read
    rtt_ms: float | None = None
    error: str | None = None  # connect error or timeout text

    def __post_init__(self) -> None:
        if self.models is not None and not isinstance(self.models, tuple):
            object.__setattr__(self, "models", tuple(self.models))

    def to_dict(self) -> dict[str, Any]:
        return {
            "health_status_code": self.health_status_code,
            "models": None if self.models is None else list(self.models),
            "rtt_ms": self.rtt_ms,
            "error": self.error,
        }


@dataclass(frozen=True)
class Health:
    """A verdict and every reason for it, with the readings it was made from."""

    status: Status
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # worth knowing, but not affecting the status
    gpus: tuple[GpuReading, ...] = ()
    gpu_errors: tuple[GpuError, ...] = ()
    xids: tuple[XidEvent, ...] = ()
    endpoint: EndpointProbe | None = None
    smi_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: status, reasons, notes and the readings. Every key is always
        present (empty or null when it does not apply), so the shape is stable."""
        return {
            "status": self.status.value,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "gpus": [g.to_dict() for g in self.gpus],
            "gpu_errors": [e.to_dict() for e in self.gpu_errors],
            "xids": [x.to_dict() for x in self.xids],
            "smi_error": self.smi_error,
            "endpoint": None if self.endpoint is None else self.endpoint.to_dict(),
        }
