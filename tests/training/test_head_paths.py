"""One head scores the same images identically on every path that feeds it:

* serving: `Detector.__call__` on pixels, captions as records carry them (None: none);
* `dmguard eval` and training: `embed_samples` (the embedding cache) + `head_input` + `score`,
  and the held-out scoring inside the training loop (`fit_epochs`);
* retraining: serving's embeddings through the feature log (no captions) and the current
  head's own data from the cache, both as `round_features` builds them.

The heads have shifted BatchNorm statistics and are handed over in train mode, so a path
that scored in train mode (batch statistics, dropout) or fed other caption columns
(missing zeros, an embedded empty caption) would give other scores.
"""

import json

import numpy as np
import pytest
import torch

import training.learning.train
from services.images import decode
from tests.conftest import TINY
from tests.images import encode, generated_like, real_like
from training.data.embeddings import embed_samples
from training.data.feature_log import FeatureLogWriter
from training.data.samples import load_samples
from training.evaluation.evaluate import roc_auc
from training.learning.config import TrainConfig
from training.learning.retrain import labelled_features, round_features
from training.learning.train import fit_epochs
from training.model.detector import Detector
from training.model.encoders import load_encoder
from training.model.head import HeadConfig, MLPHead, head_input, score
from training.model.registry import HeadMeta, Registry

TOL = 1e-6
CAPTIONS = ["a photo of a lake", None, "a render of a castle", "", None, "a cat"]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(TINY, device="cpu", threads=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six labelled images with captions on some, as files and a manifest; and their bytes."""
    root = tmp_path_factory.mktemp("paths")
    rows, blobs = [], []
    for i, caption in enumerate(CAPTIONS):
        label = "generated" if i % 2 else "real"
        blob = encode((generated_like if i % 2 else real_like)(i), "PNG")
        (root / f"{i}.png").write_bytes(blob)
        blobs.append(blob)
        rows.append({"path": f"{i}.png", "label": label, "text": caption, "source": "s"})
    manifest = root / "set.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    return root, manifest, blobs


def texts_of(samples):
    return [s.text for s in samples]


def make_head(registry: Registry, encoder, *, uses_text: bool, data: str, seed: int):
    """A random head whose BatchNorm statistics fit the scale of unit-norm embeddings (so
    its scores spread out) and differ from any batch's own (so train mode would show)."""
    torch.manual_seed(seed)
    head = MLPHead(HeadConfig(input_dim=encoder.dim + (encoder.text_dim if uses_text else 0)))
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.05)
                m.running_var.uniform_(0.005, 0.03)
    meta = registry.save(head, encoder=TINY, uses_text=uses_text, extra={"data": {"src": data}})
    head, meta = registry.load(meta.version)
    return head, meta


@pytest.mark.ray
@pytest.mark.parametrize("uses_text", [True, False], ids=["text-head", "image-head"])
def test_one_head_scores_the_same_on_every_path(tmp_path, encoder, dataset, uses_text):
    _, manifest, blobs = dataset
    samples = load_samples(manifest)
    assert texts_of(samples) == [c or None for c in CAPTIONS]
    registry = Registry(tmp_path / "registry")
    head, meta = make_head(registry, encoder, uses_text=uses_text, data=str(manifest), seed=3)
    assert meta.uses_text is uses_text

    # serving: pixels as the workers make them, the record's caption or None
    size = encoder.preprocess.image_size
    pixels = np.stack([encoder.preprocess(decode(b, target_size=size)) for b in blobs])
    detector = Detector(encoder, head, meta)
    embeddings, served = detector(pixels, texts_of(samples))
    _, served_bare = detector(pixels, [None] * len(blobs))  # records without `text`
    assert served.dtype == np.float32 and served.shape == (len(blobs),)
    if uses_text:  # the caption part matters, so a path that dropped it would show
        assert np.abs(served - served_bare).max() > 1e-3
    else:
        np.testing.assert_allclose(served, served_bare, atol=TOL, rtol=0)
    head.train()  # as a training loop leaves it: every path must score in eval mode

    # `dmguard eval` / `dmguard train`: the embedding cache, head_input, score
    cache = tmp_path / "cache"
    emb = embed_samples(
        samples,
        meta.encoder,
        cache_dir=cache / "embeddings",
        progress=False,
        with_text=meta.uses_text,
    )
    assert [s.location for s in emb.samples] == [s.location for s in samples]
    np.testing.assert_allclose(emb.X, embeddings, atol=1e-5, rtol=0)
    X = head_input(emb.X, emb.T, uses_text=meta.uses_text, input_dim=meta.input_dim)
    np.testing.assert_allclose(score(head, X), served, atol=TOL, rtol=0)
    assert head.training  # score leaves the head's mode alone

    # retraining: serving's embeddings through the feature log, no captions; then the
    # current head's own data, from the cache, with its captions
    writer = FeatureLogWriter(str(tmp_path / "feature-log"), "0")
    ids = [f"r{i}" for i in range(len(blobs))]
    writer.append(
        ids, [f"http://h/{i}" for i in ids], meta.encoder, embeddings, served, meta.version
    )
    writer.flush()
    labels = {rid: s.label for rid, s in zip(ids, samples, strict=True)}
    got_ids, X_fb, y_fb = labelled_features(str(tmp_path / "feature-log"), labels, meta.encoder)
    assert got_ids == ids
    X_round, y_round, sources, n_base = round_features(meta, X_fb, y_fb, cache)
    assert n_base == len(samples) and sources == ["s"] * n_base + ["feedback"] * len(ids)
    scores = score(head, X_round)
    np.testing.assert_allclose(scores[:n_base], served, atol=TOL, rtol=0)
    np.testing.assert_allclose(scores[n_base:], served_bare, atol=TOL, rtol=0)


def test_training_scores_its_held_out_rows_as_serving_does(encoder, dataset, monkeypatch):
    """The held-out AUC that early stopping and checkpoints follow comes from serving's scores."""
    _, manifest, blobs = dataset
    samples = load_samples(manifest)
    y = np.array([s.label for s in samples])
    size = encoder.preprocess.image_size
    pixels = np.stack([encoder.preprocess(decode(b, target_size=size)) for b in blobs])
    images = encoder.encode_images(pixels)
    captions = np.zeros((len(samples), encoder.text_dim), np.float32)
    has = [i for i, s in enumerate(samples) if s.text]
    captions[has] = encoder.encode_texts([samples[i].text for i in has])
    X = head_input(images, captions, uses_text=True, text_dim=encoder.text_dim)

    seen = []

    def recording_auc(labels, scores):
        seen.append(np.array(scores))
        return roc_auc(labels, scores)

    monkeypatch.setattr(training.learning.train, "roc_auc", recording_auc)
    cfg = TrainConfig(epochs=1, batch_size=4, text_dim=encoder.text_dim, rho=0.0)
    head, history = fit_epochs(X, y, X, y, cfg)
    [val_scores] = seen
    assert history[0]["val_auc"] == roc_auc(y, val_scores)
    meta = HeadMeta(version="t", encoder=TINY, input_dim=X.shape[1], uses_text=True, threshold=0.5)
    _, served = Detector(encoder, head, meta)(pixels, texts_of(samples))
    np.testing.assert_allclose(val_scores, served, atol=TOL, rtol=0)
