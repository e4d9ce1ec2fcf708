"""Retraining rounds without Kafka: labels are passed in, the feature log is a folder.

Only the last test really trains (Ray Train); the others stop at the split, or
replace `fit_head` with a stand-in that returns an untrained head so the rest
of the round (evaluate, register, promote) still runs.
"""

import json
import logging

import numpy as np
import pytest
import torch

import training.data.embeddings
import training.data.samples
import training.learning.job
from services.config import KafkaSettings
from services.errors import BrokerError
from tests.conftest import TINY
from training.data.embeddings import EmbeddedSet
from training.data.feature_log import FeatureLogWriter
from training.data.samples import Sample
from training.errors import RegistryError
from training.learning.config import TrainConfig
from training.learning.retrain import SKIP_EXIT, RetrainSettings, retrain_loop, retrain_once
from training.model.head import HeadConfig, MLPHead
from training.model.registry import Registry

ENCODER = "test:encoder"
DIM = 16


class MustNotTrain(AssertionError):
    pass


def no_training(*args, **kwargs):
    raise MustNotTrain("the round should have stopped before training")


@pytest.fixture
def without_training(monkeypatch):
    """Rounds that must stop before Ray Train: reaching it fails the test."""
    monkeypatch.setattr(training.learning.job, "fit_head", no_training)


def make_registry(root, *, encoder=ENCODER, dim=DIM, data=None) -> Registry:
    registry = Registry(root)
    torch.manual_seed(0)
    meta = registry.save(
        MLPHead(HeadConfig(input_dim=dim)),
        encoder=encoder,
        extra={"data": {"src": str(data)}} if data else {},
    )
    registry.promote(meta.version)
    return registry


def log_features(root, labels: dict[str, int], *, encoder=ENCODER, dim=DIM, seed=0) -> None:
    """Feature-log rows for `labels`' ids: generated ones shifted, so the classes differ."""
    rng = np.random.default_rng(seed)
    ids = sorted(labels)
    X = rng.normal(0, 1, (len(ids), dim)).astype(np.float32)
    X[:, 0] += np.array([labels[i] for i in ids]) * 2.0
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    writer = FeatureLogWriter(str(root), "0")
    writer.append(ids, [f"http://h/{i}.jpg" for i in ids], encoder, X, np.zeros(len(ids)), "v1")
    writer.flush()


def settings(tmp_path, **kw) -> RetrainSettings:
    defaults = dict(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),  # never contacted: labels are given
        labels_topic="dmguard.labels",
        registry=str(tmp_path / "registry"),
        feature_log=str(tmp_path / "feature-log"),
        cache=tmp_path / "cache",
        min_new_labels=1,
        train=TrainConfig(epochs=2, workers=1, batch_size=16),
    )
    return RetrainSettings(**{**defaults, **kw})


def labels_of(n_generated: int, n_real: int) -> dict[str, int]:
    return {**{f"g{i}": 1 for i in range(n_generated)}, **{f"r{i}": 0 for i in range(n_real)}}


def fake_base(monkeypatch, tmp_path, *, flat=True):
    """A 24-image base set for the current head, as the embedding cache would give it."""
    src = tmp_path / "base"
    src.mkdir()
    if flat:  # a real/ fake/ folder: one source per class
        sources = ["real"] * 12 + ["fake"] * 12
    else:
        sources = ["cam1"] * 6 + ["cam2"] * 6 + ["gen1"] * 6 + ["gen2"] * 6
    labels = [0] * 12 + [1] * 12
    samples = [
        Sample(f"{src}/{i}.png", y, s) for i, (y, s) in enumerate(zip(labels, sources, strict=True))
    ]
    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (24, DIM)).astype(np.float32)
    X[:, 0] += np.array(labels) * 2.0
    base = EmbeddedSet(samples=samples, X=X, hashes=[str(i) for i in range(24)])
    monkeypatch.setattr(training.data.samples, "load_samples", lambda path: samples)
    monkeypatch.setattr(training.data.embeddings, "embed_samples", lambda *a, **k: base)
    return src


class StandInFit:
    """Replaces Ray Train: records what it was given, returns an untrained head."""

    def __init__(self):
        self.calls = []

    def __call__(self, X, y, X_val, y_val, cfg, *, storage, weights=None):
        self.calls.append((y.copy(), y_val.copy()))
        torch.manual_seed(1)
        return MLPHead(HeadConfig(input_dim=X.shape[1])), []


# ------------------------------------------------------------------- rounds that skip
def test_only_one_class_labelled_skips_with_the_split_counts(tmp_path, without_training):
    make_registry(tmp_path / "registry")
    labels = labels_of(10, 0)
    log_features(tmp_path / "feature-log", labels)
    result = retrain_once(settings(tmp_path), labels=(labels, 0))
    assert result["trained"] is False
    assert "0 real images to train on" in result["reason"]
    assert "0 real images held out" in result["reason"]
    assert result["split"]["train"]["real"] == 0 and result["split"]["train"]["generated"] == 8
    assert result["feedback_per_class"] == {"generated": 10, "real": 0}
    json.dumps(result)  # one JSON line


