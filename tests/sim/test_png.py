"""The PNG writer and the chart: valid files, decoded back with zlib alone."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib

import pytest

from gridctl.sim.plot import build_chart, chart_format, nice_step
from gridctl.sim.png import GLYPH_H, Canvas, encode_png, glyph_columns


def decode(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw RGB) of an 8-bit RGB PNG with filter-0 rows, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows = [raw[y * (width * 3 + 1) : (y + 1) * (width * 3 + 1)] for y in range(height)]
    assert all(r[0] == 0 for r in rows)
    return width, height, b"".join(r[1:] for r in rows)


def test_canvas_round_trips_through_png() -> None:
    c = Canvas(20, 10)
    c.rect(2, 3, 4, 5, (255, 0, 0))
    c.line(0, 9, 19, 9, (0, 0, 255), width=1)
    w, h, px = decode(encode_png(c))
    assert (w, h) == (20, 10)
    at = lambda x, y: px[(y * 20 + x) * 3 : (y * 20 + x) * 3 + 3]  # noqa: E731
    assert at(2, 3) == b"\xff\x00\x00" and at(4, 5) == b"\xff\xff\xff"
    assert at(10, 9) == b"\x00\x00\xff"


def test_text_draws_ink() -> None:
    c = Canvas(40, 10)
    end = c.text(1, 1, "p99", (0, 0, 0))
    assert end == 1 + 3 * 6
    assert b"\x00\x00\x00" in bytes(c.pixels)


def ink_rows(ch: str) -> set[int]:
    return {r for bits in glyph_columns(ch) for r in range(GLYPH_H) if bits >> r & 1}


BASELINE = 6  # the last row of a capital


@pytest.mark.parametrize("ch", "gjpqy")
def test_descenders_go_below_the_baseline(ch: str) -> None:
    # the LCD table draws them raised ("9ridctl", "re9uests"): here their tails hang below
    rows = ink_rows(ch)
    assert max(rows) == BASELINE + 2 and {BASELINE + 1, BASELINE + 2} <= rows
    assert min(rows) == (0 if ch == "j" else 2)  # the bowl stands on the baseline, at the lower case's height


@pytest.mark.parametrize("ch", "acdeistuABQ019")
def test_other_glyphs_stand_on_the_baseline(ch: str) -> None:
    assert max(ink_rows(ch)) == BASELINE


def test_g_is_not_a_nine() -> None:
    assert glyph_columns("g") != glyph_columns("9") and ink_rows("9") == set(range(7))


def test_chart_format_from_the_extension() -> None:
    from pathlib import Path

    assert [chart_format(Path(n)) for n in ("a.png", "a.svg", "A.SVG", "d/x.y.Png")] == [
        "png",
        "svg",
        "svg",
        "png",
    ]
    for bad in ("a.jpg", "a", "a.svg.gz"):
        with pytest.raises(ValueError, match="the chart is written as .png or .svg"):
            chart_format(Path(bad))


def test_nice_steps() -> None:
    assert [nice_step(s) for s in (1200, 120, 1, 7)] == [200, 20, 0.2, 1.0 * 2]


def test_chart_of_a_run() -> None:
    result = {
        "scenario": {
            "profile": "x",
            "model": "m",
            "requests": 3,
            "seed": 1,
            "slo_ms": 500.0,
            "duration_s": 10.0,
            "bursts": [[2.0, 4.0]],
        },
        "policies": [
            {"policy": "grid", "e2e_ms": {"p99": 300.0}, "slo_attainment": 1.0},
            {"policy": "central", "e2e_ms": {"p99": None}, "slo_attainment": 0.0},
        ],
    }
    series = [
        {
            "policy": "grid",
            "bucket_s": 5.0,
            "p99_e2e_ms": [300.0, 250.0],
            "rejected": [0, 0],
            "requests": [2, 1],
        },
        {
            "policy": "central",
            "bucket_s": 5.0,
            "p99_e2e_ms": [None, None],
            "rejected": [2, 1],
            "requests": [2, 1],
        },
    ]
    w, h, px = decode(build_chart(result, series))
    assert (w, h) == (1100, 640)
    assert b"\x00\x72\xb2" in px  # grid's blue
    assert b"\xd5\x5e\x00" in px  # central's orange (rejections)
    # the same drawing as SVG: text as text (escaped), lines as polylines
    result["scenario"]["model"] = "m<&>"
    root = ET.fromstring(build_chart(result, series, "svg"))
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert texts[0] == "gridctl sim: x, m<&>, 3 requests, seed 1"
    assert "central: none served, 0.0% in SLO" in texts
    # grid's latency, then the rejections of grid and central (central has no latency to draw)
    assert [p.get("stroke") for p in root.iter(f"{ns}polyline")] == ["#0072b2", "#0072b2", "#d55e00"]
