"""Test images made on the fly (nothing binary is committed)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo(w: int = 320, h: int = 240, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (compresses like a photo, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(w: int = 320, h: int = 240, seed: int = 0, **kw) -> bytes:
    return encode(photo(w, h, seed), "JPEG", quality=85, **kw)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring width x height RGB pixels, with almost no data:
    a decoder that trusted it would allocate 30 GB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def real_like(seed: int, size: int = 96) -> Image.Image:
    """Smooth and bluish: the 'real' class of the synthetic training sets."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 120, size=(4, 4, 3)).astype(np.uint8)
    base[..., 2] += 120
    return Image.fromarray(base).resize((size, size), Image.BILINEAR)


def generated_like(seed: int, size: int = 96) -> Image.Image:
    """Noisy and reddish: the 'generated' class of the synthetic training sets."""
    rng = np.random.default_rng(seed + 10_000)
    arr = rng.integers(0, 255, size=(size, size, 3)).astype(np.uint8)
    arr[..., 0] = np.maximum(arr[..., 0], 160)
    return Image.fromarray(arr)


# Hostile and unusual files for tests/services/test_images.py.


def with_png_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """`png` with one more chunk (iCCP, zTXt...) right after its IHDR."""
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, length, type, IHDR data, CRC
    return png[:ihdr_end] + _png_chunk(kind, payload) + png[ihdr_end:]


def gif_with_screen(width: int, height: int, frame: int = 4) -> bytes:
    """A GIF whose logical screen is width x height but whose only frame is
    frame x frame pixels at (0, 0)."""
    data = bytearray(encode(Image.new("P", (frame, frame), 1), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen descriptor
    return bytes(data)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) declares width x height."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_with_tag(
    tiff: bytes, tag: int, value: int | None = None, kind: int | None = None
) -> bytes:
    """A little-endian TIFF with one entry of its first IFD rewritten: its value (a
    SHORT or LONG held in the entry) and/or its type (3 SHORT, 4 LONG, 12 DOUBLE...)."""
    assert tiff[:4] == b"II*\x00"
    data = bytearray(tiff)
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        entry_tag, entry_kind = struct.unpack_from("<HH", data, entry)
        if entry_tag == tag:
            if value is not None:
                struct.pack_into("<I" if entry_kind == 4 else "<H", data, entry + 8, value)
            if kind is not None:
                struct.pack_into("<H", data, entry + 2, kind)
            return bytes(data)
    raise KeyError(f"tag {tag} not in the first IFD")


def animation(fmt: str, colours: list[tuple[int, int, int]], size: int = 32) -> bytes:
    """An animated GIF, WEBP or PNG (APNG): one solid frame per colour."""
    frames = [Image.new("RGB", (size, size), c) for c in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    """`img` as a JPEG whose EXIF says how to turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())
