"""Pure GPU and endpoint health: readings in, ``Health`` out. No I/O here.

- :mod:`.nvidia_smi`: the node probe script and its parser (a pyinfra-style fact)
- :mod:`.nvml`: NVML readings -> the same ``NodeProbe``
- :mod:`.classify`: the rules, after DCGM's health watches
- :mod:`.thresholds`: every number the rules use, and the critical XIDs
"""

from gridctl.core.health.classify import classify_endpoint, classify_node, model_matches, unreachable
from gridctl.core.health.model import (
    EndpointProbe,
    GpuError,
    GpuReading,
    Health,
    NodeProbe,
    Status,
    XidEvent,
    exit_code_for,
    worst,
)
from gridctl.core.health.nvidia_smi import build_node_probe_command, parse_node_probe, parse_xid_lines
from gridctl.core.health.nvml import readings_from_nvml
from gridctl.core.health.thresholds import CRITICAL_XIDS, DEFAULT, Thresholds

__all__ = [
    "CRITICAL_XIDS",
    "DEFAULT",
    "EndpointProbe",
    "GpuError",
    "GpuReading",
    "Health",
    "NodeProbe",
    "Status",
    "Thresholds",
    "XidEvent",
    "build_node_probe_command",
    "classify_endpoint",
    "classify_node",
    "exit_code_for",
    "model_matches",
    "parse_node_probe",
    "parse_xid_lines",
    "readings_from_nvml",
    "unreachable",
    "worst",
]
