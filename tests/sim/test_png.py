"""The PNG writer and the chart: valid files, decoded back with zlib alone."""

from __future__ import annotations

import struct
import zlib

from gridctl.sim.plot import build_chart, nice_step
from gridctl.sim.png import Canvas, encode_png


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
