"""Look at an HTML page as a browser does: its DOM (stdlib parser, or Chromium's --dump-dom) and a
screenshot from headless Chromium, decoded in pure Python (zlib; no image library needed)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

__all__ = ["Element", "Image", "chromium", "dump_dom", "parse_dom", "screenshot", "select"]

# Debian's chromium, isolated: no profile of anyone's, no network of its own, no GPU.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
)  # fmt: skip
_VOID = frozenset({"meta", "br", "rect", "line", "img", "link", "input", "hr"})


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)  # the text directly inside it

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Dom(HTMLParser):
    """Every element in document order, and every text node."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.texts: list[str] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in _VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._open:
            self._open[-1].text.append(data)


def parse_dom(page: str) -> Dom:
    dom = Dom()
    dom.feed(page)
    return dom


def select(page: str | Dom, tag: str, *classes: str) -> list[Element]:
    """The `tag` elements that have every class of `classes`, in document order."""
    dom = parse_dom(page) if isinstance(page, str) else page
    return [e for e in dom.elements if e.tag == tag and set(classes) <= e.classes]


def chromium() -> str:
    """Debian's `chromium`; the test fails (never skips) without it, naming how to install it."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed: `make test-tools` (python3 stack/stack.py tools) installs it "
            "(apt-get install -y chromium)",
            pytrace=False,
        )
    return path


def _run(page: Path, *flags: str) -> str:
    with tempfile.TemporaryDirectory(prefix="otel-budget-chromium-") as profile:
        done = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=False, cwd=profile,
        )  # fmt: skip
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-2000:]}"
    return done.stdout


def dump_dom(page: Path) -> Dom:
    """The DOM Chromium built from `page` (--dump-dom), parsed."""
    return parse_dom(_run(page, "--dump-dom"))


@dataclass(frozen=True)
class Image:
    """An RGB screenshot: `pixel(x, y)` -> (r, g, b)."""

    width: int
    height: int
    rows: list[bytes]  # width * 3 bytes each

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        row = self.rows[y]
        return row[3 * x], row[3 * x + 1], row[3 * x + 2]

    def where(self, colour: str) -> list[tuple[int, int]]:
        """Every (x, y) of exactly `colour` (`#rrggbb`)."""
        target = bytes.fromhex(colour.lstrip("#"))
        found = []
        for y, row in enumerate(self.rows):
            start = row.find(target)
            while start >= 0:
                if start % 3 == 0:
                    found.append((start // 3, y))
                start = row.find(target, start + 1)
        return found


def screenshot(page: Path, out: Path, *, width: int = 1200, height: int = 2000) -> Image:
    """Chromium's screenshot of `page` in a `width` x `height` window, saved to `out` and decoded."""
    _run(page, f"--screenshot={out.resolve()}", f"--window-size={width},{height}")
    return decode_png(out.read_bytes())


def decode_png(data: bytes) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes), as RGB rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, f"unsupported PNG {depth=} {colour_type=}"
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    previous = bytearray(stride)
    rows = []
    for y in range(height):
        offset = y * (stride + 1)
        kind, line = raw[offset], bytearray(raw[offset + 1 : offset + 1 + stride])
        _unfilter(kind, line, previous, channels)
        rows.append(bytes(line) if channels == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3))
        previous = line
    return Image(width, height, rows)


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            corner = previous[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + predictor) & 0xFF
        else:
            raise AssertionError(f"bad PNG filter {kind}")
