"""The nvidia-smi fact: the probe command, and its parser on every recording and on garbage."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.core.health.classify import classify_node
from gridctl.core.health.model import NodeProbe, Status
from gridctl.core.health.nvidia_smi import (
    QUERY_GPU_FIELDS,
    QUERY_GPU_FIELDS_LEGACY,
    REMAPPED_ROWS_FIELDS,
    build_node_probe_command,
    parse_node_probe,
    parse_query_gpu_row,
    parse_temperature_query,
    parse_xid_lines,
    pci_key,
)
from tests.health.recorded import EXPECTED, FIXTURES, STATES, probe_stdout


def test_every_state_has_an_expectation() -> None:
    assert sorted(EXPECTED) == STATES


def test_recordings_answer_the_fields_the_probe_asks_for() -> None:
    """A change to the query without new recordings fails here, not on a GPU."""
    assert (FIXTURES / "fields" / "query-gpu").read_text().strip() == ",".join(QUERY_GPU_FIELDS)
    assert (FIXTURES / "fields" / "remapped-rows").read_text().strip() == ",".join(REMAPPED_ROWS_FIELDS)
    assert QUERY_GPU_FIELDS_LEGACY[-1] == "clocks_throttle_reasons.active"
    assert QUERY_GPU_FIELDS_LEGACY[:-1] == QUERY_GPU_FIELDS[:-1]


@pytest.mark.parametrize("state", STATES)
def test_every_recorded_state_classifies_as_expected(state: str) -> None:
    model, count, status = EXPECTED[state]
    probe = parse_node_probe(probe_stdout(state), "", 0)
    assert classify_node(probe, model, count).status == status


def test_healthy_h100_readings() -> None:
    probe = parse_node_probe(probe_stdout("healthy-h100x8"))
    assert probe.smi_error is None and probe.gpu_errors == () and probe.xids == ()
    assert [g.index for g in probe.gpus] == list(range(8))
    first = probe.gpus[0]
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.uuid.startswith("GPU-") and len(first.uuid) == 40
    assert first.pci_bus_id == "00000000:18:00.0"
    assert first.driver_version == "550.127.05"
    assert (first.memory_total_mib, first.memory_used_mib) == (81559, 73402)
    assert (first.utilization_pct, first.temperature_c) == (91.0, 58.0)
    assert (first.power_draw_w, first.power_limit_w) == (512.44, 700.0)
    assert first.ecc_uncorrected_volatile == 0
    assert first.retired_pages_pending is None  # "[N/A]": H100 remaps rows instead
    assert (first.remapped_rows_pending, first.remapped_rows_failure) == (False, False)
    assert first.clock_event_reasons == 0
    assert first.slowdown_temperature_c == 89.0  # 58 + T.Limit 29 - (-2)
    assert probe.gpus[4].clock_event_reason_names == ("gpu_idle",)


@pytest.mark.parametrize(
    ("state", "count", "name", "slowdown"),
    [
        ("healthy-l40sx4", 4, "NVIDIA L40S", 91.0),
        ("healthy-l4x2", 2, "NVIDIA L4", 93.0),
        ("legacy-l40sx4", 4, "NVIDIA L40S", 91.0),
    ],
)
def test_other_healthy_models(state: str, count: int, name: str, slowdown: float) -> None:
    probe = parse_node_probe(probe_stdout(state))
    assert len(probe.gpus) == count
    assert {g.name for g in probe.gpus} == {name}
    assert {g.slowdown_temperature_c for g in probe.gpus} == {slowdown}


def test_hot_readings() -> None:
    gpus = parse_node_probe(probe_stdout("hot")).gpus
    assert (gpus[3].temperature_c, gpus[3].slowdown_temperature_c) == (87.0, 89.0)
    assert gpus[3].clock_event_reason_names == ("sw_thermal_slowdown",)
    assert (gpus[5].temperature_c, gpus[5].clock_event_reasons) == (85.0, 0)
    health = classify_node(parse_node_probe(probe_stdout("hot")), "H100", 8)
    assert health.reasons == (
        f"GPU 3 ({gpus[3].uuid[:12]}): clocks slowed by sw_thermal_slowdown (0x20)",
        f"GPU 3 ({gpus[3].uuid[:12]}): 87 °C, within 5 °C of its 89 °C slowdown temperature",
        f"GPU 5 ({gpus[5].uuid[:12]}): 85 °C, within 5 °C of its 89 °C slowdown temperature",
    )


def test_ecc_readings() -> None:
    probe = parse_node_probe(probe_stdout("ecc"))
    bad = probe.gpus[2]
    assert bad.ecc_uncorrected_volatile == 2
    assert (bad.remapped_rows_pending, bad.remapped_rows_failure) == (True, False)
    assert [(x.xid, x.pci) for x in probe.xids] == [(94, "0000:3a:00"), (63, "0000:3a:00")]
    assert probe.xids[0].message == "Contained: SM (0x1). RST: No, D-RST: No"
    reasons = classify_node(probe, "H100", 8).reasons
    assert f"GPU 2 ({bad.uuid[:12]}): 2 uncorrected ECC errors (volatile)" in reasons


def test_xid79_gpu_lost() -> None:
    probe = parse_node_probe(probe_stdout("xid79"))
    assert probe.smi_error is None
    assert [g.index for g in probe.gpus] == [0, 1, 2, 4, 5, 6, 7]
    assert len(probe.gpu_errors) == 1
    lost = probe.gpu_errors[0]
    assert (lost.index, lost.pci_bus_id) == (None, "0000:5D:00.0")
    assert lost.message == "GPU is lost.  Reboot the system to recover this GPU"
    assert [(x.xid, x.pci, x.message) for x in probe.xids] == [
        (79, "0000:5d:00", "GPU has fallen off the bus.")
    ]
    health = classify_node(probe, "H100", 8)
    assert health.reasons == (
        "GPU 0000:5D:00.0: inaccessible: GPU is lost.  Reboot the system to recover this GPU",
        "7 GPUs found, inventory expects 8",
        "XID 79 on PCI 0000:5d:00: GPU has fallen off the bus.",
    )


def test_xid79_from_dmesg_keeps_only_the_window() -> None:
    """dmesg has no --since: the parser drops lines older than the window by uptime.
    The recording holds an XID 13 two hours before the XID 79."""
    out = probe_stdout("xid79", source="dmesg", uptime=9100.0)
    assert [x.xid for x in parse_node_probe(out).xids] == [79]
    everything = probe_stdout("xid79", source="dmesg", uptime=None)
    assert [x.xid for x in parse_node_probe(everything).xids] == [13, 79]


def test_driver_not_loaded() -> None:
    probe = parse_node_probe(probe_stdout("driver-not-loaded"))
    assert probe.gpus == ()
    assert probe.smi_error == (
        "NVIDIA driver not loaded: NVIDIA-SMI has failed because it couldn't communicate with"
        " the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."
    )


def test_hang() -> None:
    probe = parse_node_probe(probe_stdout("hang", timeout="7"))
    assert probe.smi_error == "nvidia-smi hung (killed after 7 s)"
    assert classify_node(probe, "H100", 8).reasons == ("nvidia-smi hung (killed after 7 s)",)


def section(body: str, rc: int | str = 0, name: str = "gpu", header: bool = True) -> str:
    head = "@@gridctl:probe 1 timeout=10 xid_window=3600\n" if header else ""
    return f"{head}@@gridctl:section {name}\n{body}\n@@gridctl:rc {rc}\n@@gridctl:end\n"


@pytest.mark.parametrize(
    ("body", "rc", "error"),
    [
        ("@@gridctl:missing nvidia-smi", 127, "nvidia-smi not found"),
        ("", 137, "nvidia-smi hung (killed after 10 s)"),
        ("No devices were found", 6, "nvidia-smi failed (rc 6): No devices were found"),
        (
            "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 550.1",
            18,
            "nvidia-smi failed (rc 18): Failed to initialize NVML: Driver/library version"
            " mismatch NVML library version: 550.1",
        ),
        ("", 9, "NVIDIA driver not loaded: nvidia-smi exit code 9"),
        ("", 255, "nvidia-smi failed (rc 255)"),
        (
            'Field "clocks_throttle_reasons.active" is not a valid field to query.',
            2,
            'nvidia-smi failed (rc 2): Field "clocks_throttle_reasons.active" is not a valid field to query.',
        ),
    ],
)
def test_nvidia_smi_errors(body: str, rc: int, error: str) -> None:
    probe = parse_node_probe(section(body, rc))
    assert probe.smi_error == error
    assert probe.gpus == ()


ROW = (
    "0, NVIDIA L4, GPU-1b3c5d7e-0000-1111-2222-333344445555, 00000000:01:00.0, 550.127.05,"
    " 23034, 20730, 76, 58, 61.42, 72.00, 0, [N/A], 0x0000000000000000"
)


@pytest.mark.parametrize(
    "handle_error",
    [
        "Unable to determine the device handle for GPU0000:81:00.0: Unknown Error",
        "Unable to determine the device handle for GPU 0000:81:00.0: GPU is lost.  Reboot the"
        " system to recover this GPU",
        "Unable to determine the device handle for GPU1: 0000:81:00.0: Unknown Error",
    ],
)
def test_device_handle_error_formats(handle_error: str) -> None:
    probe = parse_node_probe(section(f"{handle_error}\n{ROW}", 15))
    assert probe.smi_error is None
    assert len(probe.gpus) == 1
    (lost,) = probe.gpu_errors
    assert lost.pci_bus_id == "0000:81:00.0"
    assert lost.index in (None, 1)
    assert lost.message in ("Unknown Error", "GPU is lost.  Reboot the system to recover this GPU")
    assert classify_node(probe, "L4", 2).status == Status.FAILED


def test_nonzero_exit_with_rows_and_noise_is_an_error() -> None:
    probe = parse_node_probe(section(f"{ROW}\nWARNING: infoROM is corrupted at gpu 0000:01:00.0", 14))
    assert probe.smi_error == ("nvidia-smi failed (rc 14): WARNING: infoROM is corrupted at gpu 0000:01:00.0")
    assert len(probe.gpus) == 1


@pytest.mark.parametrize(
    ("value", "field", "expected"),
    [
        ("[N/A]", "ecc_uncorrected_volatile", None),
        ("[Not Supported]", "power_draw_w", None),
        ("[Unknown Error]", "temperature_c", None),
        ("nan", "power_draw_w", None),
        ("12", "ecc_uncorrected_volatile", 12),
    ],
)
def test_row_values_not_reported_become_none(value: str, field: str, expected: object) -> None:
    column = {"ecc_uncorrected_volatile": 11, "power_draw_w": 9, "temperature_c": 8}[field]
    parts = ROW.split(", ")
    parts[column] = value
    row = parse_query_gpu_row(", ".join(parts))
    assert row is not None
    assert getattr(row, field) == expected


@pytest.mark.parametrize(
    "line",
    ["", "0, NVIDIA L4", ROW + ", extra", "x" + ROW, "-1" + ROW[1:], ", ".join(["[N/A]"] * 14)],
)
def test_rows_that_are_not_rows(line: str) -> None:
    assert parse_query_gpu_row(line) is None


def test_retired_pages_and_remap_values() -> None:
    parts = ROW.split(", ")
    parts[12] = "Yes"
    row = parse_query_gpu_row(", ".join(parts))
    assert row is not None and row.retired_pages_pending is True
    remap = "GPU-1b3c5d7e-0000-1111-2222-333344445555, 0, 1, 1, 0"
    probe = parse_node_probe(section(ROW) + section(remap, name="remap", header=False))
    assert (probe.gpus[0].remapped_rows_pending, probe.gpus[0].remapped_rows_failure) == (
        True,
        False,
    )


TEMPERATURE_OLD = """
==============NVSMI LOG==============

