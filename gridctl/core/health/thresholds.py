"""The health thresholds and critical XIDs: the one place these numbers live.

Rules follow NVIDIA DCGM's health watches (memory, thermal, power, PCIe/XID)
and NVIDIA's own documents, cited next to each number. Everything here is
plain data; :mod:`gridctl.core.health.classify` reads it and nothing else holds a
copy.
"""

from __future__ import annotations

from dataclasses import dataclass

# XIDs that fail a node. The set (48 double-bit ECC, 63/64 row-remap
# recorded/failed, 74 NVLink error, 79 GPU fallen off the bus, 92 high
# single-bit ECC rate, 94/95 contained/uncontained ECC error, 119/120 GSP RPC
# timeout/GSP error), plus, following NVIDIA's Xid catalog
# (docs.nvidia.com/deploy/xid-errors, "Resolution Bucket (Immediate Action)")
# and NVIDIA Health Validation's Xid checks (gpu_xid_46 is CRITICAL, "drain:
# reset_gpu"), those whose immediate action is a GPU reset or reboot:
#   46  GPU stopped processing
#   62  internal micro-controller halt
#   140 unrecovered ECC error
# Application faults (13, 31, 43, 45, 68, ...) are not here: they are reported
# as notes, as NVIDIA's k8s-device-plugin also skips them when marking a GPU
# unhealthy.
CRITICAL_XIDS: frozenset[int] = frozenset({46, 48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140})

# Clock event reason bits, as NVML's nvmlClocksEventReason* constants
# (formerly nvmlClocksThrottleReason*, same values; checked against nvml.h /
# pynvml and the NVML API reference "NvmlClocksEventReasons"). nvidia-smi's
# clocks_event_reasons.active prints this bitmask, e.g. 0x0000000000000001.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}

# Thermal and power slowdowns: SW power cap, HW slowdown, SW/HW thermal
# slowdown, HW power brake. Idle, application clocks, sync boost and display
# clocks are normal. Note: a GPU held at its power limit under full load
# reports SW power cap; drop 0x4 here if that should not degrade a node.
SLOWDOWN_CLOCK_EVENTS: int = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


@dataclass(frozen=True)
class Thresholds:
    """Numbers the classifier compares readings against. Boundaries count:
    a reading *at* a threshold trips it."""

    # Degraded when the GPU is within this many degrees C of its slowdown
    # temperature (NVML_TEMPERATURE_THRESHOLD_SLOWDOWN / "GPU Slowdown Temp").
    temperature_margin_c: float = 5.0
    # When the slowdown temperature is unknown: degraded at or above this.
    # 85 C is below every data-center part's slowdown point (H100 ~88-90 C).
    temperature_fallback_c: float = 85.0
    # Memory nearly full (percent of total in use). vLLM reserves 90% by
    # default, so 95% means the reservation was raised or memory is leaking.
    memory_used_pct: float = 95.0
    # Clock event reasons (bitmask) that mark a GPU degraded.
    slowdown_clock_events: int = SLOWDOWN_CLOCK_EVENTS
    # A site endpoint whose health/models round trip takes this long is slow.
    endpoint_slow_ms: float = 250.0
    # Each nvidia-smi call on a node is killed after this many seconds.
    smi_timeout_s: float = 10.0
    # XIDs older than this (seconds) are not reported.
    xid_window_s: int = 3600


DEFAULT = Thresholds()
