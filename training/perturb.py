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
