"""Input standardisation of the head (HeadConfig.standardize): the statistics come
from the training rows, travel with the head through the registry, and training
sets them. References are numpy's own mean and std."""

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from training.learning.config import TrainConfig
from training.learning.train import fit_epochs
from training.model.head import HeadConfig, MLPHead, score
from training.model.registry import Registry


def _rows(n: int = 64, d: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * rng.uniform(0.01, 5.0, d) + rng.normal(size=d) * 3).astype(
        np.float32
    )


def test_a_standardised_head_is_the_plain_head_on_standardised_rows():
    X = _rows()
    torch.manual_seed(0)
    head = MLPHead(HeadConfig(input_dim=6, blocks=0, standardize=True))
    head.fit_standardizer(X)
    plain = MLPHead(HeadConfig(input_dim=6, blocks=0))
    plain.net.load_state_dict(head.net.state_dict())
    Z = (X - X.mean(axis=0)) / X.std(axis=0)  # numpy's reference
    np.testing.assert_allclose(score(head, X), score(plain, Z), rtol=1e-4, atol=1e-5)


def test_statistics_travel_with_the_head_through_the_registry(tmp_path):
    X = _rows()
    head = MLPHead(HeadConfig(input_dim=6, blocks=0, standardize=True))
    head.fit_standardizer(X)
    reg = Registry(tmp_path)
    reg.save(head, encoder=TINY, threshold=0.5, metrics={})
    reg.promote("v1")
    loaded, _ = reg.load()
    assert loaded.config.standardize
    np.testing.assert_allclose(loaded.input_mean.numpy(), X.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score(loaded, X), score(head, X), rtol=1e-6)


def test_training_standardises_with_the_training_rows():
    X, X_val = _rows(seed=1), _rows(seed=2)
    y = (X[:, 0] > np.median(X[:, 0])).astype(np.float32)
    y_val = (X_val[:, 0] > np.median(X_val[:, 0])).astype(np.float32)
    cfg = TrainConfig(depth=0, standardize=True, epochs=2, batch_size=16, workers=1)
    head, _ = fit_epochs(X, y, X_val, y_val, cfg)
    np.testing.assert_allclose(head.input_mean.numpy(), X.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(1 / head.input_scale.numpy(), X.std(axis=0), rtol=1e-4)


def test_a_plain_head_refuses_statistics():
    with pytest.raises(ValueError, match="does not standardise"):
        MLPHead(HeadConfig(input_dim=6)).fit_standardizer(_rows())
