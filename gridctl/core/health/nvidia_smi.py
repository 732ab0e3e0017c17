"""The nvidia-smi fact: one shell script to run on a node, and its pure parser.

Modelled on a pyinfra fact: :func:`build_node_probe_command` is the command,
:func:`parse_node_probe` the ``process(output)``. The script prints sections
between ``@@gridctl:`` markers, each closed by its exit code::

    @@gridctl:probe 1 timeout=10 xid_window=3600
    @@gridctl:section gpu            nvidia-smi --query-gpu (stderr merged)
    @@gridctl:rc 0
    @@gridctl:section remap          nvidia-smi --query-remapped-rows
    @@gridctl:section temperature    nvidia-smi -q -d TEMPERATURE
    @@gridctl:section xid            NVRM: Xid lines from journalctl -k / dmesg
    @@gridctl:end

Field names and formats follow ``nvidia-smi --help-query-gpu`` and real
outputs (see tests/fixtures/gpu/README.md). The parser never raises: output it
cannot read becomes an ``smi_error`` saying why.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field, replace

from gridctl.core.health.model import GpuError, GpuReading, NodeProbe, XidEvent
from gridctl.core.health.thresholds import DEFAULT

# --query-gpu fields, in column order. pci.bus_id ties a row to its XIDs and to
# its "GPU 00000000:18:00.0" block in `nvidia-smi -q`.
QUERY_GPU_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "uuid",
    "pci.bus_id",
    "driver_version",
    "memory.total",
    "memory.used",
    "utilization.gpu",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "ecc.errors.uncorrected.volatile.total",
    "retired_pages.pending",
    "clocks_event_reasons.active",
)
# Drivers before the rename (R530) only know the old name; drivers since accept
# both. The script asks for the new name and, if nvidia-smi answers
# 'Field "clocks_event_reasons.active" is not a valid field to query.', asks
# again with this one.
LEGACY_CLOCK_FIELD = "clocks_throttle_reasons.active"
QUERY_GPU_FIELDS_LEGACY: tuple[str, ...] = (*QUERY_GPU_FIELDS[:-1], LEGACY_CLOCK_FIELD)
REMAPPED_ROWS_FIELDS: tuple[str, ...] = (
    "gpu_uuid",
    "remapped_rows.correctable",
    "remapped_rows.uncorrectable",
    "remapped_rows.pending",
    "remapped_rows.failure",
)
CSV_FORMAT = "--format=csv,noheader,nounits"
# The slowdown temperature, from `nvidia-smi -q -d TEMPERATURE`: "GPU Slowdown
# Temp" on most drivers, or derived from the "T.Limit" lines newer drivers print
# for some GPUs (temperature.gpu.tlimit is not on every driver, and one unknown
# field fails a whole --query-gpu).
TEMPERATURE_ARGS: tuple[str, ...] = ("-q", "-d", "TEMPERATURE")

MARK = "@@gridctl:"
PROBE_VERSION = "1"
DRIVER_NOT_LOADED = "couldn't communicate with the NVIDIA driver"
INVALID_FIELD = "is not a valid field to query"
HUNG_RCS = (124, 137)  # timeout(1): TERM sent / KILL sent
RC_DRIVER_NOT_LOADED = 9  # nvidia-smi(1) RETURN VALUE


def _argv(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _query_gpu(fields: tuple[str, ...]) -> str:
    return _argv("nvidia-smi", "--query-gpu=" + ",".join(fields), CSV_FORMAT)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def build_node_probe_command(
    timeout_s: float = DEFAULT.smi_timeout_s, xid_window_s: int = DEFAULT.xid_window_s
) -> str:
    """One POSIX sh script that reads a node's GPUs and recent XIDs.

    Every nvidia-smi, journalctl and dmesg call runs under ``timeout`` (when the
    node has it); after a hang or "driver not loaded" the other nvidia-smi calls
    are skipped. Run it with ``sh -c`` when the login shell may not be POSIX.
    """
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a positive number, not {timeout_s!r}")
    if xid_window_s <= 0:
        raise ValueError(f"xid_window_s must be positive, not {xid_window_s!r}")
    header = f"{MARK}probe {PROBE_VERSION} timeout={_number(timeout_s)} xid_window={int(xid_window_s)}"
    lines = [
        *_runner_lines(header, shlex.quote(_number(timeout_s))),
        *_gpu_lines(),
        *_xid_lines(int(xid_window_s)),
        f"echo {shlex.quote(MARK + 'end')}",
    ]
    return "\n".join(lines) + "\n"


def _runner_lines(header: str, timeout: str) -> list[str]:
    """The probe's header, and ``gridctl_run``: a command under ``timeout`` when the node has it."""
    return [
        "LC_ALL=C; export LC_ALL",
        f"echo {shlex.quote(header)}",
        "if command -v timeout >/dev/null 2>&1; then",
        f'  gridctl_run() {{ timeout -k 2 {timeout} "$@"; }}',
        "else",
        '  gridctl_run() { "$@"; }',
        "fi",
    ]


