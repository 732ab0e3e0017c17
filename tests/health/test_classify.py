"""The classifier, rule by rule: status, reasons, and each threshold at its boundary."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridctl.core.health.classify import classify_endpoint, classify_node, model_matches, unreachable
from gridctl.core.health.model import EndpointProbe, GpuError, GpuReading, NodeProbe, Status, XidEvent
from gridctl.core.health.thresholds import CRITICAL_XIDS, DEFAULT, Thresholds

UUID = "GPU-566e6f65-c38e-b12f-4824-6944218668b9"
BASE = GpuReading(
    index=0,
    name="NVIDIA H100 80GB HBM3",
    uuid=UUID,
    pci_bus_id="00000000:18:00.0",
    driver_version="550.127.05",
    memory_total_mib=81559,
    memory_used_mib=73402,
    utilization_pct=91.0,
    temperature_c=58.0,
    power_draw_w=512.44,
    power_limit_w=700.0,
    ecc_uncorrected_volatile=0,
    retired_pages_pending=None,
    remapped_rows_pending=False,
    remapped_rows_failure=False,
    clock_event_reasons=0,
    slowdown_temperature_c=89.0,
)
WHO = "GPU 0 (GPU-566e6f65)"


def node(*gpus: GpuReading, **kw: object) -> NodeProbe:
    return NodeProbe(gpus=gpus or (BASE,), **kw)  # type: ignore[arg-type]


def gpu(**changes: object) -> GpuReading:
    return replace(BASE, **changes)  # type: ignore[arg-type]


# (id, probe, expected status, exact reasons)
NODE_CASES = [
    ("healthy", node(), "ok", []),
    ("ecc-zero", node(gpu(ecc_uncorrected_volatile=0)), "ok", []),
    ("ecc-unknown", node(gpu(ecc_uncorrected_volatile=None)), "ok", []),
    (
        "ecc-one",
        node(gpu(ecc_uncorrected_volatile=1)),
        "failed",
        [f"{WHO}: 1 uncorrected ECC error (volatile)"],
    ),
    (
        "ecc-many",
        node(gpu(ecc_uncorrected_volatile=7)),
        "failed",
        [f"{WHO}: 7 uncorrected ECC errors (volatile)"],
    ),
    (
        "remap-failure",
        node(gpu(remapped_rows_failure=True)),
        "failed",
        [f"{WHO}: row remapping failed; the GPU needs replacing"],
    ),
    (
        "remap-pending",
        node(gpu(remapped_rows_pending=True)),
        "degraded",
        [f"{WHO}: row remapping pending; reset the GPU to apply it"],
    ),
    (
        "retired-pending",
        node(gpu(retired_pages_pending=True)),
        "degraded",
        [f"{WHO}: page retirement pending; reset the GPU to apply it"],
    ),
    ("retired-none", node(gpu(retired_pages_pending=False)), "ok", []),
    (
        "sw-thermal",
        node(gpu(clock_event_reasons=0x20)),
        "degraded",
        [f"{WHO}: clocks slowed by sw_thermal_slowdown (0x20)"],
    ),
    (
        "hw-thermal-and-slowdown-with-idle",
        node(gpu(clock_event_reasons=0x49)),
        "degraded",
        [f"{WHO}: clocks slowed by hw_slowdown, hw_thermal_slowdown (0x48)"],
    ),
    (
        "power-brake",
        node(gpu(clock_event_reasons=0x80)),
        "degraded",
        [f"{WHO}: clocks slowed by hw_power_brake_slowdown (0x80)"],
    ),
    (
        "sw-power-cap",
        node(gpu(clock_event_reasons=0x4)),
        "degraded",
        [f"{WHO}: clocks slowed by sw_power_cap (0x4)"],
    ),
    ("idle", node(gpu(clock_event_reasons=0x1)), "ok", []),
    ("app-clocks", node(gpu(clock_event_reasons=0x2)), "ok", []),
    ("sync-boost-display", node(gpu(clock_event_reasons=0x110)), "ok", []),
    (
        "temp-at-margin",
        node(gpu(temperature_c=84.0)),
        "degraded",
        [f"{WHO}: 84 °C, within 5 °C of its 89 °C slowdown temperature"],
    ),
    ("temp-below-margin", node(gpu(temperature_c=83.9)), "ok", []),
    (
        "temp-fallback-at",
        node(gpu(temperature_c=85.0, slowdown_temperature_c=None)),
        "degraded",
        [f"{WHO}: 85 °C, at or above 85 °C (slowdown temperature unknown)"],
    ),
    ("temp-fallback-below", node(gpu(temperature_c=84.9, slowdown_temperature_c=None)), "ok", []),
    ("temp-unknown", node(gpu(temperature_c=None)), "ok", []),
    (
        "memory-at-threshold",
        node(gpu(memory_total_mib=1000, memory_used_mib=950)),
        "degraded",
        [f"{WHO}: memory 95.0% used (950/1000 MiB), at or above 95%"],
    ),
    ("memory-below", node(gpu(memory_total_mib=1000, memory_used_mib=949)), "ok", []),
    ("memory-total-unknown", node(gpu(memory_total_mib=None)), "ok", []),
    (
        "gpu-lost",
        node(gpu_errors=(GpuError("GPU is lost", "00000000:5D:00.0", 3),)),
        "failed",
        ["GPU 3 (00000000:5D:00.0): inaccessible: GPU is lost"],
    ),
    (
        "smi-missing",
        NodeProbe(smi_error="nvidia-smi not found"),
        "unknown",
        ["nvidia-smi not found"],
    ),
    (
        "smi-hung",
        NodeProbe(smi_error="nvidia-smi hung (killed after 10 s)"),
        "unknown",
        ["nvidia-smi hung (killed after 10 s)"],
    ),
]


@pytest.mark.parametrize(
    ("probe", "status", "reasons"),
    [c[1:] for c in NODE_CASES],
    ids=[c[0] for c in NODE_CASES],
)
def test_node_rules(probe: NodeProbe, status: str, reasons: list[str]) -> None:
    health = classify_node(probe)
    assert health.status == status
    assert list(health.reasons) == reasons
    assert health.gpus == probe.gpus


def test_every_reason_is_collected_not_just_the_first() -> None:
    bad = gpu(
        ecc_uncorrected_volatile=2,
        remapped_rows_pending=True,
        clock_event_reasons=0x40,
        temperature_c=88.0,
        memory_used_mib=81000,
    )
    other = replace(BASE, index=1, uuid="GPU-92953351-3846", name="NVIDIA L40S")
    health = classify_node(node(bad, other), "H100", 3)
    assert health.status == Status.FAILED
    assert health.reasons == (
        f"{WHO}: 2 uncorrected ECC errors (volatile)",
        f"{WHO}: row remapping pending; reset the GPU to apply it",
        f"{WHO}: clocks slowed by hw_thermal_slowdown (0x40)",
        f"{WHO}: 88 °C, within 5 °C of its 89 °C slowdown temperature",
        f"{WHO}: memory 99.3% used (81000/81559 MiB), at or above 95%",
        "GPU 1 (GPU-92953351): model NVIDIA L40S, inventory expects H100",
        "2 GPUs found, inventory expects 3",
    )


@pytest.mark.parametrize(
    ("expected", "count", "status"),
    [(1, 1, "ok"), (8, 1, "failed"), (0, 1, "failed"), (None, 1, "ok")],
)
def test_gpu_count_against_inventory(expected: int | None, count: int, status: str) -> None:
    health = classify_node(node(*([BASE] * count)), None, expected)
    assert health.status == status
    if status == "failed":
        assert health.reasons == (f"1 GPU found, inventory expects {expected}",)


def test_no_gpus_and_no_inventory_count_is_unknown() -> None:
    health = classify_node(NodeProbe())
    assert health.status == Status.UNKNOWN
    assert health.reasons == ("nvidia-smi reported no GPUs",)


def test_count_is_not_judged_when_nvidia_smi_failed() -> None:
    health = classify_node(NodeProbe(smi_error="NVIDIA driver not loaded: ..."), "H100", 8)
    assert health.status == Status.UNKNOWN
    assert health.reasons == ("NVIDIA driver not loaded: ...",)


@pytest.mark.parametrize(
    ("expected", "actual", "match"),
    [
        ("H100", "NVIDIA H100 80GB HBM3", True),
        ("h100", "NVIDIA H100 PCIe", True),
        ("H100 80GB", "NVIDIA H100 80GB HBM3", True),
        ("L40S", "NVIDIA L40S", True),
        ("L4", "NVIDIA L4", True),
        ("RTX PRO 6000", "NVIDIA RTX PRO 6000 Blackwell Server Edition", True),
        ("A100", "NVIDIA A100-SXM4-80GB", True),
        ("L4", "NVIDIA L40S", False),
        ("L40S", "NVIDIA L4", False),
        ("H100", "NVIDIA H200", False),
        ("H100", "NVIDIA GH200 480GB", False),
        ("RTX PRO 6000", "NVIDIA RTX 6000 Ada Generation", False),
        ("", "NVIDIA L4", False),
    ],
)
def test_model_matches(expected: str, actual: str, match: bool) -> None:
    assert model_matches(expected, actual) is match


def test_model_mismatch_fails_the_node() -> None:
    health = classify_node(node(gpu(name="NVIDIA L40S")), "L4", 1)
    assert health.status == Status.FAILED
    assert health.reasons == (f"{WHO}: model NVIDIA L40S, inventory expects L4",)


def xid(code: int, pci: str = "0000:18:00", message: str = "msg") -> XidEvent:
    return XidEvent(code, pci, message, f"NVRM: Xid (PCI:{pci}): {code}, {message}")


@pytest.mark.parametrize("code", sorted(CRITICAL_XIDS))
def test_every_critical_xid_fails_the_node(code: int) -> None:
    health = classify_node(node(xids=(xid(code),)))
    assert health.status == Status.FAILED
    assert health.reasons == (f"XID {code} on {WHO} at PCI 0000:18:00: msg",)


def test_non_critical_xid_is_a_note() -> None:
    health = classify_node(node(xids=(xid(13, message="Graphics SM Warp Exception"),)))
    assert health.status == Status.OK
    assert health.reasons == ()
    assert health.notes == (
        f"XID 13 on {WHO} at PCI 0000:18:00: Graphics SM Warp Exception (not a critical XID)",
    )


def test_repeated_xids_are_counted_once_per_gpu() -> None:
    events = (xid(79, "0000:5d:00"), xid(79, "0000:5d:00"), xid(79, "0000:5d:00"))
    health = classify_node(node(xids=events))
    assert health.reasons == ("XID 79 on PCI 0000:5d:00, 3 times: msg",)
    assert len(health.xids) == 3


def test_xid_on_a_lost_gpu_names_it() -> None:
    lost = GpuError("GPU is lost", "0000:5D:00.0", 3)
    health = classify_node(node(gpu_errors=(lost,), xids=(xid(79, "0000:5d:00"),)))
    assert "XID 79 on GPU 3 (0000:5D:00.0) at PCI 0000:5d:00: msg" in health.reasons


def test_unreadable_kernel_log_is_a_note_not_a_status() -> None:
    health = classify_node(node(kernel_log_error="kernel log not readable (rc 1): denied"))
    assert health.status == Status.OK
    assert health.notes == ("XIDs not checked: kernel log not readable (rc 1): denied",)


def test_critical_xid_fails_even_when_nvidia_smi_is_broken() -> None:
    probe = NodeProbe(smi_error="nvidia-smi hung (killed after 10 s)", xids=(xid(79),))
    assert classify_node(probe, "H100", 8).status == Status.FAILED


def test_custom_thresholds_are_used() -> None:
    hot = Thresholds(temperature_margin_c=10)
    assert classify_node(node(gpu(temperature_c=79.0)), thresholds=hot).status == Status.DEGRADED
    assert classify_node(node(gpu(temperature_c=78.9)), thresholds=hot).status == Status.OK
    full = Thresholds(memory_used_pct=80)
    assert classify_node(node(gpu(memory_used_mib=65248)), thresholds=full).status == "degraded"
    assert classify_node(node(gpu(memory_used_mib=65246)), thresholds=full).status == "ok"
    thermal_only = Thresholds(slowdown_clock_events=0x40)
    assert classify_node(node(gpu(clock_event_reasons=0x4)), thresholds=thermal_only).status == "ok"
    health = classify_node(node(gpu(clock_event_reasons=0x44)), thresholds=thermal_only)
    assert health.reasons == (f"{WHO}: clocks slowed by hw_thermal_slowdown (0x40)",)


# ----------------------------------------------------------------- endpoints

LLAMA = ["llama-3.1-8b"]
# (id, probe, expected models, expected status, exact reasons)
ENDPOINT_CASES = [
    ("ok", EndpointProbe(200, ("llama-3.1-8b",), 40.0), LLAMA, "ok", []),
    ("no-expectations", EndpointProbe(204, None, None), [], "ok", []),
    (
        "connect-error",
        EndpointProbe(error="connect to 10.0.0.7:8000 timed out after 3 s"),
        LLAMA,
        "unreachable",
        ["endpoint unreachable: connect to 10.0.0.7:8000 timed out after 3 s"],
    ),
    ("http-503", EndpointProbe(503, None, 40.0), [], "failed", ["health route returned HTTP 503"]),
    ("http-301", EndpointProbe(301, None, 40.0), [], "failed", ["health route returned HTTP 301"]),
    (
        "model-missing",
        EndpointProbe(200, ("other",), 40.0),
        LLAMA,
        "failed",
        ["expected models not served: llama-3.1-8b"],
    ),
    (
        "models-unread",
        EndpointProbe(200, None, 40.0),
        LLAMA,
        "unknown",
        ["model list not read; cannot confirm llama-3.1-8b"],
    ),
    (
        "slow-at-threshold",
        EndpointProbe(200, ("llama-3.1-8b",), 250.0),
        LLAMA,
        "degraded",
        ["round trip 250 ms, at or above 250 ms"],
    ),
    ("just-fast-enough", EndpointProbe(200, ("llama-3.1-8b",), 249.9), LLAMA, "ok", []),
    (
        "everything-wrong",
        EndpointProbe(500, (), 812.34),
        LLAMA,
        "failed",
        [
            "health route returned HTTP 500",
            "expected models not served: llama-3.1-8b",
            "round trip 812.3 ms, at or above 250 ms",
        ],
    ),
]


@pytest.mark.parametrize(
    ("probe", "models", "status", "reasons"),
    [c[1:] for c in ENDPOINT_CASES],
    ids=[c[0] for c in ENDPOINT_CASES],
)
def test_endpoint_rules(probe: EndpointProbe, models: list[str], status: str, reasons: list[str]) -> None:
    health = classify_endpoint(probe, models)
    assert health.status == status
    assert list(health.reasons) == reasons
    assert health.endpoint == probe


def test_endpoint_lists_every_missing_model() -> None:
    health = classify_endpoint(EndpointProbe(200, ("a",), 1.0), ["a", "b", "c"])
    assert health.reasons == ("expected models not served: b, c",)


def test_endpoint_slow_threshold_comes_from_the_table() -> None:
    probe = EndpointProbe(200, (), 100.0)
    assert classify_endpoint(probe).status == Status.OK
    assert classify_endpoint(probe, (), Thresholds(endpoint_slow_ms=100)).status == "degraded"
    assert DEFAULT.endpoint_slow_ms == 250.0


def test_unreachable() -> None:
    health = unreachable("node7: host key changed (REFUSED)")
    assert health.status == Status.UNREACHABLE
    assert health.reasons == ("node7: host key changed (REFUSED)",)
    assert health.to_dict()["status"] == "unreachable"
