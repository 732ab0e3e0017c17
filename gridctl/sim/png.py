"""A small RGB raster with lines, rectangles and text, written as PNG with the standard library.

Enough for the simulator's chart, without a plotting library: anti-aliased lines
(Xiaolin Wu's algorithm, drawn twice for a 2-pixel stroke), dashed lines, filled
rectangles, and text in the classic 5x7 LCD font (ASCII 32-126) with true
descenders for g, j, p, q and y, scaled by an integer. ``encode_png`` writes
8-bit RGB, no interlace, filter 0 rows, zlib.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable

Colour = tuple[int, int, int]

# 5 columns per glyph, bit 0 at the top, ASCII 32..126 (the HD44780-style table)
_FONT = bytes.fromhex(
    "0000000000"
    "00005f0000"
    "0007000700"
    "147f147f14"
    "242a7f2a12"
    "2313086462"
    "3649552250"
    "0005030000"
    "001c224100"
    "0041221c00"
    "082a1c2a08"
    "08083e0808"
    "0050300000"
    "0808080808"
    "0060600000"
    "2010080402"
    "3e5149453e"
    "00427f4000"
    "4261514946"
    "2141454b31"
    "1814127f10"
    "2745454539"
    "3c4a494930"
    "0171090503"
    "3649494936"
    "064949291e"
    "0036360000"
    "0056360000"
    "0008142241"
    "1414141414"
    "4122140800"
    "0201510906"
    "324979413e"
    "7e1111117e"
    "7f49494936"
    "3e41414122"
    "7f4141221c"
    "7f49494941"
    "7f09090101"
    "3e41415132"
    "7f0808087f"
    "00417f4100"
    "2040413f01"
    "7f08142241"
    "7f40404040"
    "7f0204027f"
    "7f0408107f"
    "3e4141413e"
    "7f09090906"
    "3e4151215e"
    "7f09192946"
    "4649494931"
    "01017f0101"
    "3f4040403f"
    "1f2040201f"
    "7f2018207f"
    "6314081463"
    "0304780403"
    "6151494543"
    "00007f4141"
    "0204081020"
    "41417f0000"
    "0402010204"
    "4040404040"
    "0001020400"
    "2054545478"
    "7f48444438"
    "3844444420"
    "384444487f"
    "3854545418"
    "087e090102"
    "081454543c"
    "7f08040478"
    "00447d4000"
    "2040443d00"
    "007f102844"
    "00417f4000"
    "7c04180478"
    "7c08040478"
    "3844444438"
    "7c14141408"
    "081414187c"
    "7c08040408"
    "4854545420"
    "043f444020"
    "3c4040207c"
    "1c2040201c"
    "3c4030403c"
    "4428102844"
    "0c5050503c"
    "4464544c44"
    "0008364100"
    "00007f0000"
    "0041360800"
    "0804080408"
)
GLYPH_W, GLYPH_H = 5, 9  # 7 rows down to the baseline (row 6), 2 for descenders

# The table's g, j, p, q and y sit raised above the baseline (the LCD has no room
# below it): "9ridctl", "re9uests". These go below it, as in print.
_DESCENDERS = {
    "g": (".####", "#...#", "#...#", "#...#", ".####", "....#", ".###."),
    "j": ("...#.", ".....", "..##.", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "p": ("####.", "#...#", "#...#", "#...#", "####.", "#....", "#...."),
    "q": (".####", "#...#", "#...#", "#...#", ".####", "....#", "....#"),
    "y": ("#...#", "#...#", "#...#", "#...#", ".####", "....#", ".###."),
}


def _columns(rows: tuple[str, ...]) -> tuple[int, ...]:
    """Column bitmaps (bit 0 at the top) of a glyph drawn as rows; a glyph of 7 rows starts at
    row 2, the top of the lower case."""
    top = GLYPH_H - len(rows)
    return tuple(sum(1 << (top + r) for r, row in enumerate(rows) if row[c] == "#") for c in range(GLYPH_W))


def glyph_columns(ch: str) -> tuple[int, ...]:
    """The 5 column bitmaps of ``ch`` (bit 0 at the top, 9 rows); '?' for what the font lacks."""
    if ch in _DESCENDERS:
        return _GLYPHS_BELOW[ch]
    code = ord(ch) if len(ch) == 1 else 63
    if not 32 <= code <= 126:
        code = 63  # '?'
    return tuple(_FONT[(code - 32) * GLYPH_W : (code - 32) * GLYPH_W + GLYPH_W])


_GLYPHS_BELOW = {ch: _columns(rows) for ch, rows in _DESCENDERS.items()}


class Canvas:
    def __init__(self, width: int, height: int, background: Colour = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    # -- pixels ---------------------------------------------------------------------------

    def blend(self, x: int, y: int, colour: Colour, alpha: float) -> None:
        if not (0 <= x < self.width and 0 <= y < self.height) or alpha <= 0.0:
            return
        i = (y * self.width + x) * 3
        px = self.pixels
        if alpha >= 1.0:
            px[i], px[i + 1], px[i + 2] = colour
            return
        keep = 1.0 - alpha
        px[i] = int(px[i] * keep + colour[0] * alpha + 0.5)
        px[i + 1] = int(px[i + 1] * keep + colour[1] * alpha + 0.5)
        px[i + 2] = int(px[i + 2] * keep + colour[2] * alpha + 0.5)

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: Colour) -> None:
        """Fill [x0, x1) x [y0, y1), clipped."""
        x0, x1 = max(0, x0), min(self.width, x1)
        y0, y1 = max(0, y0), min(self.height, y1)
        if x0 >= x1 or y0 >= y1:
            return
        row = bytes(colour) * (x1 - x0)
        for y in range(y0, y1):
            i = (y * self.width + x0) * 3
            self.pixels[i : i + len(row)] = row

    # -- lines ----------------------------------------------------------------------------

    def _wu(self, x0: float, y0: float, x1: float, y1: float, colour: Colour) -> None:
        steep = abs(y1 - y0) > abs(x1 - x0)
        if steep:
            x0, y0, x1, y1 = y0, x0, y1, x1
        if x0 > x1:
            x0, x1, y0, y1 = x1, x0, y1, y0
        dx, dy = x1 - x0, y1 - y0
        grad = dy / dx if dx else 1.0
        plot: Callable[[int, int, float], None] = (
            (lambda a, b, c: self.blend(b, a, colour, c))
            if steep
            else (lambda a, b, c: self.blend(a, b, colour, c))
        )
        xs, xe = int(round(x0)), int(round(x1))
        y = y0 + grad * (xs - x0)
        for x in range(xs, xe + 1):
            fy = math.floor(y)
            frac = y - fy
            plot(x, fy, 1.0 - frac)
            plot(x, fy + 1, frac)
            y += grad

    def line(self, x0: float, y0: float, x1: float, y1: float, colour: Colour, width: int = 2) -> None:
        """An anti-aliased stroke ``width`` pixels wide (1 or 2)."""
        self._wu(x0, y0, x1, y1, colour)
        if width > 1:
            if abs(y1 - y0) > abs(x1 - x0):
                self._wu(x0 + 1, y0, x1 + 1, y1, colour)
            else:
                self._wu(x0, y0 + 1, x1, y1 + 1, colour)

    def hline(self, x0: int, x1: int, y: int, colour: Colour, dash: int = 0) -> None:
        for x in range(max(0, x0), min(self.width, x1)):
            if not dash or (x - x0) // dash % 2 == 0:
                self.blend(x, y, colour, 1.0)

    def vline(self, x: int, y0: int, y1: int, colour: Colour) -> None:
        for y in range(max(0, y0), min(self.height, y1)):
            self.blend(x, y, colour, 1.0)

    # -- text -----------------------------------------------------------------------------

    def text(self, x: int, y: int, s: str, colour: Colour, scale: int = 1) -> int:
        """Draw ``s`` with its top-left corner at (x, y); return the x after it."""
        for ch in s:
            for cx, bits in enumerate(glyph_columns(ch)):
                for cy in range(GLYPH_H):
                    if bits >> cy & 1:
                        self.rect(
                            x + cx * scale, y + cy * scale, x + (cx + 1) * scale, y + (cy + 1) * scale, colour
                        )
            x += (GLYPH_W + 1) * scale
        return x


def text_width(s: str, scale: int = 1) -> int:
    return len(s) * (GLYPH_W + 1) * scale - scale if s else 0


def encode_png(canvas: Canvas) -> bytes:
    w, h = canvas.width, canvas.height
    stride = w * 3
    px = canvas.pixels
    raw = b"".join(b"\x00" + bytes(px[y * stride : (y + 1) * stride]) for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
