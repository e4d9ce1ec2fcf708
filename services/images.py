"""Sniffing and decoding untrusted image bytes into RGB pictures.

The format is decided from magic bytes, never from a Content-Type header.
Before any pixel is decoded the header's size is checked against a pixel cap
(ours, `max_pixels`, and Pillow's decompression-bomb guard) and a cap on each
side (`max_side`). JPEGs are decoded at reduced scale when the encoder only
needs a small input (draft mode: 4-8x less work for large photos); any picture
still over twice that size is then box-reduced by a whole factor (as Pillow's
`reducing_gap`), so the resize to the encoder's input starts from at most 4x its
pixels. EXIF orientation is applied, and alpha, palette, CMYK, 16-bit and animated images
all end up as plain RGB (the first frame of an animation).

`decode` raises only `InputError` subclasses, whatever the bytes (see its
docstring); the worker dead-letters those and keeps going. Images more
elongated than `training.model.encoders.Preprocess.MAX_ASPECT` are decoded whole and
left to the encoder's preprocessing, which never resizes more than the centre
region it keeps (see there).
"""

from __future__ import annotations

import io
import logging
import struct
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from services.errors import DecodeError, InputError, NotAnImageError, TooLargeError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000
# Box-reduce a decoded picture whose short side is at least this many times the
# target, by the largest whole factor that keeps it >= REDUCING_GAP x target:
# Pillow's own `reducing_gap` for resize and thumbnail, and what JPEG's DCT
# scaling already does. For a 1080p PNG, a 1600x1200 WebP and a 12 MP AVIF the
# decode-to-tensor cost falls 1.33x, 1.15x and 1.06x (`python -m
# benchmarks.bench_decode`, rows pillow_draft vs pillow_reduce), the embedding
# agreeing with full decode within the noise floor of the INT8 encoder.
REDUCING_GAP = 2
# The pixel cap alone lets a 1 x 64,000,000 strip through: 64 million PNG scan
# lines of one pixel each, and a shortest-side resize to 224 x 14 billion. Capping
# each side bounds the per-row and per-column work of every decoder; 16384 (2**14)
# is twice the width of 8K video, above WebP's own limit (16383) and the largest
# texture side common GPUs take. Longer images (a very long panorama) are
# refused as too_large; a caller that wants them can raise `max_side`.
MAX_SIDE = 16_384

# What Pillow raises on malformed input. Seen in this repository's tests on
# truncated and mutated files: OSError ("image file is truncated", codec errors),
# SyntaxError ("not a PNG file"), ValueError (nonsense header fields), IndexError
# and struct.error (short reads: an animated GIF cut in its second frame's header),
# TypeError (a TIFF whose StripOffsets are typed DOUBLE). Pillow's plugins also
# raise EOFError (frames and reads past the end) and KeyError (unknown modes and
# tag values), and NotImplementedError (unsupported variants) from Image itself;
# ZeroDivisionError, OverflowError and RecursionError are what arithmetic and
# nested structures (TIFF IFDs, EXIF) give on absurd values. All are the file's
# fault, hence decode_failed.
_PILLOW_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    ValueError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    NotImplementedError,
    RecursionError,
)

# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

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
        NotAnImageError: the bytes are not a supported image format. The message
            gives the length only, never the bytes: they may be the start of a
            local file (a file:// URL) and the message goes to the dead-letter topic.
    """
    for offset, sig, fmt in _SIGNATURES:
        if data[offset : offset + len(sig)] == sig:
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    if not data:
        raise NotAnImageError("empty body: 0 bytes")
    raise NotAnImageError(
        f"unknown image signature: {len(data)} bytes that start with no supported "
        "format's magic bytes (JPEG, PNG, GIF, BMP, TIFF, WebP, AVIF)"
    )


def decode(
    data: bytes,
    *,
    target_size: int | None = 224,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = MAX_SIDE,
    reducing_gap: int | None = REDUCING_GAP,
) -> Image.Image:
    """Decode `data` to an RGB image, oriented upright.

    Args:
        target_size: the smallest side the caller needs; JPEGs are decoded at
            the smallest DCT scale that keeps both sides >= this, and any
            picture whose short side is still >= `reducing_gap` x this is
            box-reduced by a whole factor to a short side >= that. None decodes
            at full size.
        reducing_gap: see `target_size`; None: no reduction after decoding
            (JPEG's DCT scaling only).
        max_pixels: refuse images whose header declares more pixels.
        max_side: refuse images whose header declares a longer side.

    Raises only InputError subclasses, whatever the bytes:
        NotAnImageError (not_an_image): the bytes start with no known
            signature (an HTML error page, a PDF, nothing at all).
        TooLargeError (too_large): the header declares too many pixels or too
            long a side (checked before any pixel is decoded), Pillow's own
            decompression-bomb guard fires (also on a later frame or tile), or
            decoding runs out of memory.
        DecodeError (decode_failed): the signature names a format but the
            file is not a readable one: whatever Pillow raises on a malformed
            header or pixel data (`_PILLOW_ERRORS`, UnidentifiedImageError
            included, so the code does not hang on which exception a plugin
            picks for a bad header), and, as a last resort, any other
            Exception: a Pillow bug on hostile input must dead-letter one
            record, not take a fetch thread's caller down. That case is logged
            as a warning so it can be narrowed down.

    Pillow's warnings (corrupt EXIF and the like) are silenced here and its
    DecompressionBombWarning is an error. `warnings.catch_warnings` swaps the
    process-wide filter list and is not thread-safe: when fetch threads race, a
    thread may restore a list with these two filters in it after this call
    returns, so that Pillow's warnings stay silenced (and a bomb warning stays
    an error) elsewhere in the process too. Decoding is what Pillow is used for
    here, so that is accepted rather than serialising the fetch threads.
    """
    fmt = sniff(data)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data, fmt, target_size, max_pixels, max_side, reducing_gap)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(f"decompression bomb: {_brief(exc)}") from exc
    except MemoryError as exc:
        raise TooLargeError(f"out of memory decoding {fmt}") from exc
    except UnidentifiedImageError as exc:  # an OSError: Pillow's plugin refused the header
        raise DecodeError(f"{fmt} signature but not a {fmt} header Pillow can read") from exc
    except _PILLOW_ERRORS as exc:
        raise DecodeError(f"cannot decode {fmt}: {_brief(exc)}") from exc
    except Exception as exc:  # last resort, see the docstring
        log.warning("unexpected %s decoding %s: %s", type(exc).__name__, fmt, _brief(exc))
        raise DecodeError(f"cannot decode {fmt}: {_brief(exc)}") from exc


def _decode(
    data: bytes,
    fmt: str,
    target_size: int | None,
    max_pixels: int,
    max_side: int,
    reducing_gap: int | None,
) -> Image.Image:
    img = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    check_size(*img.size, max_pixels=max_pixels, max_side=max_side)
    if fmt == "JPEG" and target_size:
        img.draft("RGB", (target_size, target_size))
    # The first frame of an animation (GIF, WebP, APNG): an opened image sits on
    # frame 0. Asking `is_animated` would parse the next frame's header, and fail
    # a GIF cut short there (IndexError) whose first frame is whole.
    img.load()  # first: a pixel-data error must not pass for an unreadable EXIF block
    method = ORIENTATION.get(exif_orientation(img))
    img = to_rgb(img)  # before reducing: averaging palette indices or 16-bit bytes is wrong
    if target_size and reducing_gap:
        factor = min(img.size) // (reducing_gap * target_size)
        if factor >= 2:
            img = img.reduce(factor)
    if method is not None:
        img = img.transpose(method)
    return img


def check_size(
    width: int, height: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = MAX_SIDE
) -> None:
    """The header's size against the caps, before any pixel is decoded.

    Raises:
        DecodeError: a side is 0 (or negative).
        TooLargeError: more than `max_pixels` pixels, or a side longer than `max_side`.
    """
    if width < 1 or height < 1:
        raise DecodeError(f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise TooLargeError(f"decompression bomb: {width}x{height} pixels exceeds {max_pixels}")
    if max(width, height) > max_side:
        raise TooLargeError(f"{width}x{height} image: a side exceeds {max_side} pixels")


def exif_orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag, or None when absent or unreadable: a corrupt EXIF
    block costs the rotation (browsers show such files as stored), not the image."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation)
    except _PILLOW_ERRORS:
        return None
    return value if isinstance(value, int) else None


def _brief(exc: BaseException, limit: int = 200) -> str:
    """An exception as a short, one-line message for the dead-letter topic."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, CMYK and palettes converted,
    16-bit greyscale reduced to its high byte, 32-bit integer and float greyscale
    stretched to 8 bits.

    16-bit greyscale ("I;16*") keeps its high byte, as Pillow itself reduces
    16-bit RGB PNGs: the same picture saved as 16-bit grey or as 16-bit RGB gives
    the same pixels (Pillow's own "I;16" -> "L" conversion would clip everything
    above 255 to white). "I" (32-bit or signed 16-bit TIFFs) and "F" (float)
    have no fixed range: their finite values are stretched to 0..255, NaN and
    -inf map to black, +inf to white.
    """
    mode = img.mode
    if mode == "RGB":
        img.load()
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        grey = (np.asarray(img) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("I", "F"):
        return _stretch(img)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _stretch(img: Image.Image) -> Image.Image:
    """Finite values of an "I" or "F" image stretched linearly to 0..255, as RGB.

    Worked in float64 (float32 overflows on hostile ranges: a span of 1e-45 or
    of 6e38) a block of rows at a time, so the memory beside the image stays
    its 8-bit result plus one 4-megapixel block.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # signalling NaNs warn on a cast
        return Image.fromarray(_stretch_array(np.asarray(img)), "L").convert("RGB")


def _stretch_array(src: np.ndarray) -> np.ndarray:
    rows = max(1, (1 << 22) // src.shape[1])
    blocks = range(0, src.shape[0], rows)
    lo, hi = np.inf, -np.inf
    for i in blocks:
        block = src[i : i + rows].astype(np.float64)
        block = block[np.isfinite(block)]
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if lo > hi:  # nothing finite
        lo = hi = 0.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty(src.shape, np.uint8)
    for i in blocks:
        block = np.nan_to_num(src[i : i + rows].astype(np.float64), nan=lo, posinf=hi, neginf=lo)
        block -= lo
        block *= scale
        out[i : i + rows] = np.clip(block, 0.0, 255.0, out=block)  # truncated to uint8
    return out
