"""Leave-source-out evaluation: no head ever scores a source it trained on, and a head
that memorises sources gains nothing from it."""

import numpy as np
import pytest

from training.evaluation.benchmark import (
    BenchmarkData,
    calibration_sources,
    leave_source_out,
    source_folds,
)


def _data(seed=0, per_source=20, sources=10):
    """Sources of both classes whose only shared signal is feature 0 (the trace); feature
    1 identifies the source, at a random place unrelated to its label (what a memoriser
    would learn)."""
    rng = np.random.default_rng(seed)
    X, y, src, content = [], [], [], []
    for label in (0, 1):
        for s in range(sources):
            name = f"{'gen' if label else 'real'}-{s}"
            place = rng.uniform(0, 100)
            for _ in range(per_source):
                X.append([label + rng.normal(0, 0.4), rng.normal(place, 0.1)])
                y.append(label)
                src.append(name)
                content.append("people" if s % 2 else "animal")
    return BenchmarkData(np.array(X), np.array(y), src, content)


def test_folds_keep_sources_whole_and_spread_both_classes():
    data = _data()
    fold_of = source_folds(data.labels, data.sources, 3, seed=0)
    assert set(fold_of) == set(data.sources)
    for f in range(3):
        names = [s for s, k in fold_of.items() if k == f]
        assert any(n.startswith("gen") for n in names) and any(n.startswith("real") for n in names)


def test_no_head_scores_a_source_it_trained_or_calibrated_on():
    data = _data()
    seen: list[tuple[set, set]] = []

    def fit(X, y, X_val, y_val, w):
        train_ids = {tuple(r) for r in np.round(X, 6)}
        cal_ids = {tuple(r) for r in np.round(X_val, 6)}
        assert not train_ids & cal_ids
        seen.append((train_ids, cal_ids))
        return lambda Z: Z[:, 0]

    row_source = {tuple(r): s for r, s in zip(np.round(data.X, 6), data.sources, strict=True)}
    leave_source_out(data, fit, folds=3, seeds=(0,))
    fold_of = source_folds(data.labels, data.sources, 3, seed=0)
    assert len(seen) == 3
    for f, (train_ids, cal_ids) in enumerate(seen):
        used = {row_source[r] for r in train_ids | cal_ids}
        assert not {s for s, k in fold_of.items() if k == f} & used


def test_adapting_hands_the_fit_unlabelled_rows_of_exactly_the_held_out_and_calibration_sides():
    """With adapt, fit gets the features of every row it does not train on (the held-back
    calibration rows and the held-out fold), never their labels; without, nothing."""
    data = _data()
    calls: list[tuple[set, set, set]] = []

    def fit(X, y, X_val, y_val, w, unlabelled=None):
        ids = lambda A: {tuple(r) for r in np.round(A, 6)}  # noqa: E731
        calls.append((ids(X), ids(X_val), ids(unlabelled)))
        return lambda Z: Z[:, 0]

    leave_source_out(data, fit, folds=3, seeds=(0,), adapt=True)
    every = {tuple(r) for r in np.round(data.X, 6)}
    fold_of = source_folds(data.labels, data.sources, 3, seed=0)
    row_source = {tuple(r): s for r, s in zip(np.round(data.X, 6), data.sources, strict=True)}
    assert len(calls) == 3
    for f, (train, cal, unlabelled) in enumerate(calls):
        held = {r for r in every if fold_of[row_source[r]] == f}
        assert unlabelled == cal | held and not unlabelled & train
    plain: list = []
    leave_source_out(
        data, lambda *a, **k: plain.append(k) or (lambda Z: Z[:, 0]), folds=3, seeds=(0,)
    )
    assert plain == [{}, {}, {}]


def test_a_source_memoriser_is_found_out():
    """1-nearest-neighbour on both features memorises sources: perfect on a random split,
    chance-like when whole sources are held out. A head on the trace alone stays good."""
    data = _data()

    def nearest(cols):
        def fit(X, y, X_val, y_val, w):
            return lambda Z: np.array(
                [y[np.argmin(((X[:, cols] - z[cols]) ** 2).sum(1))] for z in Z], float
            )

        return fit

    memoriser = leave_source_out(data, nearest([0, 1]), folds=3, seeds=(0,))
    trace = leave_source_out(data, lambda X, y, Xv, yv, w: lambda Z: Z[:, 0], folds=3, seeds=(0,))
    assert memoriser["overall"]["auc"] < 0.75
    assert trace["overall"]["auc"] > 0.9
    assert set(trace["per_content"]) == {"people", "animal"}
    assert trace["per_source"]["gen-0"]["n"] == 20


def test_the_threshold_comes_from_held_back_real_sources():
    """With scores = feature 0, the threshold is set at 5% FPR on calibration sources; the
    held-out FPR it yields is the fraction of held-out real rows above their fold's cut."""
    data = _data(per_source=200)
    out = leave_source_out(data, lambda X, y, Xv, yv, w: lambda Z: Z[:, 0], folds=3, seeds=(0,))
    assert out["overall"]["fpr_at_threshold"] == pytest.approx(0.05, abs=0.03)


def test_calibration_sources_never_take_a_whole_class():
    y = np.array([0] * 5 + [1] * 5)
    src = ["r"] * 5 + ["g"] * 5
    assert calibration_sources(y, src, 0.25, seed=0) == set()
    y = np.array([0, 0, 1, 1, 1])
    src = ["r1", "r2", "g1", "g2", "g3"]
    held = calibration_sources(y, src, 0.5, seed=0)
    assert {"r1", "r2"} - held and {"g1", "g2", "g3"} - held and held


def test_each_block_names_its_worst_real_collection_and_the_verdict_mix():
    """The worst held-out real collection is the one the per-source figures call
    "generated" most often (among those with enough images), and the verdict shares of
    the real images add up, their "generated" share being the FPR at the threshold
    (every figure is rounded to 4 decimals)."""
    data = _data(per_source=30)
    # one real collection that scores like the generated ones: the threshold's worst case
    hot = [i for i, s in enumerate(data.sources) if s == "real-3"]
    data.X[hot, 0] += 0.9
    out = leave_source_out(data, lambda X, y, Xv, yv, w: lambda Z: Z[:, 0], folds=3, seeds=(0,))
    rates = {
        s: v["called_generated"]
        for s, v in out["per_source"].items()
        if v["label"] == 0 and v["n"] >= 5
    }
    worst = max(rates, key=rates.get)
    assert worst == "real-3" and rates[worst] > 0.3
    block = out["overall"]
    assert block["worst_source"] == f"real-3 ({out['per_source']['real-3']['n']})"
    assert block["worst_source_fpr"] == pytest.approx(rates[worst], abs=1e-3)
    shares = [block[f"real_as_{v}"] for v in ("real", "uncertain", "generated")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    assert block["real_as_generated"] == pytest.approx(block["fpr_at_threshold"], abs=1e-3)
    assert block["real_as_uncertain"] > 0  # the band exists: scores between the two cuts
    gen = [block[f"gen_as_{v}"] for v in ("real", "uncertain", "generated")]
    assert sum(gen) == pytest.approx(1.0, abs=1e-3)
    assert block["gen_as_generated"] == pytest.approx(block["tpr_at_threshold"], abs=1e-3)
