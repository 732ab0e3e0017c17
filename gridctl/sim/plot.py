"""The chart of ``gridctl sim --plot``: p99 end-to-end latency over time, one line per policy.

The upper panel: for each time bucket, the p99 end-to-end latency of the
requests that arrived in it (completed ones), one line per policy; burst
windows shaded; the SLO as a dashed line. Values above the panel's top are drawn
at the top edge (the legend gives each policy's overall p99). The lower panel:
requests rejected per second, per policy.

One drawing, two files: PNG (``gridctl.sim.png``'s raster and bitmap font) and
SVG (vector, its text in the viewer's own sans-serif font); the file name's
extension picks one (``chart_format``). ``build_chart`` is pure (figures in,
file bytes out); ``write_chart`` writes the file. No plotting library.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from xml.sax.saxutils import escape, quoteattr

from gridctl.sim.png import Canvas, Colour, encode_png, text_width

FORMATS = {".png": "png", ".svg": "svg"}

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
    mag = float(10 ** math.floor(math.log10(raw)))  # 10 ** k, typed (an int for k >= 0)
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v: float) -> str:
    return f"{v:g}" if v < 10_000 else f"{v / 1000:g}k"


class Surface(Protocol):
    """What the chart draws with; text at (x, y) is the top-left of its capitals at
    ``anchor`` start, their top-centre at middle, top-right at end."""

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: Colour) -> None: ...
    def polyline(self, points: Sequence[tuple[float, float]], colour: Colour) -> None: ...
    def hline(self, x0: float, x1: float, y: float, colour: Colour, dash: int = 0) -> None: ...
    def vline(self, x: float, y0: float, y1: float, colour: Colour) -> None: ...
    def text(
        self, x: float, y: float, s: str, colour: Colour, scale: int = 1, anchor: str = "start"
    ) -> float: ...  # the x after the text


class _Raster:
    """The chart on a PNG canvas, text in the bitmap font."""

    def __init__(self, width: int, height: int) -> None:
        self.canvas = Canvas(width, height, BG)

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: Colour) -> None:
        self.canvas.rect(int(x0), int(y0), int(x1), int(y1), colour)

    def polyline(self, points: Sequence[tuple[float, float]], colour: Colour) -> None:
        for p0, p1 in zip(points, points[1:], strict=False):
            self.canvas.line(p0[0], p0[1], p1[0], p1[1], colour)

    def hline(self, x0: float, x1: float, y: float, colour: Colour, dash: int = 0) -> None:
        self.canvas.hline(int(x0), int(x1), int(round(y)), colour, dash=dash)

    def vline(self, x: float, y0: float, y1: float, colour: Colour) -> None:
        self.canvas.vline(int(round(x)), int(y0), int(y1), colour)

    def text(
        self, x: float, y: float, s: str, colour: Colour, scale: int = 1, anchor: str = "start"
    ) -> float:
        w = text_width(s, scale)
        x0 = int(x) - {"start": 0, "middle": w // 2, "end": w}[anchor]
        return float(self.canvas.text(x0, int(y), s, colour, scale))


def _rgb(c: Colour) -> str:
    return f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}"


class _Svg:
    """The chart as SVG elements; text in the viewer's sans-serif, sized to the bitmap's."""

    FONT_PX = 11.0  # per scale; its capitals about as tall as the bitmap font's 7 px
    ADVANCE = 0.58  # average advance of a sans-serif letter, in ems: for laying out the legend

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = []

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: Colour) -> None:
        self.parts.append(
            f'<rect x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" height="{y1 - y0:g}" fill="{_rgb(colour)}"/>'
        )

    def polyline(self, points: Sequence[tuple[float, float]], colour: Colour) -> None:
        if len(points) < 2:
            return
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self.parts.append(
            f'<polyline points="{pts}" fill="none" stroke="{_rgb(colour)}" stroke-width="2" '
            'stroke-linejoin="round" stroke-linecap="round"/>'
        )

    def hline(self, x0: float, x1: float, y: float, colour: Colour, dash: int = 0) -> None:
        extra = f' stroke-dasharray="{dash} {dash}"' if dash else ""
        yy = round(y) + 0.5
        self.parts.append(
            f'<line x1="{x0:g}" y1="{yy:g}" x2="{x1:g}" y2="{yy:g}" stroke="{_rgb(colour)}"{extra}/>'
        )

    def vline(self, x: float, y0: float, y1: float, colour: Colour) -> None:
        xx = round(x) + 0.5
        self.parts.append(f'<line x1="{xx:g}" y1="{y0:g}" x2="{xx:g}" y2="{y1:g}" stroke="{_rgb(colour)}"/>')

    def text(
        self, x: float, y: float, s: str, colour: Colour, scale: int = 1, anchor: str = "start"
    ) -> float:
        size = self.FONT_PX * scale
        baseline = y + 7 * scale  # the bitmap's capitals stand 7 px on their baseline
        weight = ' font-weight="bold"' if scale > 1 else ""
        self.parts.append(
            f'<text x="{x:g}" y="{baseline:g}" font-size="{size:g}" fill="{_rgb(colour)}"'
            f' text-anchor="{anchor}"{weight}>{escape(s)}</text>'
        )
        return x + len(s) * size * self.ADVANCE

    def render(self, title: str) -> bytes:
        head = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif">\n'
            f"<title>{escape(title)}</title>\n"
            f'<rect width="100%" height="100%" fill={quoteattr(_rgb(BG))}/>\n'
        )
        return (head + "\n".join(self.parts) + "\n</svg>\n").encode("utf-8")


def chart_format(path: Path) -> str:
    """``png`` or ``svg``, from the file name's extension (any case); ValueError otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        what = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise ValueError(f"--plot {path}: {what}; the chart is written as .png or .svg")
    return fmt


