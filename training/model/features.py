"""What a head reads from the image tower: its kind of image features.

    embedding   the final CLIP embedding, L2-normalised, (B, D): what CLIP says
                the image shows
    blocks      the class token after every transformer block, each
                L2-normalised, concatenated block by block, (B, L * W)
    blocks:A-B  the same for blocks A to B only (0-based, inclusive; "blocks:8"
                is block 8 alone)

Semantics dominate the final embedding: a head on it learns what generated
images tend to show (portraits, stylised scenes) as much as how they were
made. The earlier blocks still carry low-level statistics of the pixels, which
is what RINE (Koutlis & Papadopoulos, ECCV 2024) reads from every block; the
leave-source-out benchmark compares the two kinds (docs/detection.md,
"What was tried"). Each block is normalised on its own because the residual stream's
norm grows with depth: unnormalised, the last blocks would dominate.

A head records its kind in its metadata (`features`), and serving, training
and the embedding cache all call `image_features`, so the three cannot
disagree.
"""

from __future__ import annotations

import re

import numpy as np

from training.model.encoders import Encoder, ImageFeatures

KINDS = ("embedding", "blocks", "blocks:A-B")
DEFAULT = "embedding"
_RANGE = re.compile(r"blocks(?::(\d{1,3})(?:-(\d{1,3}))?)?")


def check_kind(kind: str) -> str:
    if kind != "embedding" and not _RANGE.fullmatch(kind):
        raise ValueError(f"image features must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def block_range(kind: str, blocks: int) -> range:
    """The blocks `kind` reads out of an encoder's `blocks`; ValueError beyond them."""
    match = _RANGE.fullmatch(check_kind(kind))
    if match is None:
        raise ValueError(f"{kind!r} reads no transformer blocks")
    first = int(match.group(1) or 0)
    last = int(match.group(2) or match.group(1) or blocks - 1)
    if not blocks:
        raise ValueError("this encoder exposes no transformer blocks")
    if not first <= last < blocks:
        raise ValueError(f"{kind!r}: this encoder has blocks 0-{blocks - 1}")
    return range(first, last + 1)


def image_features(features: ImageFeatures, kind: str) -> np.ndarray:
    """(B, F) float32 of `kind` from what the encoder returned."""
    if check_kind(kind) == "embedding":
        return features.embeddings.astype(np.float32, copy=False)
    blocks = features.blocks.astype(np.float32, copy=False)
    if blocks.ndim != 3:
        raise ValueError("this encoder exposes no transformer blocks")
    chosen = blocks[:, list(block_range(kind, blocks.shape[1]))]
    norms = np.maximum(np.linalg.norm(chosen, axis=2, keepdims=True), 1e-12)
    return (chosen / norms).reshape(len(chosen), -1)


def encode(encoder: Encoder, pixels: np.ndarray, kind: str) -> np.ndarray:
    """Features of `kind` for a batch of preprocessed pixels; the blocks are only asked for
    when `kind` needs them."""
    if check_kind(kind) == "embedding":
        return encoder.encode_images(pixels)
    return image_features(encoder.encode_features(pixels), kind)


def width(encoder: Encoder, kind: str) -> int:
    """The width of `kind` for this encoder."""
    if check_kind(kind) == "embedding":
        return encoder.dim
    blocks, block_width = encoder.block_shape
    return len(block_range(kind, blocks)) * block_width
