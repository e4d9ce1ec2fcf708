"""The ways from image bytes to the encoder's input that benchmarks/bench_decode.py
compares (`METHODS`; its docstring says what each does and what it still lacks).

simplejpeg, PyTurboJPEG and pyvips are optional: each is imported by the method that
uses it, and a method whose library is missing reports so (`Method.unavailable`).
"""

from __future__ import annotations

import importlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.images import (
    ORIENTATION,
    REDUCING_GAP,
    check_size,
    decode,
    exif_orientation,
    sniff,
)

NOISE_PX = 0.5  # the noise_floor row: uniform +-0.5 of a pixel level, invisible
TURBOJPEG_ENV = "DMGUARD_TURBOJPEG_LIB"
_TURBOJPEG_CACHE = (
    Path(__file__).resolve().parents[1]
    / ".cache/turbojpeg/root/usr/lib/x86_64-linux-gnu/libturbojpeg.so.0"
)

Preprocessor = Callable[[Image.Image], np.ndarray]  # training.model.encoders.Preprocess


@dataclass(frozen=True)
class Method:
    """One way from bytes to the encoder's input: `run(data, preprocess)` -> (3, S, S)."""

    name: str
    description: str
    run: Callable[[bytes, Preprocessor], np.ndarray]
    formats: frozenset[str] | None = None  # None: every format `sniff` knows
    requires: tuple[str, ...] = ()  # modules that must import
    check: Callable[[], str | None] | None = None  # a reason it cannot run, or None
    gaps: str = ""  # what it lacks to stand behind services.images.decode; "" for nothing

    def unavailable(self) -> str | None:
        """Why this method cannot run here (a module or library missing), or None."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or OSError from a missing shared library
                return f"{module} not importable: {type(exc).__name__}: {exc}"
        return self.check() if self.check is not None else None


def _jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a JPEG, read by Pillow from the header alone."""
    try:
        return exif_orientation(Image.open(io.BytesIO(data), formats=["JPEG"]))
    except Exception:  # as services.images: a header Pillow cannot read costs the rotation only
        return None


def _upright(arr: np.ndarray, orientation: int | None) -> Image.Image:
    img = Image.fromarray(arr, "RGB")
    method = ORIENTATION.get(orientation) if orientation is not None else None
    return img.transpose(method) if method is not None else img


def _reference(data: bytes, preprocess: Preprocessor) -> np.ndarray:
    return preprocess(decode(data, target_size=None))


def _noise_floor(data: bytes, preprocess: Preprocessor) -> np.ndarray:
    """Not a decoder: the reference's input plus invisible noise, uniform in +-NOISE_PX
    pixel levels (seeded). Its agreement is the best a pipeline whose pixels differ at
    all can expect from this encoder on these images."""
    out = _reference(data, preprocess)
    std = np.asarray(getattr(preprocess, "std", (1.0, 1.0, 1.0)), np.float32)[:, None, None]
    noise = np.random.default_rng(0).uniform(-NOISE_PX, NOISE_PX, out.shape).astype(np.float32)
    return out + noise / np.float32(255.0) / std


def _pillow_draft(data: bytes, preprocess: Preprocessor) -> np.ndarray:
    return preprocess(decode(data, target_size=_size(preprocess), reducing_gap=None))


def _pillow_reduce(data: bytes, preprocess: Preprocessor) -> np.ndarray:
    return preprocess(decode(data, target_size=_size(preprocess)))


def _size(preprocess: Preprocessor) -> int:
    return int(getattr(preprocess, "image_size", 224))


def _simplejpeg(data: bytes, preprocess: Preprocessor) -> np.ndarray:
    import simplejpeg

    size = _size(preprocess)
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    check_size(width, height)
    if colorspace.upper() in ("CMYK", "YCCK"):  # libjpeg-turbo has no CMYK -> RGB
        return _pillow_draft(data, preprocess)
    short = {"min_width": size} if width <= height else {"min_height": size}
    arr = simplejpeg.decode_jpeg(data, colorspace="RGB", **short)
    return preprocess(_upright(arr, _jpeg_orientation(data)))


_turbo: dict[str, object] = {}


def _turbojpeg_lib() -> str | None:
    path = os.environ.get(TURBOJPEG_ENV)
    if path:
        return path
    return str(_TURBOJPEG_CACHE) if _TURBOJPEG_CACHE.exists() else None


def _turbojpeg_instance():
    if "jpeg" not in _turbo:
        from turbojpeg import TurboJPEG

        _turbo["jpeg"] = TurboJPEG(_turbojpeg_lib())  # None: the system's library
    return _turbo["jpeg"]


def _turbojpeg_check() -> str | None:
    try:
        _turbojpeg_instance()
    except Exception as exc:  # RuntimeError (no library, or the wrong major version), OSError
        return f"libturbojpeg not loadable ({TURBOJPEG_ENV}={_turbojpeg_lib()}): {exc}"
    return None


