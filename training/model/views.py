"""Test-time views: the same upload looked at more than once.

The encoder sees one 224 px square of an upload: its short side resized, the
centre cropped (`Preprocess`). A head can be fooled by what that one square
happens to show, so a detector may also score other views of the same decoded
picture and combine the scores:

    flip    the picture mirrored left to right
    whole   the whole picture squashed to a square (nothing cropped)
    zoom    the centre half of the picture (both sides halved): more pixels per
            detail, which is what a large upload has to offer

Every view is a PIL image that then goes through the encoder's own `Preprocess`,
so training, the benchmark and serving cannot differ in how a view is made.
`combine` is the one rule that turns the views' scores into one score.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from services.images import decode

VIEWS = ("flip", "whole", "zoom")


def check_views(names: Sequence[str]) -> tuple[str, ...]:
    """`names` as a tuple, each a known view, none twice; ValueError otherwise."""
    names = tuple(names)
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {', '.join(unknown)}: known are {', '.join(VIEWS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a view is named twice in {', '.join(names)}")
    return names


def view(image: Image.Image, name: str) -> Image.Image:
    """The view `name` of a decoded RGB picture (the encoder's `Preprocess` follows)."""
    if name == "flip":
        return ImageOps.mirror(image)
    if name == "whole":
        side = min(image.size)
        return image.resize((side, side), Image.Resampling.BICUBIC)
    if name == "zoom":
        w, h = image.size
        half_w, half_h = max(1, w // 2), max(1, h // 2)
        left, top = (w - half_w) // 2, (h - half_h) // 2
        return image.crop((left, top, left + half_w, top + half_h))
    raise ValueError(f"unknown view {name!r}: known are {', '.join(VIEWS)}")


def view_pixels(
    image: Image.Image, preprocess: Callable[[Image.Image], np.ndarray], views: Sequence[str]
) -> np.ndarray:
    """A decoded picture as the encoder's input: `preprocess(image)`, (3, S, S), without
    views; with them, (1 + V, 3, S, S): the centre crop, then each view. Serving, `dmguard
    score` and the benchmark (through `as_bytes`) all make a view's pixels this way."""
    if not views:
        return preprocess(image)
    return np.stack([preprocess(image)] + [preprocess(view(image, name)) for name in views])


def combine(scores: np.ndarray) -> np.ndarray:
    """One score per image from its views' scores, (B, V) -> (B,): the mean."""
    return np.asarray(scores, dtype=np.float64).mean(axis=1)


def as_bytes(name: str, side: int) -> Callable[[bytes], bytes]:
    """The view as a bytes -> bytes transform (a lossless PNG of the view), so that the
    embedding cache keys a view's features by the bytes the encoder saw. `side` is the
    encoder's input size, which decoding reduces large pictures towards."""
    check_views([name])

    def apply(data: bytes) -> bytes:
        out = io.BytesIO()
        view(decode(data, target_size=side), name).save(out, "PNG")
        return out.getvalue()

    return apply
