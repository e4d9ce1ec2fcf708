import copy
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import EVAL_FIELDS, TINY
from tests.images import encode, generated_like, real_like
from training.data.embeddings import embed_samples
from training.data.samples import load_samples
from training.learning.promotion import decide_promotion
from training.model.head import HeadConfig, MLPHead
from training.model.registry import Registry


def synthetic_folder(root, per_source: int = 12):
    """Two real sources (smooth, bluish) and two generated ones (noisy, reddish)."""
    for label, sources in (("real", ("cam1", "cam2")), ("fake", ("gen1", "gen2"))):
        for k, src in enumerate(sources):
            folder = root / label / src
            folder.mkdir(parents=True)
            for i in range(per_source):
                make = real_like if label == "real" else generated_like
                (folder / f"{i}.png").write_bytes(encode(make(k * 1000 + i), "PNG"))
    return root


@pytest.mark.ray
def test_embeddings_are_cached_by_content_and_bad_images_reported(tmp_path):
    data = synthetic_folder(tmp_path / "data", per_source=3)
    (data / "fake" / "gen1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    samples = load_samples(data)
    first = embed_samples(samples, TINY, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert first.computed == 13 and len(first.samples) == 12
    assert [loc.endswith("broken.png") for loc, _ in first.bad] == [True]
    second = embed_samples(samples, TINY, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert second.computed == 1  # only the broken one is tried again; the 12 come from Parquet
    assert np.array_equal(first.X, second.X)
    assert len(list((tmp_path / "cache").rglob("part-*.parquet"))) == 1


def test_promotion_refuses_a_worse_head_and_accepts_a_better_one(tmp_path):
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(100), np.zeros(100)].astype(np.int64)
    X = rng.normal(0, 1, (200, 8)).astype(np.float32)
    X[:, 0] += y * 2.0  # the signal sits in feature 0

    def head_weighting(w0: float) -> MLPHead:
        head = MLPHead(HeadConfig(input_dim=8, blocks=0))  # a linear head: logit = w·x
        with torch.no_grad():
            head.net[0].weight.zero_()
            head.net[0].weight[0, 0] = w0
            head.net[0].bias.zero_()
        return head

    reg = Registry(tmp_path)
    good = reg.save(head_weighting(1.0), encoder=TINY)
    reg.promote(good.version)
    worse = decide_promotion(reg, new_auc=0.6, encoder=TINY, X_val=X, y_val=y, tolerance=0.0)
    assert (
        worse["promoted"] is False
        and worse["current_auc"] > 0.9
        and worse["current_version"] == good.version
    )
    better = decide_promotion(reg, new_auc=0.999, encoder=TINY, X_val=X, y_val=y, tolerance=0.0)
    assert better["promoted"] is True
    within = decide_promotion(
        reg, new_auc=worse["current_auc"] - 0.01, encoder=TINY, X_val=X, y_val=y, tolerance=0.02
    )
    assert within["promoted"] is True
    other = decide_promotion(
        reg, new_auc=0.5, encoder="onnx:/x.onnx", X_val=X, y_val=y, tolerance=0.0
    )
    assert other["promoted"] is True and "other features" in other["reason"]
    # same encoder and width, other features: the current head cannot score these rows
    blocks = decide_promotion(
        reg, new_auc=0.5, encoder=TINY, X_val=X, y_val=y, tolerance=0.0, features="blocks:1"
    )
    assert blocks["promoted"] is True and blocks["current_auc"] is None


@pytest.mark.slow
@pytest.mark.ray
def test_train_with_ray_train_registers_and_eval_reports_every_field(tmp_path, record_property):
    data = synthetic_folder(tmp_path / "data")
    reg = tmp_path / "registry"
    cmd = [sys.executable, "-m", "dmguard"]
    t0 = time.monotonic()
    done = subprocess.run(
        [
            *cmd,
            "train",
            "--data",
            str(data),
            "--encoder",
            TINY,
            "--epochs",
            "4",
            "--workers",
            "2",
            "--registry",
            str(reg),
            "--cache",
            str(tmp_path / "cache"),
            "--batch-size",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    record_property("train_seconds", round(time.monotonic() - t0, 1))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["version"] == "v1" and summary["promoted"] is True
    registry = Registry(reg)
    meta = registry.meta("v1")
    assert registry.current() == "v1" and meta.encoder == TINY
    assert meta.trained_on["split"] == "by_source" and len(meta.trained_on["held_out_sources"]) == 2
    assert meta.extra["promotion"]["reason"] == "no current head"
    assert 1 <= len(meta.extra["history"]) <= 4
    assert meta.metrics["fpr_at_threshold"] <= 0.05

    out = subprocess.run(
        [
            *cmd,
            "eval",
            "--data",
            str(data),
            "--registry",
            str(reg),
            "--cache",
            str(tmp_path / "cache"),
            "--perturb",
            "jpeg:75,resize:0.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads(out.stdout)
    for key in (*EVAL_FIELDS, "per_source"):
        assert key in metrics, key
    assert metrics["n_generated"] == 24 and metrics["n_real"] == 24
    assert set(metrics["per_source"]) == {"cam1", "cam2", "gen1", "gen2"}
    assert set(metrics["perturbations"]) == {"jpeg:75", "resize:0.5"}


# ------------------------------------------------------------------ early stopping
def small_problem(seed: int = 0, n: int = 64, dim: int = 8):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    X = rng.normal(0, 1, (n, dim)).astype(np.float32)
    X[:, 0] += y * 1.5
    return X, y


def scripted_auc(values):
    """An `agree` hook that replaces epoch k's held-out AUC by values[k]."""
    played = iter(values)
    return lambda auc: next(played)


@pytest.mark.parametrize(
    ("aucs", "patience", "best_epoch"),
    [
        ([0.6, 0.7, 0.65, 0.7, 0.69] + [0.5] * 20, 3, 1),  # equal to the best is no gain
        ([0.6, 0.7, 0.65, 0.8, 0.79, 0.8, 0.5] + [0.5] * 20, 3, 3),  # a late gain resets it
        ([0.9] + [0.5] * 20, 1, 0),
        ([0.5, 0.6, 0.7, 0.7 + 5e-7, 0.7, 0.7, 0.99] + [0.5] * 20, 3, 2),  # <= 1e-6 is no gain
    ],
)
def test_training_stops_exactly_patience_epochs_after_the_best(aucs, patience, best_epoch):
    from training.learning.config import TrainConfig
    from training.learning.train import fit_epochs

    X, y = small_problem()
    cfg = TrainConfig(epochs=20, patience=patience, batch_size=16, rho=0.0)
    states = {}

    def on_epoch(record, state):
        states[record["epoch"]] = copy.deepcopy(state()["head"])

    head, history = fit_epochs(X, y, X, y, cfg, agree=scripted_auc(aucs), on_epoch=on_epoch)
    assert [r["epoch"] for r in history] == list(range(best_epoch + patience + 1))
    assert [r["val_auc"] for r in history] == aucs[: best_epoch + patience + 1]
    # and the head returned is the best epoch's, not the last one's
    for key, value in head.state_dict().items():
        assert torch.equal(value, states[best_epoch][key]), key


def test_training_that_keeps_improving_runs_every_epoch():
    from training.learning.config import TrainConfig
    from training.learning.train import fit_epochs

    X, y = small_problem()
    cfg = TrainConfig(epochs=7, patience=1, batch_size=16, rho=0.0)
    aucs = [0.5 + 0.01 * k for k in range(7)]
    head, history = fit_epochs(X, y, X, y, cfg, agree=scripted_auc(aucs))
    assert [r["epoch"] for r in history] == list(range(7))


def test_a_held_out_side_with_nothing_to_learn_stops_after_patience_epochs():
    """No scripted AUC: held-out images that are all the same score the same, so their
    AUC is 0.5 every epoch and never improves on the first."""
    from training.learning.config import TrainConfig
    from training.learning.train import fit_epochs

    X, y = small_problem()
    X_val = np.repeat(X[:1], 20, axis=0)
    y_val = (np.arange(20) % 2).astype(np.int64)
    cfg = TrainConfig(epochs=15, patience=2, batch_size=16, rho=0.0)
    _, history = fit_epochs(X, y, X_val, y_val, cfg)
    assert [r["val_auc"] for r in history] == [0.5, 0.5, 0.5]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_train_stops_early_too(tmp_path):
    from training.learning.config import TrainConfig
    from training.learning.train import fit_head

    X, y = small_problem()
    X_val = np.repeat(X[:1], 20, axis=0)
    y_val = (np.arange(20) % 2).astype(np.int64)
    cfg = TrainConfig(epochs=12, patience=2, batch_size=16, workers=2, rho=0.0)
    _, history = fit_head(X, y, X_val, y_val, cfg, storage=tmp_path / "ray")
    assert [r["epoch"] for r in history] == [0, 1, 2]


# ------------------------------------------------------- split determinism for --seed
@pytest.mark.parametrize("by_source", [True, False])
def test_the_split_is_a_function_of_the_seed(by_source):
    from training.learning.split import split_indices

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    if by_source:
        sources = [f"{'gen' if y else 'cam'}{rng.integers(0, 6)}" for y in labels]
    else:
        sources = ["gen" if y else "cam" for y in labels]  # one source per class: stratified
    splits = {}
    for seed in range(30):
        train, val, how = split_indices(labels, sources, seed=seed)
        assert how == ("by_source" if by_source else "stratified")
        again = split_indices(labels, sources, seed=seed)
        assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
        splits[seed] = tuple(val.tolist())
    # different seeds give different splits: not one fixed split for every seed
    assert len(set(splits.values())) >= (10 if by_source else 29)


def test_operating_point_holds_every_content_group_to_the_target_fpr():
    """Real people score higher than real animals: a threshold over all real images passes
    the target overall and fails it for people; the per-group rule holds both."""
    from training.evaluation.evaluate import threshold_for_fpr
    from training.learning.config import TrainConfig
    from training.learning.job import operating_point

    rng = np.random.default_rng(0)
    real_animals, real_people = rng.uniform(0.0, 0.4, 400), rng.uniform(0.2, 0.8, 40)
    generated = rng.uniform(0.5, 1.0, 200)
    scores = np.concatenate([real_animals, real_people, generated])
    y = np.array([0] * 440 + [1] * 200)
    groups = ["animal"] * 400 + ["people"] * 40 + ["people"] * 200
    cfg = TrainConfig(target_fpr=0.05, uncertain_fpr=0.2)
    plain, _, _ = operating_point(y, scores, cfg)
    assert plain == threshold_for_fpr(y, scores, 0.05)
    assert (real_people >= plain).mean() > 0.05  # the failure the group rule exists for
    cut, band, calibration = operating_point(y, scores, cfg, groups)
    assert (real_people >= cut).mean() <= 0.05 and (real_animals >= cut).mean() <= 0.05
    assert cut == max(plain, threshold_for_fpr(y[400:], scores[400:], 0.05))
    # the band: where 20% of the real images would pass, below the threshold
    assert band == threshold_for_fpr(y, scores, 0.2) and band < cut
    assert calibration is not None and calibration.a > 0
    # one class only: no calibration, and no crash
    _, _, none = operating_point(np.zeros(10, int), np.linspace(0, 1, 10), cfg)
    assert none is None


def test_training_rows_take_copies_of_training_originals_only_and_balance_by_content():
    from training.learning.config import TrainConfig
    from training.learning.job import training_rows

    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 0, 1, 1, 0, 1])
    train_idx = np.array([0, 1, 2, 3])  # rows 4 and 5 are held out
    aug_X = X * 10
    aug_of = np.arange(6)
    groups = ["people", "animal", "people", "people", "animal", "people"]
    Xf, yf, w, how = training_rows(X, y, train_idx, TrainConfig(), groups, (aug_X, aug_of))
    assert Xf.tolist() == np.concatenate([X[:4], aug_X[:4]]).tolist()  # no copy of 4 or 5
    assert yf.tolist() == [0, 0, 1, 1, 0, 0, 1, 1] and how == "content"
    from training.learning.balance import reweigh

    rows = [0, 1, 2, 3, 0, 1, 2, 3]
    np.testing.assert_allclose(w, reweigh(yf, [groups[i] for i in rows]))
    _, _, none, how = training_rows(X, y, train_idx, TrainConfig(balance=False), groups, None)
    assert none is None and how is None
    _, _, w2, how = training_rows(X, y, train_idx, TrainConfig(), None, None)
    assert how == "clusters" and len(w2) == 4