def _turbojpeg(data: bytes, preprocess: Preprocessor) -> np.ndarray:
    import turbojpeg

    size = _size(preprocess)
    jpeg = _turbojpeg_instance()
    width, height, _, colorspace = jpeg.decode_header(data)
    check_size(width, height)
    if colorspace in (turbojpeg.TJCS_CMYK, turbojpeg.TJCS_YCCK):
        return _pillow_draft(data, preprocess)
    short = min(width, height)
    # The smallest scale whose short side (rounded up, as TJSCALED) is still >= size.
    fits = [(n, d) for n, d in jpeg.scaling_factors if n <= d and (short * n + d - 1) // d >= size]
    scale = min(fits, key=lambda f: f[0] / f[1], default=(1, 1))
    with warnings.catch_warnings():  # PyTurboJPEG 1.x only warns on a truncated file
        warnings.simplefilter("error")
        arr = jpeg.decode(
            data,
            pixel_format=turbojpeg.TJPF_RGB,
            scaling_factor=scale,
            flags=turbojpeg.TJFLAG_STOPONWARNING,
        )
    return preprocess(_upright(arr, _jpeg_orientation(data)))


_VIPS_LOADERS = {
    "JPEG": "jpegload_buffer",
    "PNG": "pngload_buffer",
    "GIF": "gifload_buffer",
    "WEBP": "webpload_buffer",
    "AVIF": "heifload_buffer",
    "TIFF": "tiffload_buffer",
}
_vips_ready: list[bool] = []


def _vips():
    import pyvips

    if not _vips_ready:
        pyvips.block_untrusted_set(True)  # no ImageMagick, matload & co. on untrusted bytes
        pyvips.cache_set_max(0)  # no operation cache holding decoded buffers
        pyvips.concurrency_set(1)  # one thread, as the other methods
        _vips_ready.append(True)
    return pyvips


def _vips_load(data: bytes, **options):
    """The sniffed format's own libvips loader (lazy: the header only, until pixels are read)."""
    pyvips = _vips()
    loader = getattr(pyvips.Image, _VIPS_LOADERS[sniff(data)])
    return loader(data, fail_on="error", **options)


def _vips_header_ok(img) -> None:
    height = img.get("page-height") if img.get_typeof("page-height") else img.height
    check_size(img.width, height)


def _vips_rgb(img) -> Image.Image:
    """sRGB, 8 bits, alpha on white, as a PIL image."""
    if img.interpretation != "srgb" or img.format != "uchar":
        img = img.colourspace("srgb")  # grey, b-w, 16-bit, CMYK
    if img.format != "uchar":
        img = img.cast("uchar")
    if img.hasalpha():
        img = img.flatten(background=[255, 255, 255])
    return Image.fromarray(img.numpy(), "RGB")


def _vips_shrink(data: bytes, preprocess: Preprocessor) -> np.ndarray:
    size = _size(preprocess)
    fmt = sniff(data)
    img = _vips_load(data)
    _vips_header_ok(img)
    short = min(img.width, img.height)
    if fmt == "JPEG":
        shrink = next((k for k in (8, 4, 2) if short // k >= size), 1)
        if shrink > 1:
            img = _vips_load(data, shrink=shrink)
    elif fmt == "WEBP":
        shrink = short // size
        if shrink > 1:
            img = _vips_load(data, scale=1.0 / shrink)
    return preprocess(_vips_rgb(img.autorot()))


def _vips_thumbnail(data: bytes, preprocess: Preprocessor) -> np.ndarray:
    size = _size(preprocess)
    _vips_header_ok(_vips_load(data))
    pyvips = _vips()
    # thumbnail_buffer's own fail_on keyword does not reach the loader (libvips 8.18.7 decodes
    # a truncated file whatever it says); the loader's option string does.
    img = pyvips.Image.thumbnail_buffer(
        data, size, height=size, crop="centre", option_string="fail_on=error"
    )
    return preprocess(_vips_rgb(img))


_VIPS_GAPS = (
    "libvips errors (pyvips.Error) and its own memory limits to map onto InputError; "
    "fail_on and block_untrusted to set process-wide; animated files read as page 0"
)
METHODS: tuple[Method, ...] = (
    Method("reference", "Pillow full decode, then Preprocess", _reference),
    Method(
        "noise_floor",
        f"calibration, not a decoder: the reference's input plus +-{NOISE_PX} px uniform noise",
        _noise_floor,
    ),
    Method(
        "pillow_draft",
        "decode(target_size=S, reducing_gap=None): JPEG draft mode only",
        _pillow_draft,
    ),
    Method(
        "pillow_reduce",
        f"decode(target_size=S) (today): draft, then Image.reduce to >= {REDUCING_GAP}xS",
        _pillow_reduce,
    ),
    Method(
        "simplejpeg",
        "simplejpeg scaled decode (short side >= S)",
        _simplejpeg,
        formats=frozenset({"JPEG"}),
        requires=("simplejpeg",),
        gaps="JPEG only; EXIF read by a second (header-only) Pillow parse; CMYK falls back "
        "to Pillow; its ValueError on bad data to map onto DecodeError",
    ),
    Method(
        "turbojpeg",
        "PyTurboJPEG scaled decode, 1/8 steps (short side >= S)",
        _turbojpeg,
        formats=frozenset({"JPEG"}),
        requires=("turbojpeg",),
        check=_turbojpeg_check,
        gaps="JPEG only; a system libturbojpeg (PyTurboJPEG 2 wants libjpeg-turbo 3, "
        "Debian 12 has 2.1: PyTurboJPEG<2); EXIF by a second Pillow parse; CMYK falls back; "
        "a truncated file only warns (made an error here, with a process-wide warnings filter)",
    ),
    Method(
        "vips_shrink",
        "libvips loader with shrink-on-load (JPEG, WebP), autorot, then Preprocess",
        _vips_shrink,
        formats=frozenset(_VIPS_LOADERS),
        requires=("pyvips",),
        gaps=_VIPS_GAPS,
    ),
    Method(
        "vips_thumbnail",
        "libvips thumbnail_buffer to SxS, centre crop (lanczos3), then Preprocess",
        _vips_thumbnail,
        formats=frozenset(_VIPS_LOADERS),
        requires=("pyvips",),
        gaps=_VIPS_GAPS + "; thumbnail_buffer sniffs the format itself, uses a HEIF/AVIF's "
        "embedded thumbnail when big enough (a second picture an uploader controls) and "
        "applies ICC profiles (Pillow, hence training, ignores them)",
    ),
)
