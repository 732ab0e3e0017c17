"""Status order, exit codes, clock event names, the JSON shape."""

from __future__ import annotations

import json

import pynvml
import pytest

from gridctl.core.errors import ExitCode
from gridctl.core.health.model import (
    EndpointProbe,
    GpuReading,
    Health,
    Status,
    clock_event_reason_names,
    exit_code_for,
    worst,
)
from gridctl.core.health.thresholds import CLOCK_EVENT_REASONS, CRITICAL_XIDS, SLOWDOWN_CLOCK_EVENTS

OK, UNKNOWN, DEGRADED, FAILED, UNREACHABLE = (
    Status.OK,
    Status.UNKNOWN,
    Status.DEGRADED,
    Status.FAILED,
    Status.UNREACHABLE,
)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], OK),
        ([OK, OK], OK),
        ([OK, UNKNOWN], UNKNOWN),
        ([UNKNOWN, DEGRADED], DEGRADED),
        ([DEGRADED, FAILED, OK], FAILED),
        ([FAILED, UNREACHABLE], UNREACHABLE),
        ([UNREACHABLE, OK, UNKNOWN], UNREACHABLE),
    ],
)
def test_worst_follows_severity_order(statuses: list[Status], expected: Status) -> None:
    assert worst(statuses) is expected


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([], ExitCode.OK),
        ([OK, OK], ExitCode.OK),
        ([OK, DEGRADED], ExitCode.UNHEALTHY),
        ([OK, FAILED], ExitCode.UNHEALTHY),
        ([UNKNOWN], ExitCode.UNHEALTHY),
        ([FAILED, UNREACHABLE], ExitCode.UNREACHABLE),
        ([UNREACHABLE], ExitCode.UNREACHABLE),
    ],
)
def test_exit_code_for(statuses: list[Status], code: ExitCode) -> None:
    assert exit_code_for(statuses) == code
    assert exit_code_for(iter(statuses)) == code


def test_status_serialises_as_its_value() -> None:
    assert json.dumps({"s": Status.DEGRADED}) == '{"s": "degraded"}'
    assert str(Status.UNREACHABLE) == "unreachable"
    assert Status("failed") is FAILED


def test_clock_event_bits_are_nvml_values() -> None:
    """The table's bit values are NVML's own constants (nvml.h via pynvml)."""
    nvml = {
        0x1: pynvml.nvmlClocksEventReasonGpuIdle,
        0x2: pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
        0x4: pynvml.nvmlClocksEventReasonSwPowerCap,
        0x8: pynvml.nvmlClocksEventReasonHwSlowdown,
        0x10: pynvml.nvmlClocksEventReasonSyncBoost,
        0x20: pynvml.nvmlClocksEventReasonSwThermalSlowdown,
        0x40: pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        0x80: pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
        0x100: pynvml.nvmlClocksEventReasonDisplayClockSetting,
    }
    for bit, value in nvml.items():
        assert bit == value, CLOCK_EVENT_REASONS[bit]
    assert pynvml.nvmlClocksThrottleReasonHwSlowdown == 0x8  # the pre-rename name
    assert (
        pynvml.nvmlClocksEventReasonSwPowerCap
        | pynvml.nvmlClocksEventReasonHwSlowdown
        | pynvml.nvmlClocksEventReasonSwThermalSlowdown
        | pynvml.nvmlClocksEventReasonHwThermalSlowdown
        | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
    ) == SLOWDOWN_CLOCK_EVENTS


def test_critical_xids_include_the_issue_set() -> None:
    assert {48, 63, 64, 74, 79, 92, 94, 95, 119, 120} <= CRITICAL_XIDS
    assert not {13, 31, 43, 45} & CRITICAL_XIDS  # application faults


@pytest.mark.parametrize(
    ("mask", "names"),
    [
        (None, ()),
        (0, ()),
        (0x1, ("gpu_idle",)),
        (0x60, ("sw_thermal_slowdown", "hw_thermal_slowdown")),
        (0x48, ("hw_slowdown", "hw_thermal_slowdown")),
        (0x800 | 0x4, ("sw_power_cap", "unknown_0x800")),
    ],
)
def test_clock_event_reason_names(mask: int | None, names: tuple[str, ...]) -> None:
    assert clock_event_reason_names(mask) == names
    gpu = GpuReading(index=0, name="NVIDIA L4", uuid="GPU-1", clock_event_reasons=mask)
    assert gpu.clock_event_reason_names == names


def test_gpu_reading_to_dict_is_json_ready() -> None:
    gpu = GpuReading(
        index=2,
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-ab6a7cb2-44c1-487e-8fd5-9caf719ae2a0",
        memory_total_mib=81559,
        memory_used_mib=73402,
        clock_event_reasons=0x20,
    )
    d = json.loads(json.dumps(gpu.to_dict()))
    assert d["memory_used_pct"] == 90.0
    assert d["clock_event_reasons"] == "0x20"
    assert d["clock_event_reason_names"] == ["sw_thermal_slowdown"]
    assert d["retired_pages_pending"] is None
    assert gpu.label == "GPU 2 (GPU-ab6a7cb2)"


def test_health_to_dict_has_a_stable_shape() -> None:
    keys = {"status", "reasons", "notes", "gpus", "gpu_errors", "xids", "smi_error", "endpoint"}
    bare = Health(Status.UNREACHABLE, ("node7: auth failed",)).to_dict()
    assert set(bare) == keys
    assert bare["status"] == "unreachable"
    assert bare["reasons"] == ["node7: auth failed"]
    site = Health(Status.OK, endpoint=EndpointProbe(200, ("llama",), 12.5)).to_dict()
    assert set(site) == keys
    assert site["endpoint"] == {
        "health_status_code": 200,
        "models": ["llama"],
        "rtt_ms": 12.5,
        "error": None,
    }
    json.dumps(site)


def test_endpoint_probe_freezes_a_model_list() -> None:
    probe = EndpointProbe(models=["a", "b"])  # type: ignore[arg-type]
    assert probe.models == ("a", "b")
