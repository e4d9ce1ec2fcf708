"""Calibration of head scores, and the three-way verdict with an abstain band.

A head's raw score ranks images well but is not a probability one can read
off: `Calibration` maps it to a calibrated P(generated) with Platt scaling on
the logit of the score,

    p = sigmoid(a * logit(clip(score, EPS, 1 - EPS)) + b),    a > 0,

fitted by maximum likelihood with `fit_platt` on held-out (score, label)
pairs. `a > 0` keeps the order of scores, so thresholds in raw-score units
(the head's `threshold` and `uncertain_from`) mean the same before and after.

`verdict_for` is the serving rule: "generated" at or above the threshold,
"uncertain" in the band [uncertain_from, threshold) when the head has one
(a platform sends those to human review), "real" below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = 1e-6  # scores are clipped to [EPS, 1 - EPS] before the logit
METHODS = ("platt",)
VERDICTS = ("real", "uncertain", "generated")


def _logit(scores: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(s) - np.log1p(-s)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow for any finite z."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _finite_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"calibration {name} must be a number, not {value!r}")
    try:
        out = float(value)
    except OverflowError:  # a JSON integer too big for a float
        out = math.inf
    if not math.isfinite(out):
        raise ValueError(f"calibration {name} must be finite, not {value!r}")
    return out


@dataclass(frozen=True)
class Calibration:
    """Platt scaling on logit(score): P(generated) = sigmoid(a * logit(score) + b)."""

    a: float
    b: float

    def __post_init__(self) -> None:
        a = _finite_float(self.a, "a")
        b = _finite_float(self.b, "b")
        if a <= 0:
            raise ValueError(
                f"calibration a must be > 0 so that the order of scores is kept, not {a!r}"
            )
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated P(generated) of raw head scores (float64, same shape)."""
        return _sigmoid(self.a * _logit(scores) + self.b)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "platt", "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: object) -> Calibration:
        """The inverse of `to_dict`, checked.

        Raises:
            ValueError: not an object, an unknown method, missing or unknown keys,
                a or b not a finite number, or a <= 0.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"calibration must be an object, not {type(d).__name__}")
        method = d.get("method")
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r} (known: {', '.join(METHODS)})")
        missing = [k for k in ("a", "b") if k not in d]
        if missing:
            raise ValueError(f"calibration is missing {', '.join(missing)}")
        unknown = sorted(str(k) for k in d if k not in ("method", "a", "b"))
        if unknown:
            raise ValueError(f"calibration has unknown key(s) {', '.join(unknown)}")
        return cls(a=d["a"], b=d["b"])


def fit_platt(
    scores: np.ndarray, labels: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10
) -> Calibration:
    """Platt scaling fitted by maximum likelihood (Newton's method with a backtracking
    line search) on the feature logit(score), with Platt's smoothed targets:
    (N+ + 1) / (N+ + 2) for positives (label 1 = generated), 1 / (N- + 2) for negatives.

    Raises:
        ValueError: mismatched or empty inputs, non-finite scores, labels other than
            0/1, a class missing, or scores that do not rank the classes (a <= 0).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (generated)")
    positive = labels.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"Platt scaling needs both classes (got {n_pos} generated, {n_neg} real)")
    x = _logit(scores)
    t = np.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(a: float, b: float) -> float:
        z = a * x + b
        return float(np.sum(np.logaddexp(0.0, z) - t * z))  # cross-entropy vs targets t

    a, b = 1.0, 0.0  # the identity map: p = score
    f = loss(a, b)
    for _ in range(max_iter):
        p = _sigmoid(a * x + b)
        r = p - t
        grad = np.array([np.dot(r, x), r.sum()])
        w = p * (1.0 - p)
        hess = np.array([[np.dot(w, x * x), np.dot(w, x)], [np.dot(w, x), w.sum()]])
        hess += 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        decrease = float(np.dot(grad, step))  # > 0: the Hessian is positive definite
        if decrease < tol * max(1.0, abs(f)):
            break
        lr = 1.0
        while lr > 1e-10:
            a_new, b_new = a - lr * step[0], b - lr * step[1]
            f_new = loss(a_new, b_new)
            if f_new <= f - 1e-4 * lr * decrease:
                break
            lr *= 0.5
        else:
            break  # no decrease possible in floating point: at the optimum
        a, b, f = a_new, b_new, f_new
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        raise ValueError(
            f"the scores do not rank generated above real images (fitted a = {a:.4g}); "
            "refusing a calibration that would reverse their order"
        )
    return Calibration(a=a, b=b)


def verdict_for(score: float, threshold: float, uncertain_from: float | None) -> str:
    """ "generated" when score >= threshold; "uncertain" when there is an abstain band
    (`uncertain_from` not None, <= threshold) and score >= uncertain_from; else "real"."""
    if score >= threshold:
        return "generated"
    if uncertain_from is not None and score >= uncertain_from:
        return "uncertain"
    return "real"
