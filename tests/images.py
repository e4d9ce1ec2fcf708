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