def _gpu_lines() -> list[str]:
    """The gpu section (the legacy clock field when the driver lacks the new one), then, unless
    nvidia-smi hung or found no driver, the remap and temperature sections."""
    hung = " ".join(f'[ "$gridctl_rc" -ne {rc} ] &&' for rc in HUNG_RCS)
    remap = _argv("nvidia-smi", "--query-remapped-rows=" + ",".join(REMAPPED_ROWS_FIELDS), CSV_FORMAT)
    return [
        f"echo {shlex.quote(MARK + 'section gpu')}",
        "if command -v nvidia-smi >/dev/null 2>&1; then",
        f"  gridctl_out=$(gridctl_run {_query_gpu(QUERY_GPU_FIELDS)} 2>&1); gridctl_rc=$?",
        '  case "$gridctl_out" in',
        f"    *{shlex.quote(INVALID_FIELD)}*)",
        f"      echo {shlex.quote(MARK + 'fallback ' + LEGACY_CLOCK_FIELD)}",
        f"      gridctl_out=$(gridctl_run {_query_gpu(QUERY_GPU_FIELDS_LEGACY)} 2>&1); gridctl_rc=$? ;;",
        "  esac",
        "  printf '%s\\n' \"$gridctl_out\"",
        f'  echo "{MARK}rc $gridctl_rc"',
        f'  if {hung} [ "$gridctl_rc" -ne {RC_DRIVER_NOT_LOADED} ]; then',
        f"    echo {shlex.quote(MARK + 'section remap')}",
        f"    gridctl_run {remap} 2>&1",
        f'    echo "{MARK}rc $?"',
        f"    echo {shlex.quote(MARK + 'section temperature')}",
        f"    gridctl_run {_argv('nvidia-smi', *TEMPERATURE_ARGS)} 2>&1",
        f'    echo "{MARK}rc $?"',
        "  fi",
        "else",
        f"  echo {shlex.quote(MARK + 'missing nvidia-smi')}",
        f"  echo {shlex.quote(MARK + 'rc 127')}",
        "fi",
    ]


def _xid_lines(window: int) -> list[str]:
    """The xid section: the kernel log of the last ``window`` seconds from journalctl, else
    dmesg (with the uptime, to place its timestamps), its NVRM Xid lines."""
    journal = _argv("journalctl", "-k", f"--since=-{window}s", "--no-pager")
    return [
        f"echo {shlex.quote(MARK + 'section xid')}",
        "gridctl_rc=127",
        "if command -v journalctl >/dev/null 2>&1; then",
        f"  gridctl_out=$(gridctl_run {journal} 2>&1); gridctl_rc=$?",
        '  case "$gridctl_out" in',
        "    *'No journal files were'*|*'insufficient permissions'*) gridctl_rc=1 ;;",
        "  esac",
        "fi",
        'if [ "$gridctl_rc" -eq 0 ]; then',
        f"  echo {shlex.quote(MARK + 'source journalctl')}",
        "else",
        f"  echo {shlex.quote(MARK + 'source dmesg')}",
        f"  echo \"{MARK}uptime $(cut -d ' ' -f 1 /proc/uptime 2>/dev/null)\"",
        "  gridctl_out=$(gridctl_run dmesg 2>&1); gridctl_rc=$?",
        "fi",
        "printf '%s\\n' \"$gridctl_out\" | grep -F 'NVRM: Xid' | tail -n 100",
        'if [ "$gridctl_rc" -ne 0 ]; then printf \'%s\\n\' "$gridctl_out" | tail -n 3; fi',
        f'echo "{MARK}rc $gridctl_rc"',
    ]


