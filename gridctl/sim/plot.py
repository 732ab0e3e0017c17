"""The chart of ``gridctl sim --plot``: p99 end-to-end latency over time, one line per policy.

The upper panel: for each time bucket, the p99 end-to-end latency of the
requests that arrived in it (completed ones), one line per policy; burst
windows shaded; the SLO as a dashed line. Values above the panel's top are drawn
at the top edge (the legend gives each policy's overall p99). The lower panel:
requests rejected per second, per policy. ``build_chart`` is pure (figures in,
PNG bytes out); ``write_chart`` writes the file.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gridctl.sim.png import Canvas, Colour, encode_png, text_width

WIDTH, HEIGHT = 1100, 640
BG: Colour = (255, 255, 255)
INK: Colour = (40, 40, 40)
GRID: Colour = (228, 228, 228)
BURST: Colour = (255, 236, 204)
SLO: Colour = (200, 30, 30)
COLOURS: Mapping[str, Colour] = {
    "grid": (0, 114, 178),
    "central": (213, 94, 0),
    "nearest": (0, 158, 115),
    "round-robin": (150, 100, 170),
}
FALLBACK: tuple[Colour, ...] = ((90, 90, 90), (230, 159, 0), (86, 180, 233))


def nice_step(span: float, ticks: int = 6) -> float:
    """A round tick step (1, 2, 2.5 or 5 x 10^k) giving about ``ticks`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v: float) -> str:
    return f"{v:g}" if v < 10_000 else f"{v / 1000:g}k"


def _y_ticks(c: Canvas, left: int, right: int, top: int, bottom: int, vmax: float, step: float) -> None:
    v = 0.0
    while v <= vmax + 1e-9:
        y = int(round(bottom - (bottom - top) * v / vmax))
        if v > 0:
            c.hline(left + 1, right, y, GRID)
        c.text(left - 8 - text_width(_fmt(v)), y - 3, _fmt(v), INK)
        v += step


def build_chart(result: Mapping[str, Any], series: Sequence[Mapping[str, Any]]) -> bytes:
    sc = result["scenario"]
    slo = float(sc["slo_ms"])
    duration = float(sc["duration_s"])
    c = Canvas(WIDTH, HEIGHT, BG)
    left, right = 78, WIDTH - 24
    top, bottom = 90, 440  # latency panel (two legend rows above it)
    rtop, rbottom = 486, 590  # rejections panel
    what = sc["profile"] or "trace"
    seed = f", seed {sc['seed']}" if sc.get("seed") is not None else ""
    title = f"gridctl sim: {what}, {sc['model']}, {sc['requests']} requests{seed}"
    c.text(left, 12, title, INK, 2)
    if series:
        c.text(
            left,
            36,
            f"p99 end-to-end latency (ms) of the requests arriving in each {series[0]['bucket_s']:g} s; "
            "shaded: bursts; dashed: the SLO; values above the top are drawn at the top",
            INK,
        )

    peak = max((v for s in series for v in s["p99_e2e_ms"] if v is not None), default=slo)
    ymax = min(max(peak * 1.08, slo * 1.25), slo * 4.0)
    ystep = nice_step(ymax)
    ymax = math.ceil(ymax / ystep) * ystep

    def x_of(t: float) -> float:
        return left + (right - left) * (t / duration if duration else 0.0)

    def y_of(v: float, y0: int, y1: int, vmax: float) -> float:
        return y1 - (y1 - y0) * min(v, vmax) / vmax

    # bursts, behind everything
    for a, b in sc["bursts"]:
        c.rect(int(x_of(a)), top, int(x_of(b)) + 1, bottom, BURST)
        c.rect(int(x_of(a)), rtop, int(x_of(b)) + 1, rbottom, BURST)
    # axes and gridlines
    for panel_top, panel_bottom in ((top, bottom), (rtop, rbottom)):
        c.hline(left, right, panel_bottom, INK)
        c.vline(left, panel_top, panel_bottom + 1, INK)
    _y_ticks(c, left, right, top, bottom, ymax, ystep)
    xstep = nice_step(duration, 10)
    t = 0.0
    while t <= duration + 1e-9:
        x = int(round(x_of(t)))
        c.vline(x, rbottom, rbottom + 5, INK)
        c.vline(x, bottom, bottom + 5, INK)
        label = _fmt(t)
        c.text(x - text_width(label) // 2, rbottom + 9, label, INK)
        t += xstep
    c.text((left + right) // 2 - text_width("time (s)") // 2, rbottom + 24, "time (s)", INK)
    ys = int(round(y_of(slo, top, bottom, ymax)))
    c.hline(left + 1, right, ys, SLO, dash=8)
    c.text(right - text_width(f"SLO {slo:g} ms") - 4, ys - 11, f"SLO {slo:g} ms", SLO)

    # latency lines; `grid` last, on top
    colours = {
        s["policy"]: COLOURS.get(s["policy"], FALLBACK[k % len(FALLBACK)]) for k, s in enumerate(series)
    }
    for s in sorted(series, key=lambda s: s["policy"] == "grid"):
        colour = colours[s["policy"]]
        width = s["bucket_s"]
        prev = None
        for b, v in enumerate(s["p99_e2e_ms"]):
            if v is None:
                prev = None
                continue
            pt = (x_of((b + 0.5) * width), y_of(v, top, bottom, ymax))
            if prev is not None:
                c.line(prev[0], prev[1], pt[0], pt[1], colour)
            prev = pt
    # rejections per second
    rmax_raw = max((r / s["bucket_s"] for s in series for r in s["rejected"]), default=0.0)
    c.text(left, rtop - 14, "requests rejected per second", INK)
    if rmax_raw <= 0:
        c.text(left + 12, (rtop + rbottom) // 2 - 3, "none: every request was served", INK)
    else:
        rstep = nice_step(rmax_raw, 3)
        rmax = math.ceil(rmax_raw * 1.05 / rstep) * rstep
        _y_ticks(c, left, right, rtop, rbottom, rmax, rstep)
        for s in series:
            width = s["bucket_s"]
            pts = [
                (x_of((b + 0.5) * width), y_of(r / width, rtop, rbottom, rmax))
                for b, r in enumerate(s["rejected"])
            ]
            for p0, p1 in zip(pts, pts[1:], strict=False):
                c.line(p0[0], p0[1], p1[0], p1[1], colours[s["policy"]])

    # legend, in rows above the panel: each policy with its overall p99 and SLO attainment
    by_policy = {p["policy"]: p for p in result["policies"]}
    x, y = left, 52
    for s in series:
        p = by_policy.get(s["policy"], {})
        p99 = p.get("e2e_ms", {}).get("p99")
        att = p.get("slo_attainment")
        label = f"{s['policy']}: p99 {p99:.0f} ms" if p99 is not None else f"{s['policy']}: none served"
        if att is not None:
            label += f", {att * 100:.1f}% in SLO"
        if x > left and x + 28 + text_width(label) > right:
            x, y = left, y + 14
        c.rect(x, y + 3, x + 22, y + 6, colours[s["policy"]])
        x = c.text(x + 28, y, label, INK) + 22
    return encode_png(c)


def write_chart(path: Path, result: Mapping[str, Any], series: Sequence[Mapping[str, Any]]) -> None:
    """Write the PNG through a temporary file in the same directory, then rename it into place."""
    import os
    import tempfile

    data = build_chart(result, series)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
