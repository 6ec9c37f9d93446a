"""The width and height of a PNG or JPEG from its header bytes, without decoding the pixels.

Why not decode and then look: a few kilobytes of PNG can decode to gigabytes of pixels, so the
served model must refuse an oversized image before OpenCV allocates it.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic...); C4, C8 and CC share the
# range but are tables, not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers RST0-7 (SOI/EOI handled apart).
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def image_size(raw: bytes) -> tuple[int, int] | None:
    """``(height, width)`` of a PNG or JPEG file's bytes; None when it is neither (or its header is cut)."""
    if raw.startswith(PNG_SIGNATURE):
        return _png_size(raw)
    if raw.startswith(_JPEG_SOI):
        return _jpeg_size(raw)
    return None


def _png_size(raw: bytes) -> tuple[int, int] | None:
    # The first chunk is always IHDR: length (4), type (4), width (4), height (4), big-endian.
    if len(raw) < 24 or raw[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", raw[16:24])
    return height, width


def _jpeg_size(raw: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            return None
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        (length,) = struct.unpack(">H", raw[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(raw):
                return None
            height, width = struct.unpack(">HH", raw[pos + 5 : pos + 9])
            return height, width
        pos += 2 + length
    return None