def _y_ticks(c: Surface, left: int, right: int, top: int, bottom: int, vmax: float, step: float) -> None:
    v = 0.0
    while v <= vmax + 1e-9:
        y = int(round(bottom - (bottom - top) * v / vmax))
        if v > 0:
            c.hline(left + 1, right, y, GRID)
        c.text(left - 8, y - 3, _fmt(v), INK, anchor="end")
        v += step


def build_chart(result: Mapping[str, Any], series: Sequence[Mapping[str, Any]], fmt: str = "png") -> bytes:
    """The chart as a ``fmt`` file (``png`` or ``svg``)."""
    if fmt == "svg":
        svg = _Svg(WIDTH, HEIGHT)
        _draw(svg, result, series)
        return svg.render(_title(result["scenario"]))
    raster = _Raster(WIDTH, HEIGHT)
    _draw(raster, result, series)
    return encode_png(raster.canvas)


def _title(sc: Mapping[str, Any]) -> str:
    what = sc["profile"] or "trace"
    seed = f", seed {sc['seed']}" if sc.get("seed") is not None else ""
    return f"gridctl sim: {what}, {sc['model']}, {sc['requests']} requests{seed}"


@dataclass(frozen=True)
class _Frame:
    """Where the chart's two panels are, and how time and values map onto them."""

    duration: float
    left: int = 78
    right: int = WIDTH - 24
    top: int = 90  # latency panel (two legend rows above it)
    bottom: int = 440
    rtop: int = 486  # rejections panel
    rbottom: int = 590

    def x_of(self, t: float) -> float:
        return self.left + (self.right - self.left) * (t / self.duration if self.duration else 0.0)

    @staticmethod
    def y_of(v: float, y0: int, y1: int, vmax: float) -> float:
        return y1 - (y1 - y0) * min(v, vmax) / vmax


def _draw(c: Surface, result: Mapping[str, Any], series: Sequence[Mapping[str, Any]]) -> None:
    sc = result["scenario"]
    slo = float(sc["slo_ms"])
    f = _Frame(float(sc["duration_s"]))
    _draw_heading(c, f, sc, series)
    ymax, ystep = _latency_scale(series, slo)
    _draw_axes(c, f, sc["bursts"], ymax, ystep)
    _draw_slo(c, f, slo, ymax)
    colours = {
        s["policy"]: COLOURS.get(s["policy"], FALLBACK[k % len(FALLBACK)]) for k, s in enumerate(series)
    }
    _draw_latency(c, f, series, colours, ymax)
    _draw_rejections(c, f, series, colours)
    _draw_legend(c, f, result["policies"], series, colours)


def _draw_heading(c: Surface, f: _Frame, sc: Mapping[str, Any], series: Sequence[Mapping[str, Any]]) -> None:
    c.text(f.left, 12, _title(sc), INK, 2)
    if series:
        c.text(
            f.left,
            36,
            f"p99 end-to-end latency (ms) of the requests arriving in each {series[0]['bucket_s']:g} s; "
            "shaded: bursts; dashed: the SLO; values above the top are drawn at the top",
            INK,
        )


def _latency_scale(series: Sequence[Mapping[str, Any]], slo: float) -> tuple[float, float]:
    """The latency panel's top value and tick step: above the highest p99, within 1.25 to 4 SLOs."""
    peak = max((v for s in series for v in s["p99_e2e_ms"] if v is not None), default=slo)
    ymax = min(max(peak * 1.08, slo * 1.25), slo * 4.0)
    ystep = nice_step(ymax)
    return math.ceil(ymax / ystep) * ystep, ystep


