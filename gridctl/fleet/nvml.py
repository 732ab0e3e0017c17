"""Read this machine's GPUs through NVML (pynvml), as plain values.

The dict is the one ``gridctl.core.health.nvml.readings_from_nvml`` documents, so
what a real GPU reports can be saved as a fixture and classified anywhere.
Without a driver (or without the library) the dict carries ``error`` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


def read_nvml() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {"error": "pynvml is not installed (pip install nvidia-ml-py)", "gpus": []}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"error": _init_error(pynvml, exc), "gpus": []}
    try:
        driver = _call(pynvml.nvmlSystemGetDriverVersion)
        count = pynvml.nvmlDeviceGetCount()
        gpus = [_gpu(pynvml, i) for i in range(count)]
        return {"driver_version": _text(driver), "error": None, "gpus": gpus}
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _init_error(pynvml: Any, exc: Exception) -> str:
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return "NVML library not found (libnvidia-ml.so.1): the NVIDIA driver is not installed"
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "NVIDIA driver not loaded"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "no permission to use NVML (check /dev/nvidia* permissions)"
    return f"NVML init failed: {exc}"


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """An NVML value, or None where the GPU does not support it (or the call fails)."""
    import pynvml

    try:
        return _text(fn(*args))
    except pynvml.NVMLError:
        return None


def _gpu(pynvml: Any, index: int) -> dict[str, Any]:
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as exc:
        return {"index": index, "error": str(exc)}
    mem = _call(pynvml.nvmlDeviceGetMemoryInfo, h)
    util = _call(pynvml.nvmlDeviceGetUtilizationRates, h)
    pci = _call(pynvml.nvmlDeviceGetPciInfo, h)
    remap = _call(pynvml.nvmlDeviceGetRemappedRows, h)
    reasons_fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    reasons_fn = reasons_fn or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return {
        "index": index,
        "name": _call(pynvml.nvmlDeviceGetName, h),
        "uuid": _call(pynvml.nvmlDeviceGetUUID, h),
        "pci_bus_id": _text(pci.busId) if pci is not None else None,
        "memory_info": {"total": mem.total, "used": mem.used, "free": mem.free} if mem is not None else None,
        "utilization_rates": {"gpu": util.gpu, "memory": util.memory} if util is not None else None,
        "temperature": _call(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        "power_usage": _call(pynvml.nvmlDeviceGetPowerUsage, h),
        "enforced_power_limit": _call(pynvml.nvmlDeviceGetEnforcedPowerLimit, h),
        "total_ecc_errors_uncorrected_volatile": _call(
            pynvml.nvmlDeviceGetTotalEccErrors,
            h,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            pynvml.NVML_VOLATILE_ECC,
        ),
        "retired_pages_pending_status": _call(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, h),
        "remapped_rows": (
            {"corr": remap[0], "unc": remap[1], "pending": remap[2], "failure": remap[3]}
            if remap is not None
            else None
        ),
        "current_clocks_event_reasons": _call(reasons_fn, h),
        "temperature_threshold_slowdown": _call(
            pynvml.nvmlDeviceGetTemperatureThreshold, h, pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
        ),
    }
