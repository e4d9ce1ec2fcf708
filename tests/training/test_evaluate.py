import itertools

import numpy as np
import pytest

from tests.conftest import EVAL_FIELDS
from training.evaluate import (
    average_precision,
    evaluate,
    expected_calibration_error,
    roc_auc,
    threshold_for_fpr,
    tpr_at_fpr,
)


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_the_pairwise_win_rate(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(40) > 0.6
    s = np.round(rng.random(40), 1)  # ties on purpose
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(s[y], s[~y])]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs))


def test_average_precision_by_hand():
    y = np.array([1, 0, 1, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    # precision at the three positives: 1/1, 2/3, 3/5
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_threshold_meets_the_target_fpr():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(500), np.zeros(500)].astype(bool)
    s = np.r_[rng.normal(1, 1, 500), rng.normal(0, 1, 500)]
    for fpr in (0.01, 0.05, 0.2):
        t = threshold_for_fpr(y, s, fpr)
        assert (s[~y] >= t).mean() <= fpr
        assert (
            s[~y] >= np.nextafter(t, -np.inf) - 1e-6
        ).mean() > fpr - 0.01  # not needlessly strict
    assert tpr_at_fpr(y, s, 0.05) == pytest.approx((s[y] >= threshold_for_fpr(y, s, 0.05)).mean())


def test_calibration_error():
    y = np.array([1, 1, 0, 0])
    assert expected_calibration_error(y, np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(1.0)


def test_evaluate_has_every_field_and_per_source():
    y = np.array([1, 1, 0, 0, 1, 0])
    s = np.array([0.9, 0.6, 0.2, 0.4, 0.8, 0.1])
    out = evaluate(y, s, 0.5, sources=["a", "a", "a", "b", "b", "b"])
    for key in (*EVAL_FIELDS, "threshold"):
        assert key in out
    assert out["auc"] == 1.0 and out["accuracy"] == 1.0
    assert set(out["per_source"]) == {"a", "b"} and out["per_source"]["a"]["n_generated"] == 2


def test_float32_scores_respect_a_threshold_one_ulp_above_a_negative():
    y = np.array([0, 0, 1])
    s = np.array([0.7, 0.3, 0.9], dtype=np.float32)
    t = threshold_for_fpr(y, s, 0.0)
    assert evaluate(y, s, t)["fpr_at_threshold"] == 0.0