def test_three_labels_skip_too_few_per_class(tmp_path, without_training):
    make_registry(tmp_path / "registry")
    labels = labels_of(2, 1)
    log_features(tmp_path / "feature-log", labels)
    result = retrain_once(settings(tmp_path), labels=(labels, 0))
    assert result["trained"] is False and result["reason"].startswith("too few labelled images")
    assert result["split"] == {
        "train": {"generated": 1, "real": 1},
        "held_out": {"generated": 1, "real": 0},
    }


def test_four_labels_of_each_class_are_still_too_few_for_two_per_side(tmp_path, without_training):
    make_registry(tmp_path / "registry")
    labels = labels_of(4, 4)  # 1 of each class held out: both classes present, but < 2
    log_features(tmp_path / "feature-log", labels)
    result = retrain_once(settings(tmp_path), labels=(labels, 0))
    assert result["trained"] is False and "at least 2 of each class" in result["reason"]


def test_fewer_new_labels_than_asked_for_skips(tmp_path, without_training):
    make_registry(tmp_path / "registry")
    labels = labels_of(2, 1)
    log_features(tmp_path / "feature-log", labels)
    result = retrain_once(settings(tmp_path, min_new_labels=50), labels=(labels, 0))
    assert result == {**result, "trained": False, "reason": "3 new labelled features < 50"}


def test_a_failure_while_training_is_reported_and_logged(tmp_path, monkeypatch, caplog):
    def ray_failed(*args, **kwargs):
        raise RuntimeError("a Ray Train worker died")

    monkeypatch.setattr(training.learning.job, "fit_head", ray_failed)
    make_registry(tmp_path / "registry")
    labels = labels_of(20, 20)
    log_features(tmp_path / "feature-log", labels)
    with caplog.at_level(logging.ERROR, logger="training.learning.retrain"):
        result = retrain_once(settings(tmp_path), labels=(labels, 0))
    assert result["trained"] is False and result["error"] == "RuntimeError"
    assert result["reason"] == "training failed: RuntimeError: a Ray Train worker died"
    # retrain's own: a Kafka client an earlier test left behind may log an ERROR here too
    [record] = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name == "training.learning.retrain"
    ]
    assert record.exc_info and record.exc_info[0] is RuntimeError  # the traceback is logged


def test_no_current_head_is_a_registry_error(tmp_path):
    with pytest.raises(RegistryError, match="dmguard train"):
        retrain_once(settings(tmp_path), labels=({}, 0))


# -------------------------------------------------- 40 labels on top of a 24-image base
@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_forty_labels_on_a_tiny_base_set_train(tmp_path, monkeypatch, seed, flat):
    fit = StandInFit()
    monkeypatch.setattr(training.learning.job, "fit_head", fit)
    src = fake_base(monkeypatch, tmp_path, flat=flat)
    registry = make_registry(tmp_path / "registry", data=src)
    labels = labels_of(20, 20)
    log_features(tmp_path / "feature-log", labels)
    s = settings(tmp_path, train=TrainConfig(epochs=2, workers=1, batch_size=16, seed=seed))
    result = retrain_once(s, labels=(labels, 0))
    assert result["trained"] is True, result
    assert result["version"] == "v2" and result["base"] == 24
    [(y_train, y_val)] = fit.calls
    assert len(y_train) + len(y_val) == 64
    assert set(y_train.tolist()) == set(y_val.tolist()) == {0, 1}
    meta = registry.meta("v2")
    assert meta.trained_on["stratified_sources"] == ["feedback"]
    assert "feedback" not in (meta.trained_on["held_out_sources"] or [])
    assert meta.trained_on["per_source"]["feedback"] == 32  # 8 of the 40 held out
    assert json.loads((registry.heads / "v2" / "feedback_ids.json").read_text()) == sorted(labels)


def test_one_class_of_feedback_on_a_base_set_trains(tmp_path, monkeypatch):
    fit = StandInFit()
    monkeypatch.setattr(training.learning.job, "fit_head", fit)
    src = fake_base(monkeypatch, tmp_path)
    make_registry(tmp_path / "registry", data=src)
    labels = labels_of(10, 0)
    log_features(tmp_path / "feature-log", labels)
    result = retrain_once(settings(tmp_path), labels=(labels, 0))
    assert result["trained"] is True, result


# ------------------------------------------------------------------------ the loop
def rounds(*outcomes):
    """A round function playing `outcomes` in turn (an exception is raised)."""
    played = iter(outcomes)

    def round_fn():
        outcome = next(played)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return round_fn


