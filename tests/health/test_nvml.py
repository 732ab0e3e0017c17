"""Recorded NVML readings go through the same classifier as nvidia-smi output."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.core.health.classify import classify_node
from gridctl.core.health.model import NodeProbe, Status
from gridctl.core.health.nvml import readings_from_nvml
from tests.health.recorded import FIXTURES


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_healthy_h100_node() -> None:
    probe = readings_from_nvml(load("nvml-h100-healthy.json"))
    assert probe.smi_error is None and probe.gpu_errors == ()
    assert [g.index for g in probe.gpus] == list(range(8))
    gpu = probe.gpus[0]
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.driver_version == "550.127.05"
    assert (gpu.memory_total_mib, gpu.memory_used_mib) == (81559, 73402)  # bytes -> MiB
    assert (gpu.power_draw_w, gpu.power_limit_w) == (512.44, 700.0)  # mW -> W
    assert (gpu.temperature_c, gpu.slowdown_temperature_c) == (58.0, 90.0)
    assert gpu.retired_pages_pending is None  # NOT_SUPPORTED on H100
    assert (gpu.remapped_rows_pending, gpu.remapped_rows_failure) == (False, False)
    assert probe.gpus[4].clock_event_reason_names == ("gpu_idle",)
    health = classify_node(probe, "H100", 8)
    assert (health.status, health.reasons) == (Status.OK, ())


def test_unhealthy_h100_node() -> None:
    raw = load("nvml-h100-unhealthy.json")
    probe = readings_from_nvml(raw)
    uuid2, uuid5 = raw["gpus"][2]["uuid"][:12], raw["gpus"][5]["uuid"][:12]
    health = classify_node(probe, "H100", 8)
    assert health.status == Status.FAILED
    assert health.reasons == (
        "GPU 6 (00000000:BA:00.0): inaccessible: GPU is lost",
        f"GPU 2 ({uuid2}): 3 uncorrected ECC errors (volatile)",
        f"GPU 2 ({uuid2}): row remapping pending; reset the GPU to apply it",
        f"GPU 5 ({uuid5}): clocks slowed by hw_slowdown, hw_thermal_slowdown (0x48)",
        f"GPU 5 ({uuid5}): 88 °C, within 5 °C of its 90 °C slowdown temperature",
        "7 GPUs found, inventory expects 8",
    )


def test_nvml_and_nvidia_smi_readings_have_the_same_shape() -> None:
    probe = readings_from_nvml(load("nvml-h100-healthy.json"))
    assert set(probe.gpus[0].to_dict()) == {
        "index",
        "name",
        "uuid",
        "pci_bus_id",
        "driver_version",
        "memory_total_mib",
        "memory_used_mib",
        "memory_used_pct",
        "utilization_pct",
        "temperature_c",
        "slowdown_temperature_c",
        "power_draw_w",
        "power_limit_w",
        "ecc_uncorrected_volatile",
        "retired_pages_pending",
        "remapped_rows_pending",
        "remapped_rows_failure",
        "clock_event_reasons",
        "clock_event_reason_names",
    }


def test_nvml_init_failure_is_unknown() -> None:
    probe = readings_from_nvml({"error": "NVIDIA driver not loaded: Driver Not Loaded"})
    assert probe == NodeProbe(smi_error="NVIDIA driver not loaded: Driver Not Loaded")
    assert classify_node(probe, "H100", 8).status == Status.UNKNOWN


def test_values_of_the_wrong_type_are_not_reported() -> None:
    raw = {
        "gpus": [
            {
                "index": "0",
                "name": 7,
                "memory_info": [1, 2],
                "temperature": "hot",
                "power_usage": True,
                "total_ecc_errors_uncorrected_volatile": 1.5,
                "remapped_rows": {"pending": "yes"},
                "current_clocks_event_reasons": float("nan"),
            }
        ]
    }
    (gpu,) = readings_from_nvml(raw).gpus
    assert (gpu.index, gpu.name, gpu.uuid) == (0, "unknown", "")
    assert gpu.memory_total_mib is None and gpu.temperature_c is None
    assert gpu.power_draw_w is None and gpu.ecc_uncorrected_volatile is None
    assert gpu.remapped_rows_pending is None and gpu.clock_event_reasons is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "gpus",
                    "error",
                    "index",
                    "name",
                    "uuid",
                    "memory_info",
                    "total",
                    "used",
                    "temperature",
                    "remapped_rows",
                    "pending",
                    "failure",
                    "current_clocks_event_reasons",
                    "driver_version",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_never_raises_on_arbitrary_json(raw: Any) -> None:
    probe = readings_from_nvml(raw)
    health = classify_node(probe, "H100", 8)
    assert health.status in Status and health.to_dict()["status"] == health.status.value
