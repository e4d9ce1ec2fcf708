"""Train/held-out splits that do not leak a source into both sides.

When the data names at least two sources per class, whole sources go to the
held-out side (a generator the head never saw is the honest test); otherwise
the split is stratified by label. Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np


def split_indices(
    labels: np.ndarray, sources: list[str], *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, held-out indices, "by_source" | "stratified")."""
    labels = np.asarray(labels)
    sources_arr = np.asarray(sources)
    rng = np.random.default_rng(seed)
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
        val = np.isin(sources_arr, sorted(held))
        return np.flatnonzero(~val), np.flatnonzero(val), "by_source"
    val_idx = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        val_idx.extend(idx[: max(1, int(round(val_fraction * len(idx))))] if len(idx) > 1 else [])
    val = np.zeros(len(labels), bool)
    val[val_idx] = True
    return np.flatnonzero(~val), np.flatnonzero(val), "stratified"
