import numpy as np
import pytest

from training.learning.balance import clusters, reweigh
from training.learning.train import _epoch_order


def test_reweighing_makes_label_independent_of_group():
    # people: 40 generated, 10 real; animals: 5 generated, 45 real (the shortcut)
    y = np.array([1] * 40 + [0] * 10 + [1] * 5 + [0] * 45)
    g = ["people"] * 50 + ["animal"] * 50
    w = reweigh(y, g, max_ratio=100)
    gen_share = {
        k: w[(np.array(g) == k) & (y == 1)].sum() / w[np.array(g) == k].sum() for k in set(g)
    }
    overall = (w * y).sum() / w.sum()
    # reference: P(y=1) = 45/100 in every group once weighted
    assert gen_share["people"] == pytest.approx(0.45) and gen_share["animal"] == pytest.approx(0.45)
    assert overall == pytest.approx(0.45)
    assert w.mean() == pytest.approx(1.0)


def test_rare_cells_are_clipped():
    y = np.array([1] * 2 + [0] * 98 + [1] * 50 + [0] * 50)
    g = ["animal"] * 100 + ["people"] * 100
    w = reweigh(y, g, max_ratio=5)
    assert w.max() / np.median(w) <= 5 + 1e-9


def test_clusters_find_two_obvious_groups():
    rng = np.random.default_rng(0)
    a = rng.normal([5, 0, 0], 0.1, size=(30, 3))
    b = rng.normal([0, 5, 0], 0.1, size=(30, 3))
    names = clusters(np.vstack([a, b]), k=2)
    assert len(set(names[:30])) == 1 and len(set(names[30:])) == 1 and names[0] != names[30]


def test_epoch_order_follows_weights():
    w = np.array([0.0, 0.0, 1.0, 3.0])
    order = np.concatenate([_epoch_order(4, seed, w) for seed in range(500)])
    counts = np.bincount(order, minlength=4)
    assert counts[0] == counts[1] == 0
    assert counts[3] / counts[2] == pytest.approx(3.0, rel=0.15)
    assert sorted(_epoch_order(6, 1, None)) == list(range(6))  # no weights: a permutation
    with pytest.raises(ValueError):
        _epoch_order(3, 0, np.array([0.0, 0.0, 0.0]))
