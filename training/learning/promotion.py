"""When a newly trained head replaces the serving one.

A new head is promoted only when its held-out AUC is not worse than the
current head's on the *same* held-out embeddings (within `tolerance`): two
heads judged on different data cannot be compared. A current head trained for
another encoder or on other image features (training.model.features), or none at
all, never blocks promotion: it cannot score these rows.
"""

from __future__ import annotations

import numpy as np

from training.evaluation.evaluate import roc_auc
from training.model.head import score
from training.model.registry import Registry


def decide_promotion(
    registry: Registry,
    new_auc: float,
    encoder: str,
    X_val: np.ndarray,
    y_val: np.ndarray,
    tolerance: float,
    features: str = "embedding",
) -> dict:
    """Compare with the current head on the same held-out set."""
    current = registry.current()
    decision = {
        "tolerance": tolerance,
        "new_auc": new_auc,
        "current_version": current,
        "current_auc": None,
    }
    if current is None:
        return {**decision, "promoted": True, "reason": "no current head"}
    head, meta = registry.load(current)
    if meta.encoder != encoder or meta.features != features or meta.input_dim != X_val.shape[1]:
        return {
            **decision,
            "promoted": True,
            "reason": f"current head reads other features ({meta.encoder}, {meta.features})",
        }
    current_auc = roc_auc(y_val, score(head, X_val))
    promoted = new_auc >= current_auc - tolerance
    reason = "not worse than current" if promoted else "worse than current"
    return {**decision, "current_auc": current_auc, "promoted": promoted, "reason": reason}
