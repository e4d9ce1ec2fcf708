"""The robust loss of Santosh et al. (2024): CVaR of the per-sample BCE plus a
pairwise AUC loss on logits.

    total = γ · CVaR_α(BCE) + (1 − γ) · AUC_η,p

* CVaR_α(ℓ) = min_λ λ + (1/α)·mean((ℓᵢ − λ)₊) is the mean of the worst
  α-fraction of the losses: α = 1 gives the mean, α → 0 the max. It is
  computed exactly (sort, with the fractional last sample weighted), not by
  searching λ, and gradients reach exactly the samples in the tail.
* AUC_η,p = mean over (positive, negative) pairs of max(0, η − (s₊ − s₋))^p,
  vectorised as a (P, N) matrix. A batch without both classes gives 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cvar(losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mean of the worst `alpha` fraction of `losses` (1-D), fractional count included.

    With k = α·n, the top ⌊k⌋ losses count fully and the next one with weight
    k − ⌊k⌋; the sum is divided by k. This is the exact minimum over λ of
    λ + (1/(α n)) Σ (ℓᵢ − λ)₊.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    n = losses.numel()
    if n == 0:
        return losses.sum()
    k = alpha * n
    whole = min(n, math.floor(k + 1e-9))
    frac = k - whole
    top = torch.sort(losses.flatten(), descending=True).values
    total = top[:whole].sum()
    if frac > 1e-9 and whole < n:
        total = total + frac * top[whole]
    return total / k


def auc_pairwise(
    scores: torch.Tensor, labels: torch.Tensor, margin: float = 0.6, power: float = 2
) -> torch.Tensor:
    """Squared-hinge pairwise AUC surrogate on raw logits; label 1 = generated (positive)."""
    scores = scores.flatten()
    labels = labels.flatten()
    pos = scores[labels > 0.5]  # (P,)
    neg = scores[labels <= 0.5]  # (N,)
    if pos.numel() == 0 or neg.numel() == 0:
        return scores.sum() * 0.0  # keeps the graph, contributes nothing
    gaps = margin - (pos[:, None] - neg[None, :])  # (P, N)
    return torch.clamp(gaps, min=0).pow(power).mean()


def robust_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 0.5,
    alpha: float = 0.8,
    margin: float = 0.6,
    power: float = 2,
) -> torch.Tensor:
    """γ · CVaR_α(per-sample BCE-with-logits) + (1 − γ) · pairwise AUC loss."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    per_sample = F.binary_cross_entropy_with_logits(
        logits.flatten(), labels.flatten().float(), reduction="none"
    )
    return gamma * cvar(per_sample, alpha) + (1 - gamma) * auc_pairwise(
        logits, labels, margin, power
    )


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain mean BCE, the baseline (`--loss bce`)."""
    return F.binary_cross_entropy_with_logits(logits.flatten(), labels.flatten().float())
