"""The paper's claim, on a synthetic imbalanced problem with label noise (1:9 and 1:4):
the robust loss (CVaR + pairwise AUC, SAM) beats plain BCE on worst-class recall,
on the mean over five seeds, by a margin, without giving up held-out AUC.

The data model and the per-seed figures are in training/compare_losses.py and the
issue notes; there, with more data (n=2000), BCE stops collapsing and the
advantage goes, which is why the setting is named here rather than implied."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.compare_losses import Synthetic, compare, config

pytestmark = pytest.mark.slow
SEEDS = range(5)


@pytest.mark.parametrize("positive", [0.1, 0.2], ids=["1:9", "1:4"])
def test_robust_loss_keeps_the_minority_where_bce_loses_it(positive):
    torch.set_num_threads(2)
    data = Synthetic(n=1200, dim=512, shift=3.0, noise=0.03)
    runs = {
        loss: [compare(config(loss, seed, epochs=30), positive, seed, data) for seed in SEEDS]
        for loss in ("bce", "robust")
    }
    mean = {
        loss: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for loss, rs in runs.items()
    }
    print(f"\nminority {positive:.0%}: {mean}")
    assert mean["robust"]["worst_recall"] >= mean["bce"]["worst_recall"] + 0.1
    assert mean["robust"]["auc"] >= mean["bce"]["auc"] - 0.02