def _draw_axes(c: Surface, f: _Frame, bursts: Sequence[Sequence[float]], ymax: float, ystep: float) -> None:
    """The bursts shaded (behind everything), both panels' axes, the latency gridlines, time ticks."""
    left, right, top, bottom, rtop, rbottom = f.left, f.right, f.top, f.bottom, f.rtop, f.rbottom
    for a, b in bursts:
        c.rect(int(f.x_of(a)), top, int(f.x_of(b)) + 1, bottom, BURST)
        c.rect(int(f.x_of(a)), rtop, int(f.x_of(b)) + 1, rbottom, BURST)
    for panel_top, panel_bottom in ((top, bottom), (rtop, rbottom)):
        c.hline(left, right, panel_bottom, INK)
        c.vline(left, panel_top, panel_bottom + 1, INK)
    _y_ticks(c, left, right, top, bottom, ymax, ystep)
    xstep = nice_step(f.duration, 10)
    t = 0.0
    while t <= f.duration + 1e-9:
        x = int(round(f.x_of(t)))
        c.vline(x, rbottom, rbottom + 5, INK)
        c.vline(x, bottom, bottom + 5, INK)
        c.text(x, rbottom + 9, _fmt(t), INK, anchor="middle")
        t += xstep
    c.text((left + right) // 2, rbottom + 24, "time (s)", INK, anchor="middle")


def _draw_slo(c: Surface, f: _Frame, slo: float, ymax: float) -> None:
    ys = int(round(f.y_of(slo, f.top, f.bottom, ymax)))
    c.hline(f.left + 1, f.right, ys, SLO, dash=8)
    c.text(f.right - 4, ys - 11, f"SLO {slo:g} ms", SLO, anchor="end")


def _draw_latency(
    c: Surface, f: _Frame, series: Sequence[Mapping[str, Any]], colours: Mapping[str, Colour], ymax: float
) -> None:
    """One line per policy through its buckets' p99 (broken where a bucket has none); `grid` last,
    on top."""
    for s in sorted(series, key=lambda s: s["policy"] == "grid"):
        colour = colours[s["policy"]]
        width = s["bucket_s"]
        run: list[tuple[float, float]] = []  # a line through consecutive buckets with a value
        for b, v in enumerate([*s["p99_e2e_ms"], None]):
            if v is None:
                c.polyline(run, colour)
                run = []
                continue
            run.append((f.x_of((b + 0.5) * width), f.y_of(v, f.top, f.bottom, ymax)))


def _draw_rejections(
    c: Surface, f: _Frame, series: Sequence[Mapping[str, Any]], colours: Mapping[str, Colour]
) -> None:
    """The lower panel: requests rejected per second, one line per policy."""
    rtop, rbottom = f.rtop, f.rbottom
    rmax_raw = max((r / s["bucket_s"] for s in series for r in s["rejected"]), default=0.0)
    c.text(f.left, rtop - 14, "requests rejected per second", INK)
    if rmax_raw <= 0:
        c.text(f.left + 12, (rtop + rbottom) // 2 - 3, "none: every request was served", INK)
        return
    rstep = nice_step(rmax_raw, 3)
    rmax = math.ceil(rmax_raw * 1.05 / rstep) * rstep
    _y_ticks(c, f.left, f.right, rtop, rbottom, rmax, rstep)
    for s in series:
        width = s["bucket_s"]
        pts = [
            (f.x_of((b + 0.5) * width), f.y_of(r / width, rtop, rbottom, rmax))
            for b, r in enumerate(s["rejected"])
        ]
        c.polyline(pts, colours[s["policy"]])


def _draw_legend(
    c: Surface,
    f: _Frame,
    policies: Sequence[Mapping[str, Any]],
    series: Sequence[Mapping[str, Any]],
    colours: Mapping[str, Colour],
) -> None:
    """In rows above the panel: each policy with its overall p99 and SLO attainment."""
    by_policy = {p["policy"]: p for p in policies}
    x, y = f.left, 52
    for s in series:
        p = by_policy.get(s["policy"], {})
        p99 = p.get("e2e_ms", {}).get("p99")
        att = p.get("slo_attainment")
        label = f"{s['policy']}: p99 {p99:.0f} ms" if p99 is not None else f"{s['policy']}: none served"
        if att is not None:
            label += f", {att * 100:.1f}% in SLO"
        if x > f.left and x + 28 + text_width(label) > f.right:
            x, y = f.left, y + 14
        c.rect(x, y + 3, x + 22, y + 6, colours[s["policy"]])
        x = int(c.text(x + 28, y, label, INK)) + 22


def write_chart(path: Path, result: Mapping[str, Any], series: Sequence[Mapping[str, Any]]) -> None:
    """Write the chart (PNG or SVG, by ``path``'s extension: ``chart_format``) through a
    temporary file in the same directory, then rename it into place."""
    import os
    import tempfile

    data = build_chart(result, series, chart_format(path))
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
