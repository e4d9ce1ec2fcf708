"""The paper's MLP head over CLIP embeddings.

x (B, D) ─► 3 × [Linear(D, D) → BatchNorm1d → LeakyReLU(0.01) → Dropout(0.335)]
          ─► Linear(D, 1) ─► logit (B,)        label 1 = generated
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    input_dim: int  # image embedding width (+ text embedding width when uses_text)
    hidden_dim: int = 0  # 0: same as input_dim, as in the paper
    blocks: int = 3  # Linear-BN-LeakyReLU-Dropout blocks before the output layer
    dropout: float = 0.335  # the paper's value
    negative_slope: float = 0.01  # LeakyReLU

    def to_dict(self) -> dict:
        return asdict(self)


class MLPHead(nn.Module):
    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_dim or config.input_dim
        layers: list[nn.Module] = []
        d_in = config.input_dim
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B,)
        return self.net(x).squeeze(-1)
