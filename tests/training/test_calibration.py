"""Platt scaling of head scores (training.model.calibration), checked against scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from training.evaluation.evaluate import expected_calibration_error
from training.model.calibration import EPS, Calibration, fit_platt, verdict_for


def logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(s, dtype=np.float64), EPS, 1 - EPS)
    return np.log(s / (1 - s))


def miscalibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of an over-confident, biased head: the true P(generated | score) is
    sigmoid(0.4 * logit(score) - 0.8), far from the score itself."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 3.0, n)  # logit(score)
    scores = 1 / (1 + np.exp(-x))
    p_true = 1 / (1 + np.exp(-(0.4 * x - 0.8)))
    labels = (rng.random(n) < p_true).astype(int)
    return scores, labels


def sklearn_platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt's maximum-likelihood fit with scikit-learn: each example is two rows, label 1
    weighted by its smoothed target t and label 0 by 1 - t, which is the same
    cross-entropy; C large makes the L2 penalty negligible."""
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    t = np.where(labels == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    x = logit(scores)
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000)
    lr.fit(
        np.concatenate([x, x])[:, None],
        np.concatenate([np.ones_like(t), np.zeros_like(t)]),
        sample_weight=np.concatenate([t, 1 - t]),
    )
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_platt_matches_scikit_learn(seed):
    scores, labels = miscalibrated(3000, seed)
    cal = fit_platt(scores, labels)
    a, b = sklearn_platt(scores, labels)
    assert cal.a == pytest.approx(a, abs=1e-3)
    assert cal.b == pytest.approx(b, abs=1e-3)
    assert cal.a == pytest.approx(0.4, abs=0.1) and cal.b == pytest.approx(-0.8, abs=0.2)


def test_fit_platt_on_separable_data_stays_finite():
    """Platt's smoothed targets keep the optimum finite when the classes do not overlap."""
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    cal = fit_platt(scores, labels)
    assert math.isfinite(cal.a) and math.isfinite(cal.b) and cal.a > 0
    a, b = sklearn_platt(scores, labels)
    assert cal.a == pytest.approx(a, abs=1e-3) and cal.b == pytest.approx(b, abs=1e-3)


def test_calibrated_probabilities_are_better_calibrated_than_raw_scores():
    scores, labels = miscalibrated(4000, seed=3)
    cal = fit_platt(scores[:2000], labels[:2000])
    test_s, test_y = scores[2000:], labels[2000:]
    p = cal(test_s)

    def brier(q):
        return float(np.mean((q - test_y) ** 2))

    assert brier(p) < brier(test_s) - 0.02
    ece_raw = expected_calibration_error(test_y, test_s)
    ece_cal = expected_calibration_error(test_y, p)
    assert ece_cal < 0.05 < ece_raw
    assert ece_cal < ece_raw / 3


def test_calibration_formula_and_monotonicity():
    cal = Calibration(a=0.7, b=-0.3)
    s = np.array([0.0, 1e-9, 0.2, 0.5, 0.9, 1.0])
    x = logit(s)
    assert np.allclose(cal(s), 1 / (1 + np.exp(-(0.7 * x - 0.3))), rtol=0, atol=1e-12)
    grid = np.linspace(0, 1, 10_001)
    p = cal(grid)
    assert np.all(np.diff(p) >= 0) and np.all(np.diff(p[1:-1]) > 0)  # order kept
    assert np.all((p >= 0) & (p <= 1))
    steep = Calibration(a=1e6, b=0.0)  # no overflow, still in [0, 1]
    with np.errstate(all="raise"):
        q = steep(grid)
    assert np.all(np.isfinite(q)) and np.all(np.diff(q) >= 0)
    assert cal(np.float32(0.5)).shape == ()


def test_to_dict_round_trips_through_json():
    cal = Calibration(a=0.7, b=-0.3)
    d = cal.to_dict()
    assert d == {"method": "platt", "a": 0.7, "b": -0.3}
    assert Calibration.from_dict(json.loads(json.dumps(d))) == cal
    assert Calibration.from_dict({"method": "platt", "a": 2, "b": 0}) == Calibration(2.0, 0.0)


@pytest.mark.parametrize(
    "d, match",
    [
        ([0.7, 0.1], "must be an object"),
        (None, "must be an object"),
        ({"method": "isotonic", "a": 1.0, "b": 0.0}, "unknown calibration method"),
        ({"a": 1.0, "b": 0.0}, "unknown calibration method"),
        ({"method": "platt", "a": 1.0}, "missing b"),
        ({"method": "platt", "a": 1.0, "b": 0.0, "c": 1}, "unknown key"),
        ({"method": "platt", "a": "1", "b": 0.0}, "a must be a number"),
        ({"method": "platt", "a": True, "b": 0.0}, "a must be a number"),
        ({"method": "platt", "a": float("nan"), "b": 0.0}, "a must be finite"),
        ({"method": "platt", "a": 1.0, "b": float("inf")}, "b must be finite"),
        ({"method": "platt", "a": 1.0, "b": 10**400}, "b must be finite"),
        ({"method": "platt", "a": 0.0, "b": 0.0}, "order of scores"),
        ({"method": "platt", "a": -1.0, "b": 0.0}, "order of scores"),
    ],
)
def test_from_dict_refuses_malformed_calibrations(d, match):
    with pytest.raises(ValueError, match=match):
        Calibration.from_dict(d)


def test_fit_platt_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="both classes"):
        fit_platt(np.array([0.1, 0.9]), np.array([1, 1]))
    with pytest.raises(ValueError, match="labels"):
        fit_platt(np.array([0.1, 0.9]), np.array([0, 2]))
    with pytest.raises(ValueError, match="scores but"):
        fit_platt(np.array([0.1, 0.9]), np.array([0]))
    with pytest.raises(ValueError, match="finite"):
        fit_platt(np.array([0.1, np.nan]), np.array([0, 1]))
    # scores that rank the classes backwards would need a < 0: refused
    with pytest.raises(ValueError, match="reverse their order"):
        fit_platt(np.array([0.8, 0.9, 0.7, 0.1, 0.2, 0.3]), np.array([0, 0, 0, 1, 1, 1]))


@pytest.mark.parametrize(
    "score, uncertain_from, expected",
    [
        (0.80, 0.5, "generated"),
        (0.70, 0.5, "generated"),  # the threshold itself is generated
        (0.60, 0.5, "uncertain"),
        (0.50, 0.5, "uncertain"),  # the band's lower edge is uncertain
        (0.49, 0.5, "real"),
        (0.60, None, "real"),  # no band: the old two-way rule
        (0.70, None, "generated"),
        (0.70, 0.7, "generated"),  # an empty band
        (0.69, 0.7, "real"),
    ],
)
def test_verdict_for(score, uncertain_from, expected):
    assert verdict_for(score, 0.7, uncertain_from) == expected
