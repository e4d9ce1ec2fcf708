import itertools

import numpy as np
import pytest

from tests.conftest import EVAL_FIELDS
from training.evaluation.evaluate import (
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


# ---------------------------------------- every field against an independent computation
def overlapping(seed: int, n_pos: int = 300, n_neg: int = 300):
    """Two overlapping Gaussians squashed into (0, 1), with ties; scores never sit on an
    ECE bin edge (k/15), so bin membership is unambiguous."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(np.int64)
    logits = np.r_[rng.normal(0.8, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    s = np.clip(np.round(1 / (1 + np.exp(-logits)), 2) + 0.003, 0.003, 0.993)
    perm = rng.permutation(len(y))
    return y[perm], s[perm]


def reference_tpr_at_fpr(y, s, target: float) -> float:
    """The highest TPR of any ROC point (score >= t) whose FPR is <= target."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(tpr[fpr <= target + 1e-12].max())


def reference_ece(y, s, bins: int = 15) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        in_bin = (s >= lo) & ((s < hi) if b < bins - 1 else (s <= 1.0))
        if in_bin.any():
            total += in_bin.sum() / len(s) * abs(s[in_bin].mean() - y[in_bin].mean())
    return total


def reference_metrics(y, s, threshold: float) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = np.asarray(y), np.asarray(s, np.float64)
    both = 0 < y.sum() < len(y)
    if both:
        tpr1, tpr5 = reference_tpr_at_fpr(y, s, 0.01), reference_tpr_at_fpr(y, s, 0.05)
    elif y.any():  # no negatives: evaluate falls back to a 0.5 threshold (threshold_for_fpr)
        tpr1 = tpr5 = float(np.mean(s >= 0.5))
    else:
        tpr1 = tpr5 = None
    return {
        "n_generated": int(y.sum()),
        "n_real": int((1 - y).sum()),
        "auc": float(roc_auc_score(y, s)) if both else None,
        "ap": float(average_precision_score(y, s)) if both else (1.0 if y.any() else None),
        "accuracy": float(np.mean((s >= threshold).astype(int) == y)),
        "tpr_at_1fpr": tpr1,
        "tpr_at_5fpr": tpr5,
        "fpr_at_threshold": float(np.mean(s[y == 0] >= threshold)) if (y == 0).any() else None,
        "ece": reference_ece(y, s),
    }


def assert_matches(out: dict, ref: dict, tolerance: dict | None = None) -> None:
    for key, want in ref.items():
        if want is None:
            assert out[key] is None, key
        else:
            assert out[key] == pytest.approx(want, abs=(tolerance or {}).get(key, 1e-9)), key


@pytest.mark.parametrize("seed", range(4))
def test_every_field_matches_an_independent_computation_on_overlapping_scores(seed):
    y, s = overlapping(seed)
    auc = roc_auc(y, s)
    assert 0.6 < auc < 0.85  # really overlapping: AUC 1.0 would check nothing
    ref = reference_metrics(y, s, 0.55)
    # the rates at 1% and 5% FPR differ here, so a swapped or wrong target shows
    assert 0 < ref["tpr_at_1fpr"] < ref["tpr_at_5fpr"] < 1
    assert 0.01 < ref["ece"] and 0 < ref["accuracy"] < 1
    out = evaluate(y, s, 0.55)
    assert_matches(out, ref)
    assert out["threshold"] == 0.55


def test_average_precision_matches_scikit_learn_without_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)
    y = np.r_[np.ones(200), np.zeros(300)].astype(np.int64)
    logits = np.r_[rng.normal(0.7, 1, 200), rng.normal(0, 1, 300)]
    s = 1 / (1 + np.exp(-logits))  # continuous: no ties
    assert len(np.unique(s)) == len(s)
    out = evaluate(y, s, 0.5)
    assert 0.5 < out["ap"] < 0.95
    assert out["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert_matches(out, reference_metrics(y, s, 0.5))  # exact AP too, without ties


def test_average_precision_with_ties_does_not_depend_on_row_order():
    from sklearn.metrics import average_precision_score

    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.5, 0.5, 0.9, 0.2, 0.5, 0.1])
    ref = average_precision_score(y, s)
    flipped = np.r_[[1, 0], [2, 3, 4, 5]]  # swap the first tied pair
    assert average_precision(y, s) == pytest.approx(ref)
    assert average_precision(y[flipped], s[flipped]) == pytest.approx(ref)


