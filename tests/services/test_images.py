import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from services.errors import DecodeError, InputError, NotAnImageError, TooLargeError
from services.images import decode, sniff
from tests.images import (
    _png_chunk,
    animation,
    encode,
    exif_jpeg,
    gif_with_screen,
    jpeg,
    jpeg_with_size,
    photo,
    png_bomb,
    tiff_with_tag,
    with_png_chunk,
)
from training.model.encoders import Preprocess

ROOT = Path(__file__).resolve().parents[2]
PREPROCESS = Preprocess()  # CLIP ViT-B/16's: 224, bicubic


def outcome(data: bytes) -> str:
    """The outcome of decode + preprocess: "ok" or the dead-letter code. Anything
    but an InputError propagates and fails the test."""
    try:
        img = decode(data, target_size=PREPROCESS.image_size)
    except InputError as exc:
        assert exc.code in ("not_an_image", "too_large", "decode_failed"), exc.code
        return exc.code
    assert img.mode == "RGB" and min(img.size) >= 1
    x = PREPROCESS(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.isfinite(x).all()
    return "ok"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_sniff_knows_formats_by_magic_bytes(fmt):
    assert sniff(encode(photo(64, 48), fmt)) == fmt


@pytest.mark.parametrize(
    "data", [b"", b"hello", b"<html><body>", b"%PDF-1.7", b"\x00" * 64, b"RIFF\x00\x00\x00\x00WAVE"]
)
def test_sniff_refuses_non_images(data):
    with pytest.raises(NotAnImageError):
        sniff(data)


def test_sniff_message_gives_the_length_never_the_bytes():
    # A file:// URL to a local file must not leak its first bytes into the dead-letter topic.
    data = b"root:x:0:0:root:/root:/bin/bash\n" * 4
    with pytest.raises(NotAnImageError) as info:
        sniff(data)
    message = str(info.value)
    assert str(len(data)) in message and "unknown image signature" in message
    for leak in (b"root", b"bash", b"x:0"):
        assert leak.decode() not in message and leak.hex() not in message


# ---------------------------------------------------------------- the corpus
#
# Hostile, broken and unusual files, each with its exact outcome: "ok" (an RGB
# image whose preprocessed tensor is (3, 224, 224) and finite) or the code of
# the InputError. Codes: not_an_image when no signature matches; decode_failed
# when one does but the file is not a readable image of that format; too_large
# when the header declares too many pixels or too long a side.

_SEED = photo(64, 48, seed=7)
_SEEDS = {
    "JPEG": encode(_SEED, "JPEG", quality=90),
    "PNG": encode(_SEED, "PNG"),
    "GIF": encode(_SEED, "GIF"),
    "WEBP": encode(_SEED, "WEBP"),
    "TIFF": encode(_SEED, "TIFF"),
    "BMP": encode(_SEED, "BMP"),
}
_SIGNATURE_LENGTH = {"JPEG": 3, "PNG": 8, "GIF": 6, "WEBP": 12, "TIFF": 4, "BMP": 2}
# Cut one byte short of the signature, inside the header, halfway, one byte short.
# A PNG without its last byte (the IEND CRC) or a GIF without its trailer still
# holds every pixel, and Pillow reads them.
_ONE_SHORT = {"PNG": "ok", "GIF": "ok"}
TRUNCATED = [
    pytest.param(fmt, cut, expected, id=f"{fmt}-cut-{name}")
    for fmt in _SEEDS
    for name, cut, expected in (
        ("in-signature", _SIGNATURE_LENGTH[fmt] - 1, "not_an_image"),
        ("in-header", 16, "decode_failed"),
        ("halfway", len(_SEEDS[fmt]) // 2, "decode_failed"),
        ("last-byte", len(_SEEDS[fmt]) - 1, _ONE_SHORT.get(fmt, "decode_failed")),
    )
]


@pytest.mark.parametrize("fmt, cut, expected", TRUNCATED)
def test_truncated_files(fmt, cut, expected):
    assert outcome(_SEEDS[fmt][:cut]) == expected


def _png_16bit_rgb(rgb16: np.ndarray) -> bytes:
    """A 16-bit RGB PNG from a (h, w, 3) uint16 array (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _grey16() -> Image.Image:
    return Image.fromarray((np.arange(80 * 60).reshape(60, 80) * 13).astype(np.uint16))


def _gif_cut_in_frame_2(marker: bytes, into: int) -> bytes:
    """A 3-frame GIF cut `into` bytes after the second frame's first `marker` (its
    graphic control extension or its image descriptor)."""
    data = animation("GIF", [(255, 0, 0), (0, 255, 0), (0, 0, 255)], size=16)
    frame_1 = data.index(b"\x21\xf9")  # the first frame's graphic control extension
    frame_2 = data.index(b"\x21\xf9", frame_1 + 2)
    return data[: data.index(marker, frame_2) + into]


def _float_image() -> Image.Image:
    row = [0.0, np.nan, np.inf, -np.inf, 1.0, 0.5, -2.0, 3.0]
    return Image.fromarray(np.array([row] * 8, dtype=np.float32))


CORPUS = [
    # Not images at all.
    pytest.param(lambda: b"", "not_an_image", id="empty"),
    pytest.param(lambda: b"\xff", "not_an_image", id="one-byte"),
    pytest.param(
        lambda: b"\x00" + np.random.default_rng(0).bytes(4095), "not_an_image", id="random"
    ),
    pytest.param(
        lambda: b"<!doctype html><html><body>404</body></html>", "not_an_image", id="html"
    ),
    pytest.param(lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "not_an_image", id="pdf"),
    pytest.param(lambda: b"\xff\xd8", "not_an_image", id="jpeg-soi-only"),
    # A signature and nothing readable behind it.
    pytest.param(lambda: b"\xff\xd8\xff\xd9", "decode_failed", id="jpeg-soi-eoi"),
    pytest.param(lambda: b"BMW makes cars, not bitmaps.", "decode_failed", id="text-starting-BM"),
    pytest.param(lambda: b"RIFF\x04\x00\x00\x00WEBP", "decode_failed", id="webp-riff-only"),
    pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "decode_failed", id="png-garbage"),
    pytest.param(lambda: png_bomb(0, 10), "decode_failed", id="png-zero-width"),
    pytest.param(
        lambda: _SEEDS["PNG"][:29] + bytes([_SEEDS["PNG"][29] ^ 0xFF]) + _SEEDS["PNG"][30:],
        "decode_failed",
        id="png-bad-ihdr-crc",
    ),
    # Pillow caps decompressed text and ICC chunks (1 MB): a zlib bomb in one is refused.
    pytest.param(
        lambda: with_png_chunk(
            _SEEDS["PNG"], b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * (16 << 20))
        ),
        "decode_failed",
        id="png-16MB-iCCP",
    ),
    pytest.param(
        lambda: with_png_chunk(
            _SEEDS["PNG"], b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * (16 << 20))
        ),
        "decode_failed",
        id="png-16MB-zTXt",
    ),
    pytest.param(
        lambda: with_png_chunk(
            _SEEDS["PNG"], b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x01" * 100)
        ),
        "ok",
        id="png-garbage-iCCP",
    ),
    pytest.param(
        lambda: tiff_with_tag(_SEEDS["TIFF"], 259, 99), "decode_failed", id="tiff-compression-99"
    ),
    pytest.param(
        lambda: tiff_with_tag(_SEEDS["TIFF"], 259, 5), "decode_failed", id="tiff-lzw-on-raw-strips"
    ),
    pytest.param(
        lambda: tiff_with_tag(_SEEDS["TIFF"], 256, 0), "decode_failed", id="tiff-zero-width"
    ),
    # StripOffsets typed DOUBLE: Pillow seeks to a float (a TypeError escaped decode once).
    pytest.param(
        lambda: tiff_with_tag(_SEEDS["TIFF"], 273, kind=12),
        "decode_failed",
        id="tiff-strip-offsets-double",
    ),
    # Sizes: refused from the header (see test_refused_from_the_header_alone), or cropped.
    pytest.param(
        lambda: encode(Image.new("RGB", (1, 100_000)), "PNG"), "too_large", id="png-1x100000"
    ),
    pytest.param(
        lambda: encode(Image.new("RGB", (100_000, 1)), "PNG"), "too_large", id="png-100000x1"
    ),
    pytest.param(lambda: png_bomb(30_000, 30_000), "too_large", id="png-header-30000x30000"),
    pytest.param(lambda: jpeg_with_size(30_000, 30_000), "too_large", id="jpeg-header-30000x30000"),
    pytest.param(lambda: jpeg_with_size(8001, 8000), "too_large", id="jpeg-header-8001x8000"),
    pytest.param(lambda: gif_with_screen(65_535, 65_535), "too_large", id="gif-screen-65535x65535"),
    pytest.param(lambda: gif_with_screen(20_000, 10), "too_large", id="gif-screen-20000x10"),
    pytest.param(lambda: gif_with_screen(2000, 1500), "ok", id="gif-screen-2000x1500-frame-4x4"),
    pytest.param(
        lambda: encode(Image.new("RGB", (1, 16_384), "red"), "PNG"), "ok", id="png-1x16384"
    ),
    pytest.param(
        lambda: encode(Image.new("RGB", (16_384, 1), "red"), "PNG"), "ok", id="png-16384x1"
    ),
    pytest.param(lambda: encode(photo(3000, 200), "JPEG"), "ok", id="jpeg-panorama-15:1"),
    # Unusual but valid.
    pytest.param(lambda: animation("GIF", [(255, 0, 0), (0, 255, 0)]), "ok", id="animated-gif"),
    # Cut short in the second frame: the first one is whole. Asking `is_animated` used
    # to parse the broken second frame header (IndexError, struct.error escaped decode).
    pytest.param(
        lambda: _gif_cut_in_frame_2(b"\x21\xf9", 3), "ok", id="animated-gif-cut-in-frame-2-gce"
    ),
    pytest.param(
        lambda: _gif_cut_in_frame_2(b"\x2c", 5), "ok", id="animated-gif-cut-in-frame-2-descriptor"
    ),
    pytest.param(lambda: animation("WEBP", [(255, 0, 0), (0, 255, 0)]), "ok", id="animated-webp"),
    pytest.param(lambda: animation("PNG", [(255, 0, 0), (0, 255, 0)]), "ok", id="apng"),
    pytest.param(lambda: encode(_SEED.convert("CMYK"), "JPEG"), "ok", id="cmyk-jpeg"),
    pytest.param(lambda: encode(_grey16(), "PNG"), "ok", id="png-16bit-grey"),
    pytest.param(lambda: encode(_grey16(), "TIFF"), "ok", id="tiff-I;16"),
    pytest.param(
        lambda: _png_16bit_rgb(np.full((8, 8, 3), 0x1234, np.uint16)), "ok", id="png-16bit-rgb"
    ),
    pytest.param(
        lambda: encode(_SEED.convert("P"), "PNG", transparency=0), "ok", id="palette-transparency"
    ),
    pytest.param(lambda: encode(_SEED.convert("1"), "PNG"), "ok", id="bilevel-png"),
    pytest.param(lambda: encode(_SEED.convert("1"), "TIFF"), "ok", id="bilevel-tiff"),
    pytest.param(lambda: encode(_SEED.convert("LA"), "PNG"), "ok", id="LA-png"),
    pytest.param(lambda: encode(_float_image(), "TIFF"), "ok", id="F-tiff-nan-inf"),
    pytest.param(
        lambda: encode(Image.fromarray(np.arange(-50, 50, dtype=np.int32).reshape(10, 10)), "TIFF"),
        "ok",
        id="I32-tiff-negative",
    ),
    pytest.param(lambda: exif_jpeg(photo(120, 60), 6), "ok", id="exif-orientation-6"),
    pytest.param(lambda: encode(_SEED, "AVIF"), "ok", id="avif"),
]


@pytest.mark.parametrize("build, expected", CORPUS)
def test_corpus(build, expected):
    assert outcome(build()) == expected


HEADER_ONLY = [pytest.param(p.values[0], id=p.id) for p in CORPUS if p.values[1] == "too_large"]


@pytest.mark.parametrize("build", HEADER_ONLY)
def test_refused_from_the_header_alone(build, monkeypatch):
    data = build()
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real_load(self)
    )
    with pytest.raises(TooLargeError):
        decode(data)
    assert loads == []  # no pixel was decoded, no pixel buffer allocated


def test_elongated_images_never_allocate_much():
    """A 1 x 16384 strip resized shortest-side-first is 224 x 3.7 million pixels (3.3 GB
    in Pillow's 4-byte pixels). Under an address-space limit of 1 GB above what the
    interpreter already maps, decode + preprocess must still succeed."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc for the address-space limit")
    script = """
import resource
from PIL import Image
from services.images import decode
from tests.images import encode
from training.model.encoders import Preprocess

vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + (1 << 30), resource.RLIM_INFINITY))
for size in [(1, 16384), (16384, 1), (3, 16384), (16384, 2), (1, 5000)]:
    x = Preprocess()(decode(encode(Image.new("RGB", size, (40, 90, 200)), "PNG")))
    assert x.shape == (3, 224, 224), x.shape
print("fine")
"""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "fine" in done.stdout, done.stderr[-2000:]


# ------------------------------------------------ pixel values, against references

_H, _W = 48, 64
_Y, _X = np.mgrid[0:_H, 0:_W]
# Channel means near 200, 110 and 40: an inverted or saturated conversion moves them far.
REF = (
    np.stack(
        [170 + 60 * _X / (_W - 1), 60 + 100 * _Y / (_H - 1), 20 + 40 * ((_X + _Y) % 7) / 6], -1
    )
    .round()
    .astype(np.uint8)
)
GREY = (30 + 190 * (_X + _Y) / (_W + _H - 2)).round().astype(np.uint8)  # 30..220
LOW = np.random.default_rng(3).integers(0, 256, size=(_H, _W)).astype(np.uint16)
ALPHA = ((_X * 4) % 256).astype(np.uint8)


def _cmyk(rgb: np.ndarray) -> np.ndarray:
    """RGB -> CMYK with full black extraction: K = 255 - max(R, G, B), C = (255 - R - K) /
    (255 - K) * 255 (and so on); the textbook formula, not Pillow's (which sets K = 0)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    k = 255 - np.maximum(np.maximum(r, g), b)
    den = np.where(k < 255, 255 - k, 1)
    cmy = [(255 - c - k) * 255 / den for c in (r, g, b)]
    return np.stack([*cmy, k], -1).round().astype(np.uint8)


def _over_white(value: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64) / 255
    return value.astype(np.float64) * a + 255 * (1 - a)


_PALETTE = np.array(
    [[0, 0, 0]] + [[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(1, 16)],
    dtype=np.uint8,
)
_INDEX = ((_X // 4 + _Y // 4) % 16).astype(np.uint8)


def _palette_png() -> bytes:
    img = Image.fromarray(_INDEX, "P")
    img.putpalette(_PALETTE.ravel().tolist())
    return encode(img, "PNG", transparency=0)


_BITS = (_X // 3 + _Y // 5) % 3 == 0
_FLOAT = np.where((_X + _Y) % 11 == 0, np.nan, (_X - 20.0) * 0.25 + _Y * 0.01).astype(np.float32)


def _float_expected() -> np.ndarray:
    finite = _FLOAT[np.isfinite(_FLOAT)]
    lo, hi = float(finite.min()), float(finite.max())
    v = np.where(np.isfinite(_FLOAT), _FLOAT.astype(np.float64), lo)
    return np.floor((v - lo) * 255 / (hi - lo))  # stretch the finite range, NaN as the minimum


def _grey3(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(a, np.float64)[..., None], 3, axis=-1)


# (id, file, expected RGB (h, w, 3), tolerance on each channel mean, on mean |error|)
CONVERSIONS = [
    (
        "cmyk-jpeg",
        lambda: encode(Image.fromarray(_cmyk(REF), "CMYK"), "JPEG", quality=95),
        lambda: REF,
        2.0,
        2.0,
    ),
    (
        "cmyk-tiff",
        lambda: encode(Image.fromarray(_cmyk(REF), "CMYK"), "TIFF"),
        lambda: REF,
        0.5,
        0.5,
    ),
    # 16-bit keeps the high byte: GREY * 256 + noise in the low byte reads back as GREY.
    (
        "png-16bit-grey",
        lambda: encode(Image.fromarray(GREY.astype(np.uint16) * 256 + LOW), "PNG"),
        lambda: _grey3(GREY),
        0.0,
        0.0,
    ),
    (
        "tiff-16bit-grey",
        lambda: encode(Image.fromarray(GREY.astype(np.uint16) * 256 + LOW), "TIFF"),
        lambda: _grey3(GREY),
        0.0,
        0.0,
    ),
    (
        "png-16bit-rgb",
        lambda: _png_16bit_rgb(REF.astype(np.uint16) * 256 + LOW[..., None]),
        lambda: REF,
        0.0,
        0.0,
    ),
    (
        "palette-transparency",
        _palette_png,
        lambda: np.where((_INDEX == 0)[..., None], 255, _PALETTE[_INDEX]),
        0.0,
        0.0,
    ),
    (
        "bilevel-png",
        lambda: encode(Image.fromarray(_BITS), "PNG"),
        lambda: _grey3(np.where(_BITS, 255, 0)),
        0.0,
        0.0,
    ),
    ("grey-png", lambda: encode(Image.fromarray(GREY), "PNG"), lambda: _grey3(GREY), 0.0, 0.0),
    (
        "grey-jpeg",
        lambda: encode(Image.fromarray(GREY), "JPEG", quality=95),
        lambda: _grey3(GREY),
        1.0,
        1.5,
    ),
    (
        "LA-png",
        lambda: encode(Image.fromarray(np.stack([GREY, ALPHA], -1), "LA"), "PNG"),
        lambda: _grey3(_over_white(GREY, ALPHA)),
        0.6,
        1.0,
    ),
    (
        "RGBA-png",
        lambda: encode(Image.fromarray(np.dstack([REF, ALPHA]), "RGBA"), "PNG"),
        lambda: _over_white(REF, ALPHA[..., None]),
        0.6,
        1.0,
    ),
    (
        "F-tiff",
        lambda: encode(Image.fromarray(_FLOAT), "TIFF"),
        lambda: _grey3(_float_expected()),
        0.0,
        0.0,
    ),
]


@pytest.mark.parametrize(
    "build, expected, tol_mean, tol_pixel",
    [c[1:] for c in CONVERSIONS],
    ids=[c[0] for c in CONVERSIONS],
)
def test_mode_conversions_match_a_reference(build, expected, tol_mean, tol_pixel):
    got = np.asarray(decode(build(), target_size=None), dtype=np.float64)
    want = np.asarray(expected(), dtype=np.float64)
    assert got.shape == want.shape
    assert np.abs(got.mean(axis=(0, 1)) - want.mean(axis=(0, 1))).max() <= tol_mean + 1e-9
    assert np.abs(got - want).mean() <= tol_pixel + 1e-9


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_use_the_first_frame(fmt):
    data = animation(fmt, [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    r, g, b = np.asarray(decode(data, target_size=None), dtype=int).reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize(
    "orientation, size, red_half",
    [
        (1, (120, 60), "left"),
        (3, (120, 60), "right"),
        (6, (60, 120), "top"),
        (8, (60, 120), "bottom"),
    ],
)
def test_exif_orientation_turns_the_picture_upright(orientation, size, red_half):
    stored = np.zeros((60, 120, 3), np.uint8)
    stored[:, :60] = (255, 0, 0)  # left half red, right half blue
    stored[:, 60:] = (0, 0, 255)
    img = decode(exif_jpeg(Image.fromarray(stored), orientation), target_size=None)
    assert img.size == size
    red = np.asarray(img, dtype=int)[..., 0] > 128
    h, w = red.shape
    half = {
        "left": red[:, : w // 2],
        "right": red[:, w // 2 :],
        "top": red[: h // 2],
        "bottom": red[h // 2 :],
    }[red_half]
    assert half.mean() > 0.95 and red.mean() == pytest.approx(0.5, abs=0.05)


def test_corrupt_exif_costs_the_rotation_not_the_image(monkeypatch):
    data = bytearray(exif_jpeg(photo(120, 60), 6))
    tiff = data.index(b"Exif\x00\x00") + 6
    data[tiff : tiff + 4] = b"XX\x00\x00"  # neither II nor MM: the EXIF block is unreadable
    assert decode(bytes(data), target_size=None).size == (120, 60)

    # Pillow 13 shrugs off every broken EXIF block tried (warnings, not errors); should
    # one raise, the picture is kept as stored.
    def unreadable(self):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(Image.Image, "getexif", unreadable)
    img = decode(exif_jpeg(photo(120, 60), 6), target_size=None)
    assert img.size == (120, 60) and img.mode == "RGB"


def test_pillow_warnings_stay_inside_decode():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for cut in (8, 12, 40):  # truncated TIFF headers: Pillow warns "Corrupt EXIF data"
            with pytest.raises(DecodeError):
                decode(_SEEDS["TIFF"][:cut])
    assert caught == []


@pytest.mark.parametrize(
    "exc, code",
    [
        (OSError("broken data stream"), "decode_failed"),
        (SyntaxError("not a TIFF file"), "decode_failed"),
        (EOFError(), "decode_failed"),
        (struct.error("unpack requires a buffer of 4 bytes"), "decode_failed"),
        (IndexError("list index out of range"), "decode_failed"),
        (KeyError(99), "decode_failed"),
        (ValueError("buffer is not large enough"), "decode_failed"),
        (TypeError("unsupported operand"), "decode_failed"),
        (ZeroDivisionError("division by zero"), "decode_failed"),
        (OverflowError("int too big"), "decode_failed"),
        (NotImplementedError("no such variant"), "decode_failed"),
        (RecursionError("maximum recursion depth exceeded"), "decode_failed"),
        (RuntimeError("a Pillow bug"), "decode_failed"),  # the documented last resort
        (Image.DecompressionBombError("too many pixels"), "too_large"),
        (Image.DecompressionBombWarning("many pixels"), "too_large"),
        (MemoryError(), "too_large"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v,
)
def test_whatever_pillow_raises_becomes_an_input_error(exc, code, monkeypatch):
    def explode(*args, **kwargs):
        raise exc

    for where in ("open", "load"):  # while reading the header, and while decoding pixels
        with monkeypatch.context() as m:
            if where == "open":
                m.setattr(Image, "open", explode)
            else:
                m.setattr(ImageFile.ImageFile, "load", explode)
            with pytest.raises(InputError) as info:
                decode(_SEEDS["PNG"])
            assert info.value.code == code, where
            assert info.value.__cause__ is exc


def test_error_messages_are_short_single_lines(monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("x\n" * 5000)

    monkeypatch.setattr(ImageFile.ImageFile, "load", explode)
    with pytest.raises(DecodeError) as info:
        decode(_SEEDS["PNG"])
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)


def test_decode_modes_become_rgb():
    base = photo(80, 60)
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    cases = {
        "rgba": encode(rgba, "PNG"),
        "la": encode(base.convert("LA"), "PNG"),
        "palette": encode(base.convert("P"), "PNG"),
        "palette-transparent": encode(base.convert("P"), "PNG", transparency=0),
        "cmyk": encode(base.convert("CMYK"), "JPEG"),
        "grey": encode(base.convert("L"), "JPEG"),
        "i16": encode(
            Image.fromarray((np.arange(80 * 60).reshape(60, 80) * 10).astype(np.uint16)), "PNG"
        ),
        "bilevel": encode(base.convert("1"), "PNG"),
    }
    for name, data in cases.items():
        img = decode(data, target_size=None)
        assert img.mode == "RGB", name
        assert img.size == (80, 60), name
    white = np.asarray(decode(cases["rgba"], target_size=None))
    assert white.min() == 255  # transparent pixels composited on white, not black


def test_jpeg_draft_decodes_large_photos_small_but_not_below_target():
    data = jpeg(2000, 1500)
    img = decode(data, target_size=224)
    assert min(img.size) >= 224
    assert img.size[0] <= 500  # decoded at 1/4 or 1/8 scale, not 2000 px wide
    assert decode(data, target_size=None).size == (2000, 1500)


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(TooLargeError, match="decompression bomb"):
        decode(png_bomb())
    with pytest.raises(TooLargeError):
        decode(jpeg(400, 300), max_pixels=400 * 300 - 1)


def test_side_cap_is_a_parameter():
    data = encode(Image.new("RGB", (300, 20)), "PNG")
    assert decode(data).size == (300, 20)
    with pytest.raises(TooLargeError, match="exceeds 299"):
        decode(data, max_side=299)


def test_truncated_and_corrupt_images():
    data = jpeg(400, 300)
    with pytest.raises(DecodeError):
        decode(data[: len(data) // 2])
    with pytest.raises(DecodeError):
        decode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)


# ---------------------------------------------------------------- preprocessing


def clip_reference(img: Image.Image, s: int = 224) -> np.ndarray:
    """The transform as it was before the aspect bound, written out: shortest side to s
    (bicubic), centre crop s x s, uint8 pixels (before scaling and normalising)."""
    w, h = img.size
    new_w, new_h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - s) / 2.0)), int(round((new_h - s) / 2.0))
    return np.asarray(img.crop((left, top, left + s, top + s)).convert("RGB"))


def normalise(pixels: np.ndarray, pre: Preprocess = PREPROCESS) -> np.ndarray:
    arr = pixels.astype(np.float32) / 255.0
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@pytest.mark.parametrize(
    "size",
    [(320, 240), (100, 300), (64, 64), (224, 224), (1920, 1080), (3024, 4032), (57, 41)]
    + [(896, 224), (224, 896), (800, 200), (1000, 250), (250, 1000), (7, 28), (3, 1)],
)
def test_preprocess_is_unchanged_within_the_aspect_bound(size):
    img = photo(*size, seed=size[0])
    assert max(size) <= Preprocess.MAX_ASPECT * min(size)
    assert np.array_equal(PREPROCESS(img), normalise(clip_reference(img)))
    small = Preprocess(image_size=64)
    assert np.array_equal(small(img), normalise(clip_reference(img, 64), small))


@pytest.mark.parametrize(
    "size", [(1001, 250), (250, 1001), (3000, 200), (57, 1000), (1, 5), (9, 1)]
)
def test_preprocess_centre_crops_beyond_the_aspect_bound(size):
    img = photo(*size, seed=size[1])
    w, h = size
    if w > h:
        keep = Preprocess.MAX_ASPECT * h
        cropped = img.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
    else:
        keep = Preprocess.MAX_ASPECT * w
        cropped = img.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
    assert np.array_equal(PREPROCESS(img), normalise(clip_reference(cropped)))
    # The content the model sees stays the uncropped transform's, up to a sub-pixel shift.
    if min(size) >= 50:
        full = clip_reference(img).astype(np.float64)
        assert np.abs(clip_reference(cropped) - full).mean() < 5.0


# ------------------------------------------------------------ property tests

_MUTATION_SEEDS = {
    **_SEEDS,
    "JPEG-progressive": encode(photo(40, 30, seed=1), "JPEG", progressive=True),
    "JPEG-exif": exif_jpeg(photo(40, 30, seed=2), 6),
    "PNG-palette-trns": encode(photo(40, 30, seed=3).convert("P"), "PNG", transparency=0),
    "PNG-16bit": encode(_grey16(), "PNG"),
    "APNG": animation("PNG", [(255, 0, 0), (0, 255, 0)], size=16),
    "GIF-animated": animation("GIF", [(255, 0, 0), (0, 255, 0)], size=16),
    "WEBP-lossless": encode(photo(40, 30, seed=4), "WEBP", lossless=True),
    "WEBP-animated": animation("WEBP", [(255, 0, 0), (0, 255, 0)], size=16),
    "TIFF-lzw": encode(photo(40, 30, seed=5), "TIFF", compression="tiff_lzw"),
    "TIFF-F": encode(_float_image(), "TIFF"),
    "BMP-palette": encode(photo(40, 30, seed=6).convert("P"), "BMP"),
}
_NAMES = sorted(_MUTATION_SEEDS)
# Values that make size, length and offset fields interesting.
_FIELDS = [b"\x00", b"\xff", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x40\x00", b"\x00\x01"]
_FIELDS += [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x40\x00"]


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(_MUTATION_SEEDS[draw(st.sampled_from(_NAMES))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["truncate", "flip", "field", "splice", "delete"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            del data[pos:]
        elif op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "field":  # header fields live in the first bytes
            pos = draw(st.integers(0, min(len(data), 96) - 1))
            value = draw(st.sampled_from(_FIELDS))
            data[pos : pos + len(value)] = value
        elif op == "splice":  # a piece of another file (or of this one) inserted
            other = _MUTATION_SEEDS[draw(st.sampled_from(_NAMES))]
            start = draw(st.integers(0, len(other) - 1))
            data[pos:pos] = other[start : start + draw(st.integers(1, 512))]
        else:
            del data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


@settings(max_examples=150, deadline=None, database=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_escape_as_anything_but_input_errors(data):
    assert outcome(data) in ("ok", "not_an_image", "too_large", "decode_failed")


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.sampled_from(sorted(_SIGNATURE_LENGTH)).flatmap(
        lambda fmt: st.binary(max_size=512).map(
            lambda tail: _SEEDS[fmt][: _SIGNATURE_LENGTH[fmt]] + tail
        )
    )
)
def test_a_valid_signature_and_random_bytes_behind_it(data):
    assert outcome(data) in ("ok", "too_large", "decode_failed")


@settings(max_examples=150, deadline=None, database=None)
@given(mutated_images())
def test_mutated_images_decode_or_fail_cleanly(data):
    assert outcome(data) in ("ok", "not_an_image", "too_large", "decode_failed")


# ------------------------------------------------------------------ reduced-size decoding
@pytest.mark.parametrize(
    ("size", "factor"),
    [((1920, 1080), 2), ((1600, 1200), 2), ((2400, 1800), 4), ((900, 447), 1), ((300, 200), 1)],
)
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_large_pictures_are_box_reduced_to_twice_the_target(fmt, size, factor):
    # Independent reference: the full decode, then Pillow's own reduce by the whole
    # factor that keeps the short side >= 2 x 224 (none below 2 x 448).
    data = encode(photo(*size), fmt)
    full = decode(data, target_size=None)
    expected = full.reduce(factor) if factor > 1 else full
    got = decode(data, target_size=224)
    assert got.mode == "RGB" and got.size == expected.size
    assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert min(got.size) >= 2 * 224 or got.size == full.size
    unreduced = decode(data, target_size=224, reducing_gap=None)
    assert unreduced.size == full.size


def test_reduction_comes_after_palette_conversion_and_before_orientation():
    # A palette PNG: reducing indices would average colours that are not neighbours.
    pal = photo(1000, 900).quantize(colors=16)
    data = encode(pal, "PNG")
    assert np.array_equal(
        np.asarray(decode(data, target_size=224)), np.asarray(pal.convert("RGB").reduce(2))
    )
    # Rotated 90 degrees by EXIF (orientation 6): the reduced picture comes out upright.
    img = photo(1200, 900)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif.tobytes())
    got = decode(buf.getvalue(), target_size=224)
    assert got.size == (450, 600)
    expected = img.reduce(2).transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(got), np.asarray(expected))
