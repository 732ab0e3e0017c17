"""NVML readings -> the same ``NodeProbe`` the nvidia-smi path builds.

``gridctl gpu`` reads NVML through pynvml on the node and records plain values
in a dict; this module turns that dict into :class:`GpuReading` objects, so a
recorded NVML fixture goes through the same classifier. Pure: pynvml is not
imported here. The dict, one entry per GPU under ``"gpus"``, with the NVML call
each value comes from (``null`` where NVML answers NOT_SUPPORTED)::

    {"driver_version": "550.127.05",          # nvmlSystemGetDriverVersion
     "error": null,                            # nvmlInit failure text, if any
     "gpus": [{
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",       # nvmlDeviceGetName
        "uuid": "GPU-...",                     # nvmlDeviceGetUUID
        "pci_bus_id": "00000000:18:00.0",      # nvmlDeviceGetPciInfo().busId
        "memory_info": {"total": ..., "used": ..., "free": ...},  # bytes, GetMemoryInfo
        "utilization_rates": {"gpu": 0, "memory": 0},  # GetUtilizationRates, %
        "temperature": 36,                     # GetTemperature(NVML_TEMPERATURE_GPU), C
        "power_usage": 71970,                  # GetPowerUsage, mW
        "enforced_power_limit": 700000,        # GetEnforcedPowerLimit, mW
        "total_ecc_errors_uncorrected_volatile": 0,  # GetTotalEccErrors(UNCORRECTED, VOLATILE)
        "retired_pages_pending_status": null,  # GetRetiredPagesPendingStatus, 0/1
        "remapped_rows": {"corr": 0, "unc": 0, "pending": 0, "failure": 0},  # GetRemappedRows
        "current_clocks_event_reasons": 1,     # GetCurrentClocksEventReasons, bitmask
        "temperature_threshold_slowdown": 88   # GetTemperatureThreshold(SLOWDOWN), C
     }, {"index": 3, "error": "GPU is lost"}]}  # a GPU whose handle NVML could not get

Values of the wrong type are read as "not reported"; nothing here raises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gridctl.core.health.model import GpuError, GpuReading, NodeProbe

MIB = 1024 * 1024


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    n = _num(value)
    return None if n is None or not n.is_integer() else int(n)


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    n = _num(value)
    return None if n is None else n != 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, Mapping) else None


def _scaled(value: Any, divisor: float) -> float | None:
    n = _num(value)
    return None if n is None else n / divisor


def _reading(gpu: Mapping[str, Any], index: int, driver: str | None) -> GpuReading:
    memory = gpu.get("memory_info")
    total, used = _int(_get(memory, "total")), _int(_get(memory, "used"))
    remap = gpu.get("remapped_rows")
    return GpuReading(
        index=index,
        name=_str(gpu.get("name")) or "unknown",
        uuid=_str(gpu.get("uuid")) or "",
        pci_bus_id=_str(gpu.get("pci_bus_id")),
        driver_version=driver,
        memory_total_mib=None if total is None else total // MIB,
        memory_used_mib=None if used is None else used // MIB,
        utilization_pct=_num(_get(gpu.get("utilization_rates"), "gpu")),
        temperature_c=_num(gpu.get("temperature")),
        power_draw_w=_scaled(gpu.get("power_usage"), 1000),
        power_limit_w=_scaled(gpu.get("enforced_power_limit"), 1000),
        ecc_uncorrected_volatile=_int(gpu.get("total_ecc_errors_uncorrected_volatile")),
        retired_pages_pending=_flag(gpu.get("retired_pages_pending_status")),
        remapped_rows_pending=_flag(_get(remap, "pending")),
        remapped_rows_failure=_flag(_get(remap, "failure")),
        clock_event_reasons=_int(gpu.get("current_clocks_event_reasons")),
        slowdown_temperature_c=_num(gpu.get("temperature_threshold_slowdown")),
    )


def readings_from_nvml(raw: Mapping[str, Any]) -> NodeProbe:
    """Build a :class:`NodeProbe` from recorded NVML values (see module doc)."""
    if not isinstance(raw, Mapping):
        return NodeProbe(smi_error="NVML readings not understood (not a mapping)")
    error = _str(raw.get("error"))
    if error:
        return NodeProbe(smi_error=error)
    driver = _str(raw.get("driver_version"))
    entries = raw.get("gpus")
    gpus: list[GpuReading] = []
    errors: list[GpuError] = []
    for position, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, Mapping):
            continue
        index = _int(entry.get("index"))
        if _str(entry.get("error")):
            errors.append(GpuError(str(entry["error"]), _str(entry.get("pci_bus_id")), index))
        else:
            gpus.append(_reading(entry, position if index is None else index, driver))
    return NodeProbe(gpus=tuple(gpus), gpu_errors=tuple(errors))