def test_every_goes_on_after_rounds_that_fail(caplog):
    emitted = []
    fn = rounds(
        RuntimeError("bug in round 1"),
        BrokerError("no Kafka broker answers at h:1"),
        {"trained": False, "reason": "too few"},
        {"trained": True, "version": "v2"},
    )
    with caplog.at_level(logging.ERROR, logger="training.learning.retrain"):
        code = retrain_loop(
            fn, emitted.append, every=0.0, stop=lambda: len(emitted) >= 4, sleep=lambda s: None
        )
    assert code == 0 and len(emitted) == 4
    assert emitted[0] == {
        "trained": False,
        "reason": "round failed: RuntimeError: bug in round 1",
        "error": "RuntimeError",
    }
    assert emitted[1] == {
        "trained": False,
        "reason": "no Kafka broker answers at h:1",
        "error": "BrokerError",
    }
    assert emitted[2:] == [
        {"trained": False, "reason": "too few"},
        {"trained": True, "version": "v2"},
    ]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].exc_info and errors[0].exc_info[0] is RuntimeError  # with its traceback
    assert len(errors) == 2
    for line in emitted:
        json.dumps(line)


def test_every_waits_between_rounds_and_stops_when_asked():
    emitted, slept = [], []
    code = retrain_loop(
        rounds({"trained": False}, {"trained": False}),
        emitted.append,
        every=1.2,
        stop=lambda: len(emitted) >= 2,
        sleep=slept.append,
    )
    assert code == 0 and len(emitted) == 2
    assert slept and max(slept) <= 0.5  # short naps: a stop request is seen within half a second


def test_once_exit_codes():
    skipped = {"trained": False, "reason": "too few"}
    trained = {"trained": True}
    assert retrain_loop(rounds(skipped), lambda r: None) == 0
    assert retrain_loop(rounds(skipped), lambda r: None, fail_on_skip=True) == SKIP_EXIT
    assert retrain_loop(rounds(trained), lambda r: None, fail_on_skip=True) == 0
    with pytest.raises(RegistryError):  # the CLI turns it into one line
        retrain_loop(rounds(RegistryError("no head")), lambda r: None)


# ---------------------------------------------------------------- the one real training
@pytest.mark.slow
@pytest.mark.ray
def test_forty_labels_on_a_24_image_head_really_train(tmp_path):
    from tests.images import encode, generated_like, real_like
    from training.model.encoders import load_encoder

    base = tmp_path / "base"
    for label, make in (("real", real_like), ("fake", generated_like)):
        (base / label).mkdir(parents=True)
        for i in range(12):
            (base / label / f"{i}.png").write_bytes(encode(make(i), "PNG"))
    dim = load_encoder(TINY, device="cpu", threads=1).dim
    registry = make_registry(tmp_path / "registry", encoder=TINY, dim=dim, data=base)
    labels = labels_of(20, 20)
    log_features(tmp_path / "feature-log", labels, encoder=TINY, dim=dim)
    result = retrain_once(settings(tmp_path), labels=(labels, 0))
    assert result["trained"] is True, result
    assert result["base"] == 24 and result["version"] == "v2"
    assert registry.meta("v2").trained_on["stratified_sources"] == ["feedback"]


# ------------------------------------------- labels the current head already learnt from
def test_labels_the_current_head_was_trained_on_are_not_new(tmp_path, monkeypatch):
    fit = StandInFit()
    monkeypatch.setattr(training.learning.job, "fit_head", fit)
    registry = make_registry(tmp_path / "registry")
    labels = labels_of(20, 20)
    log_features(tmp_path / "feature-log", labels)
    s = settings(tmp_path, tolerance=1.0)  # v2 is promoted whatever its AUC
    first = retrain_once(s, labels=(labels, 0))
    assert first["trained"] is True and first["version"] == "v2" and first["new"] == 40
    assert registry.current() == "v2"
    # the same labels again: v2 learnt from every one of them
    monkeypatch.setattr(training.learning.job, "fit_head", no_training)
    again = retrain_once(s, labels=(labels, 0))
    assert again["trained"] is False and again["new"] == 0 and again["labelled_features"] == 40
    assert again["reason"] == "0 new labelled features < 1"
    # one more label: new to v2, so a round trains again (on all 41)
    more = {**labels, "g_extra": 1}
    log_features(tmp_path / "feature-log", {"g_extra": 1}, seed=5)
    monkeypatch.setattr(training.learning.job, "fit_head", fit)
    third = retrain_once(s, labels=(more, 0))
    assert third["trained"] is True and third["new"] == 1 and third["version"] == "v3"
    assert len(fit.calls) == 2 and sum(map(len, fit.calls[1])) == 41
    # but not enough new ones when more are asked for
    refused = retrain_once(
        settings(tmp_path, tolerance=1.0, min_new_labels=2), labels=({**more, "r_extra": 0}, 0)
    )
    assert refused["trained"] is False and refused["new"] == 0  # r_extra was never logged