Attached GPUs                             : 2
GPU 00000000:AF:00.0
    Temperature
        GPU Current Temp                  : 31 C
        GPU Shutdown Temp                 : 92 C
        GPU Slowdown Temp                 : 89 C
        GPU Max Operating Temp            : 85 C

GPU 00000000:B0:00.0
    Temperature
        GPU Current Temp                  : 35 C
        GPU Shutdown Temp                 : N/A
        GPU Slowdown Temp                 : N/A
"""
TEMPERATURE_TLIMIT = """
GPU 00000000:53:00.0
    Temperature
        GPU Current Temp                  : 36 C
        GPU T.Limit Temp                  : 50 C
        GPU Shutdown T.Limit Temp         : -8 C
        GPU Slowdown T.Limit Temp         : -2 C
        GPU Max Operating T.Limit Temp    : 0 C
"""


def test_temperature_query_formats() -> None:
    assert parse_temperature_query(TEMPERATURE_OLD) == {"0000:af:00": 89.0}
    assert parse_temperature_query(TEMPERATURE_TLIMIT) == {"0000:53:00": 88.0}
    assert parse_temperature_query("GPU Slowdown Temp : 89 C") == {}


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("00000000:3B:00.0", "0000:3b:00"),
        ("0000:3b:00", "0000:3b:00"),
        ("PCI:0000:3b:00", "0000:3b:00"),
        ("nonsense", None),
    ],
)
def test_pci_key(address: str, key: str | None) -> None:
    assert pci_key(address) == key


XID_LINES = [
    (
        "[ 1234.567890] NVRM: Xid (PCI:0000:3b:00): 79, pid=0, name=nvidia-smi, GPU has fallen off the bus.",
        79,
        "0000:3b:00",
        "GPU has fallen off the bus.",
    ),
    (
        "Jun 21 02:03:08 node7 kernel: NVRM: Xid (PCI:0000:05:00): 79, pid='<unknown>',"
        " name=<unknown>, GPU has fallen off the bus.",
        79,
        "0000:05:00",
        "GPU has fallen off the bus.",
    ),
    (
        "[Fri Aug 30 11:43:09 2024] NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>',"
        " name=<unknown>, Graphics SM Warp Exception on (GPC 7, TPC 0, SM 1): Out Of Range",
        13,
        "0000:cb:00",
        "Graphics SM Warp Exception on (GPC 7, TPC 0, SM 1): Out Of Range",
    ),
    (
        "NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, pid=7194, Contained: CE User Channel (0x9)."
        " RST: No, D-RST: No",
        94,
        "0000:01:00",
        "Contained: CE User Channel (0x9). RST: No, D-RST: No",
    ),
    ("NVRM: Xid (0000:03:00): 14, Channel 00000001", 14, "0000:03:00", "Channel 00000001"),
    (
        "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping,"
        " reset gpu to activate.",
        63,
        "0000:10:1c",
        "Row Remapper: New row marked for remapping, reset gpu to activate.",
    ),
    ("NVRM: Xid (PCI:0000:5A:00): 48", 48, "0000:5a:00", ""),
]


@pytest.mark.parametrize(("line", "code", "pci", "message"), XID_LINES)
def test_parse_xid_lines(line: str, code: int, pci: str, message: str) -> None:
    (event,) = parse_xid_lines(f"unrelated\n{line}\nNVRM: GPU 0000:3b:00.0: GPU has fallen off\n")
    assert (event.xid, event.pci, event.message, event.raw) == (code, pci, message, line)


def test_unreadable_kernel_log_is_reported() -> None:
    body = "@@gridctl:source dmesg\ndmesg: read kernel buffer failed: Operation not permitted"
    probe = parse_node_probe(section(ROW) + section(body, 1, "xid", header=False))
    assert probe.kernel_log_error == (
        "kernel log not readable (rc 1): dmesg: read kernel buffer failed: Operation not permitted"
    )
    assert classify_node(probe, "L4", 1).notes == (f"XIDs not checked: {probe.kernel_log_error}",)


@pytest.mark.parametrize(
    ("stdout", "stderr", "rc", "error"),
    [
        ("", "", 0, "probe output not recognised (rc 0)"),
        (
            "",
            "fish: Unsupported use of '='.\nmore",
            127,
            "probe output not recognised (rc 127): fish: Unsupported use of '='. more",
        ),
        ("garbage\n", "", None, "probe output not recognised (rc None): garbage"),
    ],
)
def test_output_that_is_not_the_probe(stdout: str, stderr: str, rc: int | None, error: str) -> None:
    assert parse_node_probe(stdout, stderr, rc) == NodeProbe(smi_error=error)


def test_output_cut_short() -> None:
    cut = probe_stdout("healthy-l4x2").split("@@gridctl:rc")[0]
    probe = parse_node_probe(cut, "", None)
    assert probe.smi_error == "nvidia-smi output incomplete (probe output cut short)"
    assert probe.kernel_log_error == "kernel log not read (probe output cut short)"
    assert classify_node(probe, "L4", 2).status == Status.UNKNOWN
    header_only = parse_node_probe("@@gridctl:probe 1 timeout=5\n")
    assert header_only.smi_error == "nvidia-smi was not run (probe output cut short)"


# --------------------------------------------------------------- the command


def test_command_quotes_everything_and_carries_the_fields() -> None:
    script = build_node_probe_command(2.5, 600)
    assert script.startswith("LC_ALL=C")
    assert "@@gridctl:probe 1 timeout=2.5 xid_window=600" in script
    assert "timeout -k 2 2.5" in script
    assert "--query-gpu=" + ",".join(QUERY_GPU_FIELDS) in script
    assert "--query-gpu=" + ",".join(QUERY_GPU_FIELDS_LEGACY) in script
    assert "--query-remapped-rows=" + ",".join(REMAPPED_ROWS_FIELDS) in script
    assert "nvidia-smi -q -d TEMPERATURE" in script
    assert "journalctl -k --since=-600s --no-pager" in script
    for line in script.splitlines():
        shlex.split(line)  # balanced quoting on every line
    assert build_node_probe_command(10).count("timeout -k 2 10 ") == 1


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_command_rejects_a_bad_timeout(bad: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        build_node_probe_command(bad)


# ------------------------------------------------------------- never raises

MARKERS = st.sampled_from(
    [
        "@@gridctl:probe 1 timeout=10 xid_window=3600",
        "@@gridctl:probe",
        "@@gridctl:probe 1 timeout xid_window=abc",
        "@@gridctl:section gpu",
        "@@gridctl:section remap",
        "@@gridctl:section temperature",
        "@@gridctl:section xid",
        "@@gridctl:source dmesg",
        "@@gridctl:uptime 12.5",
        "@@gridctl:uptime nan",
        "@@gridctl:missing nvidia-smi",
        "@@gridctl:rc 0",
        "@@gridctl:rc 9",
        "@@gridctl:rc 124",
        "@@gridctl:rc x",
        "@@gridctl:",
        "@@gridctl:end",
        ROW,
        "GPU 00000000:01:00.0",
        "        GPU Current Temp                  : 36 C",
        "        GPU T.Limit Temp                  : 50 C",
        "        GPU Slowdown T.Limit Temp         : -2 C",
        "Unable to determine the device handle for GPU1: 0000:81:00.0: Unknown Error",
        "[ 99999999.1] NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.",
        "NVRM: Xid (PCI:0000:3b:00): 99999999999, x",
    ]
)
CELLS = st.one_of(
    st.sampled_from(["[N/A]", "0x", "0x" + "f" * 40, "1e999", "-0", "Yes", " ", "9" * 5000]),
    st.text(max_size=12),
)
CSV_LINES = st.lists(CELLS, min_size=14, max_size=14).map(", ".join)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.one_of(st.none(), st.integers()))
def test_parse_never_raises_on_arbitrary_text(stdout: str, stderr: str, rc: int | None) -> None:
    probe = parse_node_probe(stdout, stderr, rc)
    health = classify_node(probe, "H100", 8)
    assert health.status in Status and health.to_dict()["status"] == health.status.value


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(MARKERS, CSV_LINES, st.text(max_size=80)), max_size=40))
def test_parse_never_raises_on_mangled_probe_output(lines: list[str]) -> None:
    probe = parse_node_probe("\n".join(lines), "", 0)
    health = classify_node(probe, "H100", 8)
    assert health.status in set(Status)
    parse_xid_lines("\n".join(lines))
    parse_temperature_query("\n".join(lines))
