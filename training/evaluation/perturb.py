"""Laundering perturbations for robustness checks: `jpeg:75,resize:0.5,blur:1`."""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageFilter

from services.errors import ConfigError


def _jpeg(quality: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(quality))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return apply


def _resize(factor: float) -> Callable[[Image.Image], Image.Image]:
    return lambda img: img.resize(
        (max(1, round(img.width * factor)), max(1, round(img.height * factor))), Image.BICUBIC
    )


def _blur(radius: float) -> Callable[[Image.Image], Image.Image]:
    return lambda img: img.filter(ImageFilter.GaussianBlur(radius))


KINDS = {"jpeg": _jpeg, "resize": _resize, "blur": _blur}


def parse_perturbations(spec: str) -> dict[str, Callable[[bytes], bytes]]:
    """{"jpeg:75": bytes -> bytes, ...}; each re-encodes as PNG after its change."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, value = item.partition(":")
        if kind not in KINDS or not value:
            raise ConfigError(f"perturbation {item!r}: use jpeg:Q, resize:F or blur:R")
        try:
            amount = float(value)
        except ValueError:
            raise ConfigError(f"perturbation {item!r}: {value!r} is not a number") from None
        change = KINDS[kind](amount)

        def apply(data: bytes, change=change) -> bytes:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            buf = io.BytesIO()
            change(img).save(buf, "PNG")
            return buf.getvalue()

        out[item] = apply
    return out


def reencode(side: int, quality: int) -> Callable[[bytes], bytes]:
    """An upload's second life: shortest side scaled to `side` px, then JPEG at `quality`
    (the "160px q60" robustness figure of the benchmark)."""

    def apply(data: bytes) -> bytes:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        scale = side / min(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC
        )
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    return apply


def launder(seed: int) -> Callable[[bytes], bytes]:
    """A random laundering of the kind uploads go through, the same for the same seed and
    bytes: a crop keeping 80-100% of each side, a downscale by 0.4-1, then JPEG (q 50-95,
    70% of the time), WebP (q 50-95, 20%) or PNG. Training on such copies (cached like any
    image: the cache key is the laundered bytes' hash) teaches a head traces that survive."""
    import hashlib
    import random

    def apply(data: bytes) -> bytes:
        rng = random.Random(f"{seed}:{hashlib.sha256(data).hexdigest()}")
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        cw, ch = round(w * rng.uniform(0.8, 1.0)), round(h * rng.uniform(0.8, 1.0))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((left, top, left + cw, top + ch))
        factor = rng.uniform(0.4, 1.0)
        img = img.resize((max(1, round(cw * factor)), max(1, round(ch * factor))), Image.BICUBIC)
        buf = io.BytesIO()
        kind = rng.random()
        if kind < 0.7:
            img.save(buf, "JPEG", quality=rng.randint(50, 95))
        elif kind < 0.9:
            img.save(buf, "WEBP", quality=rng.randint(50, 95))
        else:
            img.save(buf, "PNG")
        return buf.getvalue()

    return apply
