"""A small line chart written as a PNG with NumPy and zlib only (matplotlib is not a dependency): panels of
lines over shared x values, axis ticks and labels in a built-in 5x7 pixel font (upper case, digits, a little
punctuation)."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

_GLYPHS = {
    "0": "01110100011001110101110011000101110", "1": "00100011000010000100001000010001110",
    "2": "01110100010000100010001000100011111", "3": "11111000100010000010000011000101110",
    "4": "00010001100101010010111110001000010", "5": "11111100001111000001000011000101110",
    "6": "00110010001000011110100011000101110", "7": "11111000010001000100010000100001000",
    "8": "01110100011000101110100011000101110", "9": "01110100011000101111000010001001100",
    "A": "01110100011000111111100011000110001", "B": "11110100011000111110100011000111110",
    "C": "01110100011000010000100001000101110", "D": "11100100101000110001100011001011100",
    "E": "11111100001000011110100001000011111", "F": "11111100001000011110100001000010000",
    "G": "01110100011000010111100011000101111", "H": "10001100011000111111100011000110001",
    "I": "01110001000010000100001000010001110", "J": "00111000100001000010000101001001100",
    "K": "10001100101010011000101001001010001", "L": "10000100001000010000100001000011111",
    "M": "10001110111010110101100011000110001", "N": "10001100011100110101100111000110001",
    "O": "01110100011000110001100011000101110", "P": "11110100011000111110100001000010000",
    "Q": "01110100011000110001101011001001101", "R": "11110100011000111110101001001010001",
    "S": "01111100001000001110000010000111110", "T": "11111001000010000100001000010000100",
    "U": "10001100011000110001100011000101110", "V": "10001100011000110001100010101000100",
    "W": "10001100011000110101101011010101010", "X": "10001100010101000100010101000110001",
    "Y": "10001100011000101010001000010000100", "Z": "11111000010001000100010001000011111",
    ".": "00000000000000000000000000110001100", "/": "00000000010001000100010001000000000",
    "-": "00000000000000011111000000000000000", ":": "00000011000110000000011000110000000",
    "(": "00010001000100001000010000010000010", ")": "01000001000001000010000100010001000",
    ",": "00000000000000000000011000010001000", "=": "00000000001111100000111110000000000",
    "+": "00000001000010011111001000010000000", "%": "11000110010001000100010001001100011",
    "_": "00000000000000000000000000000011111", "?": "01110100010000100010001000000000100",
    " ": "0" * 35,
}
FONT = {ch: np.array([int(b) for b in bits], dtype=bool).reshape(7, 5) for ch, bits in _GLYPHS.items()}
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
INK, GRID, WHITE = (40, 40, 40), (225, 225, 225), (255, 255, 255)


class Canvas:
    def __init__(self, width: int, height: int):
        self.px = np.full((height, width, 3), 255, dtype=np.uint8)

    @property
    def size(self) -> Tuple[int, int]:
        return self.px.shape[1], self.px.shape[0]

    def rect(self, x0, y0, x1, y1, color):
        w, h = self.size
        x0, x1 = sorted((int(round(x0)), int(round(x1))))
        y0, y1 = sorted((int(round(y0)), int(round(y1))))
        self.px[max(y0, 0):min(y1 + 1, h), max(x0, 0):min(x1 + 1, w)] = color

    def line(self, x0, y0, x1, y1, color, width: int = 1):
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        r = width // 2
        for t in np.linspace(0.0, 1.0, steps):
            x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
            self.rect(x - r, y - r, x + width - 1 - r, y + width - 1 - r, color)

    def text(self, x, y, s: str, color=INK, scale: int = 2, anchor: str = "left"):
        """Draw `s` with its top at y; anchor left | center | right at x."""
        s = s.upper()
        width = len(s) * 6 * scale - scale
        x = x - width if anchor == "right" else (x - width // 2 if anchor == "center" else x)
        for i, ch in enumerate(s):
            glyph = FONT.get(ch, FONT["?"])
            for gy, gx in zip(*np.nonzero(glyph)):
                px, py = int(x) + (i * 6 + gx) * scale, int(y) + gy * scale
                self.rect(px, py, px + scale - 1, py + scale - 1, color)

    def png(self) -> bytes:
        h, w = self.px.shape[:2]
        raw = b"".join(b"\x00" + self.px[row].tobytes() for row in range(h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    return next(m * exp for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * exp >= v)


def _fmt(v: float) -> str:
    if v >= 10000:
        return f"{v / 1000:.0f}K"
    return f"{v:.0f}" if v >= 10 or float(v).is_integer() else f"{v:.1f}"


def line_chart(title: str, xs: Sequence[float], panels: List[Tuple[str, Dict[str, Sequence[float]]]],
               xlabel: str, width: int = 1000, height: int = 440) -> bytes:
    """`panels`: (panel title, {series name: y per x}). x positions are log2-spaced (context lengths double)."""
    c = Canvas(width, height)
    c.text(width // 2, 12, title, scale=2, anchor="center")
    names = list(dict.fromkeys(n for _, series in panels for n in series))
    lx = 20
    for i, name in enumerate(names):  # legend
        color = COLORS[i % len(COLORS)]
        c.rect(lx, 40, lx + 24, 43, color)
        c.text(lx + 32, 36, name, scale=2)
        lx += 32 + len(name) * 12 + 40
    pw = (width - 40) // len(panels)
    lx_ = [math.log2(x) for x in xs]
    for p, (ptitle, series) in enumerate(panels):
        x0, x1 = 20 + p * pw + 70, 20 + (p + 1) * pw - 20
        y0, y1 = 90, height - 60  # plot area: top, bottom
        top = nice_max(max((v for ys in series.values() for v in ys), default=1.0))
        c.text((x0 + x1) // 2, 66, ptitle, scale=2, anchor="center")
        for k in range(6):  # y grid and labels
            y = y1 - (y1 - y0) * k / 5
            c.line(x0, y, x1, y, GRID)
            c.text(x0 - 8, y - 6, _fmt(top * k / 5), scale=2, anchor="right")
        span = (max(lx_) - min(lx_)) or 1.0

        def X(v):
            return x0 + 10 + (x1 - x0 - 20) * ((v - min(lx_)) / span if len(lx_) > 1 else 0.5)

        for x, v in zip(xs, lx_):
            c.line(X(v), y1, X(v), y1 + 5, INK)
            c.text(X(v), y1 + 10, _fmt(x), scale=2, anchor="center")
        c.line(x0, y1, x1, y1, INK, 2)
        c.line(x0, y0, x0, y1, INK, 2)
        c.text((x0 + x1) // 2, y1 + 32, xlabel, scale=2, anchor="center")
        for i, name in enumerate(names):
            ys = series.get(name)
            if not ys:
                continue
            color = COLORS[i % len(COLORS)]
            pts = [(X(v), y1 - (y1 - y0) * y / top) for v, y in zip(lx_, ys)]
            for (a, b), (cx, cy) in zip(pts, pts[1:]):
                c.line(a, b, cx, cy, color, 3)
            for a, b in pts:
                c.rect(a - 4, b - 4, a + 4, b + 4, color)
    return c.png()


def read_png_size(data: bytes) -> Tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])
