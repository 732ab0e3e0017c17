"""Recorded GPU fixtures (tests/fixtures/gpu), and probe output assembled from them
the way the probe script assembles it, for parser tests that need no shell."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
STATES = sorted(p.name for p in (FIXTURES / "states").iterdir() if p.is_dir())

# state -> (inventory model, inventory count, expected status)
EXPECTED: dict[str, tuple[str, int, str]] = {
    "healthy-h100x8": ("H100", 8, "ok"),
    "healthy-l40sx4": ("L40S", 4, "ok"),
    "healthy-l4x2": ("L4", 2, "ok"),
    "legacy-l40sx4": ("L40S", 4, "ok"),
    "hot": ("H100", 8, "degraded"),
    "ecc": ("H100", 8, "failed"),
    "xid79": ("H100", 8, "failed"),
    "driver-not-loaded": ("H100", 8, "unknown"),
    "hang": ("H100", 8, "unknown"),
}


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def recording(state: str, name: str) -> tuple[str, str, int]:
    """(stdout, stderr, rc) nvidia-smi gave for one query in a state."""
    d = FIXTURES / "states" / state
    if (d / "all.stdout").exists():
        name = "all"
    rc = _read(d / f"{name}.rc").strip()
    return _read(d / f"{name}.stdout"), _read(d / f"{name}.stderr"), int(rc or 0)


def probe_stdout(
    state: str, timeout: str = "10", source: str = "journalctl", uptime: float | None = None
) -> str:
    """What the probe script prints in a state (stderr merged, as the script does)."""
    d = FIXTURES / "states" / state
    out = [f"@@gridctl:probe 1 timeout={timeout} xid_window=3600", "@@gridctl:section gpu"]
    if (d / "hang").exists():
        out += ["", "@@gridctl:rc 124"]
    else:
        stdout, stderr, rc = recording(state, "query-gpu")
        out += [(stderr + stdout).rstrip("\n"), f"@@gridctl:rc {rc}"]
        if rc != 9:
            for section, name in (("remap", "remapped-rows"), ("temperature", "temperature")):
                stdout, stderr, rc = recording(state, name)
                out += [f"@@gridctl:section {section}", (stderr + stdout).rstrip("\n")]
                out += [f"@@gridctl:rc {rc}"]
    out += ["@@gridctl:section xid", f"@@gridctl:source {source}"]
    if uptime is not None:
        out.append(f"@@gridctl:uptime {uptime}")
    log = _read(d / ("kernel.log" if source == "journalctl" else "dmesg.log"))
    out += [ln for ln in log.splitlines() if "NVRM: Xid" in ln]
    out += ["@@gridctl:rc 0", "@@gridctl:end"]
    return "\n".join(out) + "\n"
