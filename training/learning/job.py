"""Train-evaluate-register-promote: what `dmguard train` and `retrain` run.

Split, train with Ray Train, evaluate on the held-out side, register the new
version, and promote it when `training.learning.promotion` says so; the decision and
both figures go into the new version's meta.json either way.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from training.errors import TrainingDataError
from training.evaluation.evaluate import evaluate
from training.evaluation.evaluate import operating_point as cut_and_band
from training.learning.balance import clusters, reweigh
from training.learning.config import TrainConfig
from training.learning.promotion import decide_promotion
from training.learning.split import split_indices
from training.learning.train import fit_head
from training.model.calibration import Calibration, fit_platt
from training.model.head import score
from training.model.registry import HeadMeta, Registry

log = logging.getLogger(__name__)


def train_register(
    X: np.ndarray,
    y: np.ndarray,
    sources: list[str],
    *,
    encoder: str,
    registry: Registry,
    cfg: TrainConfig,
    storage: Path,
    tolerance: float = 0.0,
    extra: dict | None = None,
    stratify_sources: Collection[str] = (),
    min_per_class: int = 1,
    groups: Sequence[str] | None = None,
    augmented: tuple[np.ndarray, np.ndarray] | None = None,
) -> HeadMeta:
    """Split, train with Ray Train, evaluate on held-out data, register, maybe promote.

    Rows of `stratify_sources` are split by label among themselves, not as
    whole sources (see `split_indices`). With `cfg.balance`, training rows are
    sampled so that label and group are independent (training.learning.balance): the
    groups are `groups` (content tags) or, without them, clusters of X.
    `augmented` = (rows, index of each one's original in X): laundered copies
    that train beside their original when it is on the training side, never
    held out.

    Raises:
        TrainingDataError: before training, when either side of the split has
            fewer than `min_per_class` (at least 1) rows of a class.
    """
    train_idx, val_idx, how = split_indices(
        y, sources, seed=cfg.seed, stratify_sources=stratify_sources
    )
    check_split(y, train_idx, val_idx, min_per_class=min_per_class)
    log.info("split %s: %d train, %d held out", how, len(train_idx), len(val_idx))
    X_fit, y_fit, weights, balanced = training_rows(X, y, train_idx, cfg, groups, augmented)
    head, history = fit_head(
        X_fit, y_fit, X[val_idx], y[val_idx], cfg, storage=storage, weights=weights
    )
    val_scores = score(head, X[val_idx])
    val_groups = [str(groups[i] or "untagged") for i in val_idx] if groups and any(groups) else None
    val_sources = [sources[i] for i in val_idx]
    threshold, uncertain_from, calibration = operating_point(
        y[val_idx], val_scores, cfg, val_groups, val_sources
    )
    metrics = evaluate(y[val_idx], val_scores, threshold, val_sources)
    decision = decide_promotion(
        registry,
        metrics["auc"] or 0.0,
        encoder,
        X[val_idx],
        y[val_idx],
        tolerance,
        features=cfg.features,
    )
    trained_on = {
        "n": len(train_idx),
        "per_class": {
            "generated": int(y[train_idx].sum()),
            "real": int(len(train_idx) - y[train_idx].sum()),
        },
        "per_source": _counts([sources[i] for i in train_idx]),
        "held_out_sources": sorted(set(val_sources) - set(stratify_sources))
        if how == "by_source"
        else None,
        "split": how,
        "augmented_rows": len(X_fit) - len(train_idx),
        "balanced_by": balanced,
        "stratified_sources": sorted(set(stratify_sources) & set(sources)),
    }
    meta = registry.save(
        head,
        encoder=encoder,
        uses_text=cfg.text_dim > 0,
        threshold=threshold,
        metrics=metrics,
        trained_on=trained_on,
        parent=registry.current(),
        calibration=calibration,
        uncertain_from=uncertain_from,
        features=cfg.features,
        extra={
            "promotion": decision,
            "train_config": asdict(cfg),
            "history": history,
            **(extra or {}),
        },
    )
    if decision["promoted"]:
        registry.promote(meta.version)
    log.info(
        "registered %s (held-out AUC %.4f): %s",
        meta.version,
        metrics["auc"] or float("nan"),
        decision["reason"],
    )
    return meta


def training_rows(
    X: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    cfg: TrainConfig,
    groups: Sequence[str] | None,
    augmented: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str | None]:
    """(rows, labels, sampling weights, what balanced them) to train on: the training
    side, its laundered copies, and weights from content tags or clusters of X."""
    rows = list(train_idx)
    X_fit, y_fit = X[train_idx], y[train_idx]
    if augmented is not None:
        aug_X, aug_of = augmented
        take = np.isin(aug_of, train_idx)
        X_fit = np.concatenate([X_fit, aug_X[take]])
        y_fit = np.concatenate([y_fit, y[aug_of[take]]])
        rows += list(aug_of[take])
    if not cfg.balance:
        return X_fit, y_fit, None, None
    if groups is not None and any(groups):
        names, balanced = [str(groups[i] or "untagged") for i in rows], "content"
    else:
        every = clusters(X, k=8, seed=cfg.seed)
        names, balanced = [every[i] for i in rows], "clusters"
    return X_fit, y_fit, reweigh(y_fit, names), balanced


def operating_point(
    y_val: np.ndarray,
    val_scores: np.ndarray,
    cfg: TrainConfig,
    groups: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> tuple[float, float | None, Calibration | None]:
    """(threshold, lower edge of the abstain band, calibration), all from held-out rows:
    the threshold passes `cfg.target_fpr` of the held-out real images overall, in each
    content group (`groups`) and in each real collection (`sources`) with enough real
    images, the band starts where `cfg.uncertain_fpr` of them would pass
    (`training.evaluation.evaluate.operating_point`), and Platt scaling is fitted on the held-out
    scores (None, logged, when it cannot be: one class, or scores that rank the classes
    backwards)."""
    threshold, uncertain_from = cut_and_band(
        y_val,
        val_scores,
        target_fpr=cfg.target_fpr,
        uncertain_fpr=cfg.uncertain_fpr,
        groups=groups,
        sources=sources,
    )
    try:
        calibration = fit_platt(val_scores, y_val)
    except ValueError as exc:
        log.warning("no calibration for this head: %s", exc)
        calibration = None
    return threshold, uncertain_from, calibration


def split_counts(y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray) -> dict:
    """Rows per class on each side: {"train": {"generated": n, "real": n}, "held_out": {...}}."""
    y = np.asarray(y)
    return {
        side: {"generated": int((y[idx] == 1).sum()), "real": int((y[idx] == 0).sum())}
        for side, idx in (("train", train_idx), ("held_out", val_idx))
    }


def check_split(
    y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *, min_per_class: int = 1
) -> dict:
    """The split's counts (see `split_counts`); TrainingDataError when a side lacks a class."""
    counts = split_counts(y, train_idx, val_idx)
    need = max(1, min_per_class)
    short = [
        f"{n} {cls} {'image' if n == 1 else 'images'} {'held out' if side == 'held_out' else 'to train on'}"
        for side, per_class in counts.items()
        for cls, n in per_class.items()
        if n < need
    ]
    if short:
        raise TrainingDataError(
            f"too few labelled images to split: {', '.join(short)} (each side needs at least "
            f"{need} of each class): add more labelled real and generated images",
            counts=counts,
        )
    return counts


def _counts(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it] = out.get(it, 0) + 1
    return out
