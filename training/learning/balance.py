"""Sampling weights that take the subject out of the label.

If most generated training images are portraits and most real ones are
animals, a head can score "is this a person" and still look good on held-out
data with the same mix. Reweighing (Kamiran & Calders, 2012) gives each row
the weight P(label) · P(group) / P(label, group): weighted, label and group
are independent, so the subject alone no longer predicts the label. Groups
are the content tags of the benchmark (people, animal, ...) where there are
tags, and clusters of the embeddings where there are none (`clusters`).

A cell with very few rows (two generated animals) would get a weight large
enough to repeat them all epoch; weights are clipped at `max_ratio` times the
median, then rescaled to mean 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def reweigh(labels: np.ndarray, groups: Sequence[str], *, max_ratio: float = 10.0) -> np.ndarray:
    """(N,) weights, mean 1, under which label and group are independent (up to clipping)."""
    labels = np.asarray(labels).astype(int)
    groups = [str(g) for g in groups]
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    if not len(labels):
        return np.zeros(0)
    n = len(labels)
    p_label = Counter(labels.tolist())
    p_group = Counter(groups)
    p_cell = Counter(zip(groups, labels.tolist(), strict=True))
    w = np.array(
        [
            p_label[y] * p_group[g] / (n * p_cell[(g, y)])
            for g, y in zip(groups, labels.tolist(), strict=True)
        ]
    )
    w = np.minimum(w, max_ratio * np.median(w))
    return w / w.mean()


def clusters(X: np.ndarray, k: int = 8, *, seed: int = 0, iterations: int = 25) -> list[str]:
    """k-means (cosine, k-means++ start) cluster names of the rows of X, for data without
    content tags: images that look alike to CLIP share a cluster."""
    X = np.asarray(X, dtype=np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    k = max(1, min(k, len(X)))
    rng = np.random.default_rng(seed)
    centres = [X[rng.integers(len(X))]]
    for _ in range(1, k):
        d = 1 - np.max(X @ np.array(centres).T, axis=1)
        d = np.maximum(d, 0)
        centres.append(
            X[rng.choice(len(X), p=d / d.sum())] if d.sum() > 0 else X[rng.integers(len(X))]
        )
    C = np.array(centres)
    for _ in range(iterations):
        assign = np.argmax(X @ C.T, axis=1)
        for j in range(k):
            members = X[assign == j]
            if len(members):
                C[j] = members.mean(0) / max(np.linalg.norm(members.mean(0)), 1e-12)
    return [f"cluster-{j}" for j in np.argmax(X @ C.T, axis=1)]
