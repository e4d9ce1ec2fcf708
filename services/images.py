"""Sniffing and decoding untrusted image bytes into RGB pictures.

The format is decided from magic bytes, never from a Content-Type header. The
pixel count is checked from the header before any pixel is decoded (Pillow's
decompression-bomb guard, with our own cap), JPEGs are decoded at reduced
scale when the encoder only needs a small input (draft mode: 4-8x less work
for large photos), EXIF orientation is applied, and alpha, palette, CMYK,
16-bit and animated images all end up as plain RGB.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.errors import DecodeError, NotAnImageError, TooLargeError

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000

# (offset, signature) -> format name as Pillow spells it.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
)


def sniff(data: bytes) -> str:
    """The image format of `data` from its magic bytes.

    Raises:
        NotAnImageError: the bytes are not a supported image format.
    """
    for offset, sig, fmt in _SIGNATURES:
        if data[offset : offset + len(sig)] == sig:
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    head = data[:16]
    raise NotAnImageError(f"unrecognised image signature {head[:8].hex() or 'empty'}")


def decode(
    data: bytes,
    *,
    target_size: int | None = 224,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode `data` to an RGB image, oriented upright.

    Args:
        target_size: the smallest side the caller needs; JPEGs are decoded at
            the smallest DCT scale that keeps both sides >= this. None decodes
            at full size.
        max_pixels: refuse images whose header declares more pixels.

    Raises:
        NotAnImageError, TooLargeError, DecodeError (with dead-letter codes).
    """
    fmt = sniff(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError(f"looks like {fmt} but Pillow cannot identify it") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow signals bad headers with these
        raise DecodeError(f"bad {fmt} header: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise TooLargeError(f"decompression bomb: {width}x{height} pixels exceeds {max_pixels}")
    if width < 1 or height < 1:
        raise DecodeError(f"empty image {width}x{height}")
    try:
        if fmt == "JPEG" and target_size:
            img.draft("RGB", (target_size, target_size))
        if getattr(img, "is_animated", False):
            img.seek(0)  # first frame of GIF/WebP/APNG animations
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(f"decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise DecodeError(f"cannot decode {fmt}: {exc}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, CMYK and palettes converted,
    16-bit and float greyscale rescaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        img.load()
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