def test_per_source_metrics_match_an_independent_computation():
    y, s = overlapping(11, n_pos=240, n_neg=240)
    rng = np.random.default_rng(3)
    sources = np.array(["cam", "gen", "mixed"])[rng.integers(0, 3, len(y))]
    sources[(sources != "mixed") & (y == 1)] = "gen"  # cam: real only, gen: generated only
    sources[(sources == "gen") & (y == 0)] = "cam"
    out = evaluate(y, s, 0.45, sources=sources.tolist())
    assert set(out["per_source"]) == {"cam", "gen", "mixed"}
    assert_matches(out, reference_metrics(y, s, 0.45))
    for name, got in out["per_source"].items():
        mask = sources == name
        assert_matches(got, reference_metrics(y[mask], s[mask], 0.45))
    assert out["per_source"]["cam"]["auc"] is None and out["per_source"]["gen"]["n_real"] == 0
    assert out["per_source"]["mixed"]["auc"] is not None


def _lowest_passing_cut(y, s, groupings, target, min_real):
    """Brute force: the lowest candidate threshold (each score and one ulp above it) whose
    FPR is within `target` overall and in every grouping's group with >= min_real reals."""
    y = np.asarray(y, bool)
    candidates = sorted(set(s.tolist()) | {float(np.nextafter(v, np.inf)) for v in s})
    for t in candidates:
        sets = [np.ones(len(y), bool)] + [
            np.asarray(g) == name
            for g in groupings
            for name in set(np.asarray(g)[~y].tolist())
            if ((np.asarray(g) == name) & ~y).sum() >= min_real
        ]
        if all((s[m & ~y] >= t).mean() <= target for m in sets):
            return t
    return candidates[-1]


@pytest.mark.parametrize("seed", range(4))
def test_the_threshold_holds_the_worst_source_and_group_to_the_target(seed):
    """One real collection scores high (a studio's portraits): pooled, and within its
    content group, it passes; alone it does not. The threshold is the lowest that holds it
    and every content group."""
    from training.evaluation.evaluate import threshold_for_group_fpr

    rng = np.random.default_rng(seed)
    s = np.r_[rng.uniform(0, 0.4, 350), rng.uniform(0.3, 0.9, 12), rng.uniform(0.5, 1, 80)]
    y = np.r_[np.zeros(362), np.ones(80)].astype(bool)
    studio = slice(350, 362)
    sources = ["snapshots"] * 300 + ["zoo"] * 50 + ["studio"] * 12 + ["gen"] * 80
    groups = ["people"] * 300 + ["animal"] * 50 + ["people"] * 92
    by_group = threshold_for_group_fpr(y, s, groups, 0.05)
    assert (s[studio] >= by_group).mean() > 0.05  # what the source rule is for
    cut = threshold_for_group_fpr(y, s, groups, 0.05, sources=sources)
    assert cut == _lowest_passing_cut(y, s, [groups, sources], 0.05, 5)
    assert (s[studio] >= cut).mean() <= 0.05
    # a source with fewer real images than min_real is not held on its own
    few = threshold_for_group_fpr(y, s, None, 0.05, sources=sources, min_real=13)
    assert few == _lowest_passing_cut(y, s, [], 0.05, 13) == threshold_for_fpr(y, s, 0.05)


def test_operating_point_band_starts_at_the_pooled_point_below_the_worst_case_cut():
    from training.evaluation.evaluate import operating_point

    rng = np.random.default_rng(3)
    s = np.r_[rng.uniform(0, 0.4, 150), rng.uniform(0.3, 0.9, 12), rng.uniform(0.5, 1, 80)]
    y = np.r_[np.zeros(162), np.ones(80)]
    sources = ["a"] * 150 + ["studio"] * 12 + ["gen"] * 80
    cut, band = operating_point(y, s, target_fpr=0.05, uncertain_fpr=0.2, sources=sources)
    reals = np.sort(s[:162])[::-1]
    # the band edge: just above the real score that would make the pooled FPR exceed 20%
    assert band == np.nextafter(reals[int(0.2 * 162)], np.inf) and band < cut
    assert (s[:162] >= band).mean() <= 0.2 < (s[:162] >= reals[int(0.2 * 162)]).mean()
    _, none = operating_point(y, s, target_fpr=0.05, uncertain_fpr=0.05, sources=sources)
    assert none is None


def test_verdict_shares_count_each_verdict_by_the_serving_rule():
    from training.evaluation.evaluate import verdict_shares
    from training.model.calibration import verdict_for

    rng = np.random.default_rng(5)
    s = rng.uniform(0, 1, 200)
    cut = rng.choice([0.6, 0.7], 200)
    band = np.where(rng.random(200) < 0.3, np.nan, cut - 0.2)  # some rows without a band
    shares = verdict_shares(s, cut, band)
    expected = [
        verdict_for(float(v), float(t), None if np.isnan(b) else float(b))
        for v, t, b in zip(s, cut, band, strict=True)
    ]
    for verdict in ("real", "uncertain", "generated"):
        assert shares[verdict] == pytest.approx(expected.count(verdict) / 200)
    assert verdict_shares(s, 0.5, None)["uncertain"] == 0.0
    assert verdict_shares(np.zeros(0), 0.5, None)["real"] is None
