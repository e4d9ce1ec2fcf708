"""Train/held-out splits that do not leak a source into both sides.

When the data names at least two sources per class, whole sources go to the
held-out side (a generator the head never saw is the honest test); otherwise
the split is stratified by label. Deterministic for a seed.

Rows of the sources named in `stratify_sources` (retraining's "feedback": one
name for images from everywhere) are not split as whole sources: they are
split stratified by label among themselves, beside the rest's split, so they
are never all held out or all trained on.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np


def split_indices(
    labels: np.ndarray,
    sources: list[str],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    stratify_sources: Collection[str] = (),
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, held-out indices, "by_source" | "stratified").

    The method named is the one used for the rows outside `stratify_sources`
    ("stratified" when every row is in them). The rest's split is the same
    with or without the stratified rows.
    """
    labels = np.asarray(labels)
    sources_arr = np.asarray(sources)
    rng = np.random.default_rng(seed)
    by_row = (
        np.isin(sources_arr, sorted(set(stratify_sources)))
        if len(stratify_sources)
        else np.zeros(len(labels), bool)
    )
    rest = np.flatnonzero(~by_row)
    val = np.zeros(len(labels), bool)
    how = "stratified"
    if len(rest):
        rest_val, how = _split_rest(labels[rest], sources_arr[rest], val_fraction, rng)
        val[rest[rest_val]] = True
    rows = np.flatnonzero(by_row)
    if len(rows):
        val[rows[_stratified(labels[rows], val_fraction, rng)]] = True
    return np.flatnonzero(~val), np.flatnonzero(val), how


def _split_rest(
    labels: np.ndarray, sources_arr: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """(held-out mask, method) by whole sources where possible, else stratified."""
    by_class = {c: sorted(set(sources_arr[labels == c].tolist())) for c in (0, 1)}
    if all(len(v) >= 2 for v in by_class.values()):
        held = set()
        for c, names in by_class.items():
            names = list(names)
            rng.shuffle(names)
            target = val_fraction * (labels == c).sum()
            counts = {n: int(((sources_arr == n) & (labels == c)).sum()) for n in names}
            taken = 0
            for name in names[:-1]:  # always leave at least one source of each class for training
                if taken >= target:
                    break
                if taken + counts[name] > 1.5 * target:
                    continue  # one big collection would swamp the held-out side: try a smaller one
                held.add(name)
                taken += counts[name]
            if not taken:  # every candidate was too big alone: hold out the smallest
                held.add(min(names[:-1], key=counts.__getitem__))
        return np.isin(sources_arr, sorted(held)), "by_source"
    return _stratified(labels, val_fraction, rng), "stratified"


def _stratified(labels: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Held-out mask: about `val_fraction` of each class (at least one where a class has two)."""
    val_idx = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        val_idx.extend(idx[: max(1, int(round(val_fraction * len(idx))))] if len(idx) > 1 else [])
    val = np.zeros(len(labels), bool)
    val[val_idx] = True
    return val