# ---------------------------------------------------------------- parsing


@dataclass
class _Section:
    lines: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    rc: int | None = None
    closed: bool = False


def _split(stdout: str) -> tuple[dict[str, str] | None, dict[str, _Section]]:
    """Header fields (None without a header) and the sections by name."""
    header: dict[str, str] | None = None
    sections: dict[str, _Section] = {}
    current: _Section | None = None
    for line in stdout.splitlines():
        if not line.startswith(MARK):
            if current is not None and not current.closed:
                current.lines.append(line)
            continue
        key, _, value = line[len(MARK) :].strip().partition(" ")
        if key == "probe":
            header = {}
            for token in value.split()[1:]:
                name, _, setting = token.partition("=")
                header[name] = setting
        elif key == "section":
            current = sections.setdefault(value.strip(), _Section())
        elif current is not None and key == "rc":
            current.rc, current.closed = _int(value), True
        elif current is not None and key:
            current.meta[key] = value.strip()
    return header, sections


def _na(value: str) -> bool:
    v = value.strip()
    return not v or v in ("N/A", "Not Supported") or (v.startswith("[") and v.endswith("]"))


def _float(value: str) -> float | None:
    if _na(value):
        return None
    try:
        f = float(value.strip().split()[0])
    except (ValueError, IndexError):
        return None
    return f if math.isfinite(f) else None


def _int(value: str) -> int | None:
    if _na(value):
        return None
    v = value.strip()
    try:
        return int(v, 16) if v.lower().startswith("0x") else int(v)
    except ValueError:
        f = _float(v)
        return int(f) if f is not None and f.is_integer() else None


def _bool(value: str) -> bool | None:
    v = value.strip().lower()
    if v in ("yes", "active", "true"):
        return True
    if v in ("no", "not active", "false"):
        return False
    n = _int(value)
    return None if n is None else n > 0


_PCI = re.compile(r"([0-9A-Fa-f]{1,8}):([0-9A-Fa-f]{1,2}):([0-9A-Fa-f]{1,2})")


def pci_key(address: str) -> str | None:
    """A PCI address normalised for comparison: "00000000:3B:00.0" and the
    driver's "0000:3b:00" both become "0000:3b:00"."""
    m = _PCI.search(address)
    if m is None:
        return None
    domain, bus, device = (int(g, 16) for g in m.groups())
    return f"{domain & 0xFFFF:04x}:{bus:02x}:{device:02x}"


