"""Held-out metrics of a detector, in numpy (no scikit-learn dependency).

Scores are P(generated); label 1 = generated (positive). A verdict is
"generated" when score >= threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve, as sum over thresholds of
    (recall step) x precision. Tied scores form one threshold, so the result
    does not depend on the order of the rows (the same definition as
    scikit-learn's `average_precision_score`)."""
    labels = np.asarray(labels).astype(bool)
    if labels.sum() == 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    hits, ranked = labels[order], scores[order]
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]  # the end of each group of equal scores
    tp = np.cumsum(hits)[last_of_tie]
    seen = np.flatnonzero(last_of_tie) + 1
    recall_step = np.diff(np.r_[0, tp]) / labels.sum()
    return float(np.sum(recall_step * tp / seen))


def threshold_for_fpr(labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on these negatives is <= target_fpr."""
    labels = np.asarray(labels).astype(bool)
    neg = np.sort(np.asarray(scores, dtype=np.float64)[~labels])[::-1]
    if len(neg) == 0:
        return 0.5
    allowed = int(np.floor(target_fpr * len(neg) + 1e-9))
    if allowed >= len(neg):
        return float(neg[-1])
    return float(
        np.nextafter(neg[allowed], np.inf)
    )  # just above the first negative that must not pass


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    labels = np.asarray(labels).astype(bool)
    if labels.sum() == 0:
        return float("nan")
    t = threshold_for_fpr(labels, scores, target_fpr)
    return float((np.asarray(scores, dtype=np.float64)[labels] >= t).mean())


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    labels = np.asarray(labels).astype(np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(scores[mask].mean() - labels[mask].mean())
    return float(ece)


def _metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    labels = np.asarray(labels).astype(bool)
    pred = (
        np.asarray(scores, dtype=np.float64) >= threshold
    )  # float64: thresholds sit one ulp above a score
    return {
        "n_generated": int(labels.sum()),
        "n_real": int((~labels).sum()),
        "auc": _clean(roc_auc(labels, scores)),
        "ap": _clean(average_precision(labels, scores)),
        "accuracy": float((pred == labels).mean()) if len(labels) else None,
        "tpr_at_1fpr": _clean(tpr_at_fpr(labels, scores, 0.01)),
        "tpr_at_5fpr": _clean(tpr_at_fpr(labels, scores, 0.05)),
        "fpr_at_threshold": float(pred[~labels].mean()) if (~labels).any() else None,
        "ece": expected_calibration_error(labels, scores) if len(labels) else None,
    }


def evaluate(
    labels: np.ndarray, scores: np.ndarray, threshold: float, sources: Sequence[str] | None = None
) -> dict:
    """All held-out metrics, and the same per source/generator when `sources` is given."""
    out = _metrics(labels, scores, threshold)
    out["threshold"] = threshold
    if sources is not None:
        sources = np.asarray(sources)
        out["per_source"] = {
            str(s): _metrics(
                np.asarray(labels)[sources == s], np.asarray(scores)[sources == s], threshold
            )
            for s in sorted(set(sources.tolist()))
        }
    return out


def _clean(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (one class only) becomes null in JSON


def threshold_for_group_fpr(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str] | None,
    target_fpr: float,
    *,
    min_real: int = 5,
    sources: Sequence[str] | None = None,
) -> float:
    """The lowest threshold whose false-positive rate is <= target_fpr overall, in every
    group (content tag) and in every source (real photo collection) with at least
    `min_real` real images: the worst case, not the pooled rate.

    An upload stream is mostly people while a labelled set's real photos are mostly
    landscapes and animals: a threshold set on all real images alike passes the target
    on the set and calls far more real people "generated". And one collection's real
    photos (a studio's portraits, one phone's snapshots) can score alike and far from the
    rest: pooled with the others they pass, alone they do not. Held to every group and
    every source, the threshold meets the target on each of them."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    cut = threshold_for_fpr(labels, scores, target_fpr)
    for grouping in (groups, sources):
        if grouping is None:
            continue
        names = np.asarray(grouping)
        for g in sorted(set(names[~labels].tolist())):
            rows = names == g
            if int((rows & ~labels).sum()) >= min_real:
                cut = max(cut, threshold_for_fpr(labels[rows], scores[rows], target_fpr))
    return cut


def operating_point(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    target_fpr: float,
    uncertain_fpr: float,
    groups: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    min_real: int = 5,
) -> tuple[float, float | None]:
    """(threshold, lower edge of the abstain band) from held-out rows.

    The threshold holds `target_fpr` overall, per group and per source
    (`threshold_for_group_fpr`); the band starts where `uncertain_fpr` of all held-out
    real images would pass (pooled), so the scores between the pooled point and the
    worst-case threshold are "uncertain". None when that edge is not below the threshold
    (or `uncertain_fpr` <= `target_fpr`: no band)."""
    threshold = threshold_for_group_fpr(
        labels, scores, groups, target_fpr, min_real=min_real, sources=sources
    )
    if uncertain_fpr <= target_fpr:
        return threshold, None
    edge = threshold_for_fpr(labels, scores, uncertain_fpr)
    return threshold, (edge if edge < threshold else None)


def verdict_shares(
    scores: np.ndarray, threshold: np.ndarray | float, uncertain_from: np.ndarray | float | None
) -> dict[str, float | None]:
    """The share of "real", "uncertain" and "generated" verdicts among these scores, by the
    serving rule (training.model.calibration.verdict_for); thresholds may differ per row."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return {"real": None, "uncertain": None, "generated": None}
    threshold = np.broadcast_to(np.asarray(threshold, dtype=np.float64), scores.shape)
    lower = threshold if uncertain_from is None else np.asarray(uncertain_from, dtype=np.float64)
    lower = np.broadcast_to(np.where(np.isnan(lower), threshold, lower), scores.shape)
    generated = scores >= threshold
    uncertain = ~generated & (scores >= lower)
    return {
        "real": float((~generated & ~uncertain).mean()),
        "uncertain": float(uncertain.mean()),
        "generated": float(generated.mean()),
    }
