"""The paper's MLP head over CLIP embeddings.

x (B, D) ─► 3 × [Linear(D, D) → BatchNorm1d → LeakyReLU(0.01) → Dropout(0.335)]
          ─► Linear(D, 1) ─► logit (B,)        label 1 = generated

A head over the class tokens of the L transformer blocks (training.model.features,
"blocks"; `HeadConfig.tower_blocks = L`) first pools them as RINE does: one
projection shared by the blocks, then a learned softmax weighting of the blocks,

x (B, L·W) ─► view (B, L, W) ─► Linear(W, P) → LeakyReLU → Dropout
           ─► Σ_l softmax(w)_l · (B, L, P) ─► (B, P) ─► the MLP above with D = P

`head_input` builds x from image (and caption) embeddings and `score` turns x into
P(generated); every path that feeds or scores a head goes through these two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    input_dim: int  # image embedding width (+ text embedding width when uses_text)
    hidden_dim: int = 0  # 0: same as input_dim, as in the paper
    blocks: int = 3  # Linear-BN-LeakyReLU-Dropout blocks before the output layer
    dropout: float = 0.335  # the paper's value
    negative_slope: float = 0.01  # LeakyReLU
    tower_blocks: int = 0  # > 0: x is this many blocks' class tokens, pooled first (see above)
    pool_dim: int = 256  # P, the width of the pooled block tokens
    # Standardise each input feature with the training rows' mean and standard deviation
    # (buffers set by `MLPHead.fit_standardizer`, saved with the head). A linear head
    # on CLIP block tokens trains far better on standardised inputs (docs/detection.md).
    standardize: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class MLPHead(nn.Module):
    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        d_in = config.input_dim
        if config.tower_blocks:
            if config.input_dim % config.tower_blocks:
                raise ValueError(
                    f"input_dim {config.input_dim} is not {config.tower_blocks} blocks of one width"
                )
            self.project = nn.Sequential(
                nn.Linear(config.input_dim // config.tower_blocks, config.pool_dim),
                nn.LeakyReLU(config.negative_slope),
                nn.Dropout(config.dropout),
            )
            self.block_logits = nn.Parameter(torch.zeros(config.tower_blocks))
            d_in = config.pool_dim
        width = config.hidden_dim or d_in
        layers: list[nn.Module] = []
        for _ in range(config.blocks):
            layers += [
                nn.Linear(d_in, width),
                nn.BatchNorm1d(width),
                nn.LeakyReLU(config.negative_slope),
                nn.Dropout(config.dropout),
            ]
            d_in = width
        layers.append(nn.Linear(d_in, 1))
        self.net = nn.Sequential(*layers)
        if config.standardize:
            self.register_buffer("input_mean", torch.zeros(config.input_dim))
            self.register_buffer("input_scale", torch.ones(config.input_dim))

    def fit_standardizer(self, X: np.ndarray, eps: float = 1e-6) -> None:
        """Set the input standardisation from the training rows X (N, D)."""
        if not self.config.standardize:
            raise ValueError("this head does not standardise its inputs")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.config.input_dim or len(X) < 2:
            raise ValueError(f"need (N >= 2, {self.config.input_dim}) rows, got {X.shape}")
        self.input_mean.copy_(torch.from_numpy(X.mean(axis=0)).float())
        self.input_scale.copy_(torch.from_numpy(1.0 / (X.std(axis=0) + eps)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B,)
        if self.config.standardize:
            x = (x - self.input_mean) * self.input_scale
        if self.config.tower_blocks:
            tokens = self.project(x.view(len(x), self.config.tower_blocks, -1))  # (B, L, P)
            x = (tokens * self.block_weights()[None, :, None]).sum(dim=1)  # (B, P)
        return self.net(x).squeeze(-1)

    def block_weights(self) -> torch.Tensor:
        """The learned weight of each transformer block (sums to 1); empty for a plain head."""
        if not self.config.tower_blocks:
            return torch.zeros(0)
        return torch.softmax(self.block_logits, dim=0)


# The one assembly of a head's input and the one scoring of it, shared by serving
# (training.model.detector), training and its held-out evaluation (training.learning.train,
# training.learning.job), `dmguard eval` and retraining (training.learning.retrain): what a head was
# trained on and what it is served can only differ if these two change.

SCORE_BATCH = 8192  # rows per forward pass in `score`


def head_input(
    image_emb: np.ndarray,
    text_emb: np.ndarray | None = None,
    *,
    uses_text: bool,
    text_dim: int | None = None,
    input_dim: int | None = None,
) -> np.ndarray:
    """What a head reads, (N, D) float32: the image embeddings, followed for a head
    that uses text by the caption embeddings.

    `text_emb` (N, Dt) holds zeros in the rows of records without a caption; None
    means no record has one, and the caption part is all zeros, `text_dim` wide
    (or `input_dim` minus the image width). A head without text ignores `text_emb`.
    `input_dim`, when given, is checked against the result (for a non-empty batch).

    Raises:
        ValueError: the widths or row counts do not fit together, or a head that
            uses text gets no caption embeddings and no width for them.
    """
    X = np.asarray(image_emb, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"image embeddings must be (N, D), got shape {X.shape}")
    if uses_text:
        if text_emb is None:
            width = text_dim
            if width is None and input_dim is not None:
                width = input_dim - X.shape[1]
            if width is None or width < 0:
                raise ValueError(
                    "no caption embeddings, and no text_dim or input_dim to size the zeros"
                )
            T = np.zeros((len(X), width), np.float32)
        else:
            T = np.asarray(text_emb, dtype=np.float32)
            if T.ndim != 2 or len(T) != len(X):
                raise ValueError(
                    f"caption embeddings {T.shape} do not match image embeddings {X.shape}"
                )
            if text_dim is not None and T.shape[1] != text_dim:
                raise ValueError(f"caption embeddings are {T.shape[1]} wide, not {text_dim}")
        X = np.concatenate([X, T], axis=1)
    if input_dim is not None and len(X) and X.shape[1] != input_dim:
        raise ValueError(f"head input is {X.shape[1]} wide, the head reads {input_dim}")
    return X


def score(
    head: MLPHead,
    features: np.ndarray,
    *,
    device: str | torch.device | None = None,
    batch_size: int = SCORE_BATCH,
) -> np.ndarray:
    """P(generated) for each row of `features` (see `head_input`): the sigmoid of the
    head's logit, (N,) float32.

    Always in eval mode (BatchNorm's running statistics, no dropout) under
    `torch.inference_mode`, `batch_size` rows at a time; the head's own mode is
    restored afterwards. `device` is where the rows go, by default where the head's
    parameters are (the head is not moved).
    """
    X = np.asarray(features, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {X.shape}")
    if len(X) == 0:
        return np.zeros(0, np.float32)
    if X.shape[1] != head.config.input_dim:
        raise ValueError(f"features are {X.shape[1]} wide, the head reads {head.config.input_dim}")
    if not X.flags.writeable:  # e.g. from Ray's object store; torch wants writable memory
        X = X.copy()
    if device is None:
        device = next(head.parameters()).device
    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode():
            out = [
                torch.sigmoid(head(torch.from_numpy(X[i : i + batch_size]).to(device)))
                .float()
                .cpu()
                .numpy()
                for i in range(0, len(X), batch_size)
            ]
    finally:
        head.train(was_training)
    return np.concatenate(out).astype(np.float32, copy=False)
