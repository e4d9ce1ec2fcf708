"""What a head reads from the image tower: its kind of image features.

    embedding   the final CLIP embedding, L2-normalised, (B, D): what CLIP says
                the image shows
    blocks      the class token after every transformer block, each
                L2-normalised, concatenated block by block, (B, L * W)

Semantics dominate the final embedding: a head on it learns what generated
images tend to show (portraits, stylised scenes) as much as how they were
made. The earlier blocks still carry low-level statistics of the pixels, which
is what RINE (Koutlis & Papadopoulos, ECCV 2024) reads from every block; the
leave-source-out benchmark compares the two kinds (README, "Detection
quality"). Each block is normalised on its own because the residual stream's
norm grows with depth: unnormalised, the last blocks would dominate.

A head records its kind in its metadata (`features`), and serving, training
and the embedding cache all call `image_features`, so the three cannot
disagree.
"""

from __future__ import annotations

import numpy as np

from training.encoders import Encoder, ImageFeatures

KINDS = ("embedding", "blocks")
DEFAULT = "embedding"


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"image features must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def image_features(features: ImageFeatures, kind: str) -> np.ndarray:
    """(B, F) float32 of `kind` from what the encoder returned."""
    if check_kind(kind) == "embedding":
        return features.embeddings.astype(np.float32, copy=False)
    blocks = features.blocks.astype(np.float32, copy=False)
    if blocks.ndim != 3 or blocks.shape[1] == 0:
        raise ValueError("this encoder exposes no transformer blocks")
    norms = np.maximum(np.linalg.norm(blocks, axis=2, keepdims=True), 1e-12)
    return (blocks / norms).reshape(len(blocks), -1)


def encode(encoder: Encoder, pixels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(final embeddings, features of `kind`) for a batch of preprocessed pixels; the
    blocks are only asked for when `kind` needs them."""
    if check_kind(kind) == "embedding":
        embeddings = encoder.encode_images(pixels)
        return embeddings, embeddings
    features = encoder.encode_features(pixels)
    return features.embeddings, image_features(features, kind)


def width(encoder: Encoder, kind: str) -> int:
    """The width of `kind` for this encoder."""
    if check_kind(kind) == "embedding":
        return encoder.dim
    blocks, block_width = encoder.block_shape
    if not blocks:
        raise ValueError(f"encoder {encoder.spec} exposes no transformer blocks")
    return blocks * block_width