def parse_query_gpu_row(line: str) -> GpuReading | None:
    """One ``--query-gpu`` CSV row (``QUERY_GPU_FIELDS`` order), or None."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != len(QUERY_GPU_FIELDS):
        return None
    index = _int(parts[0])
    if index is None or index < 0 or not parts[1] or _na(parts[1]):
        return None
    return GpuReading(
        index=index,
        name=parts[1],
        uuid="" if _na(parts[2]) else parts[2],
        pci_bus_id=None if _na(parts[3]) else parts[3],
        driver_version=None if _na(parts[4]) else parts[4],
        memory_total_mib=_int(parts[5]),
        memory_used_mib=_int(parts[6]),
        utilization_pct=_float(parts[7]),
        temperature_c=_float(parts[8]),
        power_draw_w=_float(parts[9]),
        power_limit_w=_float(parts[10]),
        ecc_uncorrected_volatile=_int(parts[11]),
        retired_pages_pending=_bool(parts[12]),
        clock_event_reasons=_int(parts[13]),
    )


_HANDLE_ERROR = re.compile(
    r"Unable to determine the device handle for GPU\s*(?:(?P<index>\d{1,4}):\s+)?"
    r"(?P<pci>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])?:?\s*(?P<why>.*)"
)


def _handle_error(line: str) -> GpuError | None:
    m = _HANDLE_ERROR.search(line)
    if m is None:
        return None
    index = m.group("index")
    why = m.group("why").strip() or "Unknown Error"
    return GpuError(
        message=why,
        pci_bus_id=m.group("pci"),
        index=None if index is None else int(index),
    )


def _text(lines: list[str], limit: int = 300) -> str:
    joined = " ".join(ln.strip() for ln in lines if ln.strip())
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def _parse_gpu_section(
    sec: _Section | None, timeout: str
) -> tuple[list[GpuReading], list[GpuError], str | None]:
    if sec is None:
        return [], [], "nvidia-smi was not run (probe output cut short)"
    if "missing" in sec.meta:
        return [], [], "nvidia-smi not found"
    if sec.rc in HUNG_RCS:
        return [], [], f"nvidia-smi hung (killed after {timeout} s)"
    gpus: list[GpuReading] = []
    errors: list[GpuError] = []
    other: list[str] = []
    for line in sec.lines:
        row = parse_query_gpu_row(line)
        if row is not None:
            gpus.append(row)
            continue
        err = _handle_error(line)
        if err is not None:
            errors.append(err)
        elif line.strip():
            other.append(line)
    if sec.rc == RC_DRIVER_NOT_LOADED or any(DRIVER_NOT_LOADED in ln for ln in other):
        return [], [], f"NVIDIA driver not loaded: {_text(other) or 'nvidia-smi exit code 9'}"
    if not sec.closed:
        return gpus, errors, "nvidia-smi output incomplete (probe output cut short)"
    if sec.rc != 0 and not errors and (other or not gpus):
        detail = _text(other)
        return gpus, errors, f"nvidia-smi failed (rc {sec.rc})" + (f": {detail}" if detail else "")
    return gpus, errors, None


def _parse_remap(sec: _Section | None) -> dict[str, tuple[bool | None, bool | None]]:
    out: dict[str, tuple[bool | None, bool | None]] = {}
    for line in sec.lines if sec else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == len(REMAPPED_ROWS_FIELDS) and parts[0] and not _na(parts[0]):
            out[parts[0]] = (_bool(parts[3]), _bool(parts[4]))
    return out


_GPU_BLOCK = re.compile(r"^GPU\s+([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$")
_TEMP_LINE = re.compile(r"^\s*(GPU [A-Za-z. ]+?)\s*:\s*(\S+)")


def _slowdown(values: dict[str, float | None]) -> float | None:
    direct = values.get("GPU Slowdown Temp")
    if direct is not None:
        return direct
    current = values.get("GPU Current Temp")
    tlimit = values.get("GPU T.Limit Temp")
    slowdown_tlimit = values.get("GPU Slowdown T.Limit Temp")
    if current is None or tlimit is None or slowdown_tlimit is None:
        return None
    # T.Limit is the headroom to the max operating temperature; slowdown
    # starts when the headroom falls to "GPU Slowdown T.Limit Temp".
    return current + tlimit - slowdown_tlimit


def parse_temperature_query(text: str) -> dict[str, float]:
    """Slowdown temperature per GPU (by :func:`pci_key`) from ``nvidia-smi -q -d
    TEMPERATURE``; GPUs without a usable value are left out."""
    out: dict[str, float] = {}
    key: str | None = None
    values: dict[str, float | None] = {}

    def flush() -> None:
        slowdown = _slowdown(values)
        if key is not None and slowdown is not None:
            out[key] = slowdown

    for line in text.splitlines():
        block = _GPU_BLOCK.match(line)
        if block is not None:
            flush()
            key, values = pci_key(block.group(1)), {}
            continue
        m = _TEMP_LINE.match(line)
        if m is not None and key is not None:
            values[m.group(1)] = _float(m.group(2))
    flush()
    return out


_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2})[^)]*\):"
    r"\s*(?P<xid>\d{1,6})(?:,\s*(?P<rest>.*))?"
)
_PID_NAME = re.compile(r"^pid=[^,]*,\s*(?:name=[^,]*,\s*)?")


def parse_xid_lines(text: str) -> tuple[XidEvent, ...]:
    """Every ``NVRM: Xid`` line, whatever prefix the log adds: dmesg's
    ``[ 1234.567890]``, ``dmesg -T``'s date, journalctl's ``Jun 21 02:03:08 host
    kernel:``. Also the MIG form ``(PCI:0000:01:00 GPU-I:05)`` and the old form
    without ``PCI:``."""
    events: list[XidEvent] = []
    for line in text.splitlines():
        m = _XID.search(line)
        if m is None:
            continue
        rest = (m.group("rest") or "").strip()
        events.append(
            XidEvent(
                xid=int(m.group("xid")),
                pci=m.group("pci").lower(),
                message=_PID_NAME.sub("", rest),
                raw=line.rstrip(),
            )
        )
    return tuple(events)


_DMESG_TIME = re.compile(r"^\[\s*(\d{1,10}(?:\.\d+)?)\]")


def _recent(lines: list[str], uptime: float | None, window: float) -> list[str]:
    """Drop dmesg lines older than the window (their stamp is seconds since boot)."""
    if uptime is None:
        return lines
    keep = []
    for line in lines:
        m = _DMESG_TIME.match(line)
        if m is None or float(m.group(1)) >= uptime - window:
            keep.append(line)
    return keep


def _parse_xid_section(sec: _Section | None, window: float) -> tuple[tuple[XidEvent, ...], str | None]:
    if sec is None:
        return (), "kernel log not read (probe output cut short)"
    lines = sec.lines
    if sec.meta.get("source") == "dmesg":
        lines = _recent(lines, _float(sec.meta.get("uptime", "")), window)
    xids = parse_xid_lines("\n".join(lines))
    if not sec.closed:
        return xids, "kernel log output incomplete (probe output cut short)"
    if sec.rc != 0:
        detail = _text([ln for ln in sec.lines if "NVRM: Xid" not in ln])
        return xids, f"kernel log not readable (rc {sec.rc})" + (f": {detail}" if detail else "")
    return xids, None


def parse_node_probe(stdout: str, stderr: str = "", rc: int | None = 0) -> NodeProbe:
    """Parse what :func:`build_node_probe_command` printed. Never raises."""
    header, sections = _split(stdout)
    if header is None:
        detail = _text((stderr or stdout).splitlines()[:3])
        return NodeProbe(
            smi_error=f"probe output not recognised (rc {rc})" + (f": {detail}" if detail else "")
        )
    timeout = header.get("timeout", "?")
    window = _float(header.get("xid_window", "")) or float(DEFAULT.xid_window_s)
    gpus, gpu_errors, smi_error = _parse_gpu_section(sections.get("gpu"), timeout)
    remap = _parse_remap(sections.get("remap"))
    temperature = sections.get("temperature")
    slowdown = parse_temperature_query("\n".join(temperature.lines)) if temperature else {}
    merged = []
    for gpu in gpus:
        pending, failure = remap.get(gpu.uuid, (None, None))
        key = pci_key(gpu.pci_bus_id or "")
        merged.append(
            replace(
                gpu,
                remapped_rows_pending=pending,
                remapped_rows_failure=failure,
                slowdown_temperature_c=slowdown.get(key) if key else None,
            )
        )
    xids, kernel_log_error = _parse_xid_section(sections.get("xid"), window)
    return NodeProbe(
        gpus=tuple(merged),
        smi_error=smi_error,
        xids=xids,
        gpu_errors=tuple(gpu_errors),
        kernel_log_error=kernel_log_error,
    )
