"""split_indices with rows split stratified among themselves (retraining's feedback)."""

import numpy as np
import pytest

from training.learning.split import split_indices


def base_and_feedback(n_feedback: int = 40, *, flat: bool = True):
    """A 24-image base (one source per class when `flat`, as a real/ fake/ folder gives,
    else two per class) and `n_feedback` alternating feedback labels."""
    if flat:
        base_sources = ["real"] * 12 + ["fake"] * 12
    else:
        base_sources = ["cam1"] * 6 + ["cam2"] * 6 + ["gen1"] * 6 + ["gen2"] * 6
    labels = np.r_[np.zeros(12), np.ones(12), np.arange(n_feedback) % 2].astype(np.int64)
    return labels, base_sources + ["feedback"] * n_feedback


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_feedback_lands_on_both_sides_with_both_classes(seed, flat):
    labels, sources = base_and_feedback(flat=flat)
    train, val, _ = split_indices(labels, sources, seed=seed, stratify_sources={"feedback"})
    assert sorted(np.r_[train, val].tolist()) == list(range(len(labels)))
    fb = np.array(sources) == "feedback"
    for side in (train, val):
        assert set(labels[side].tolist()) == {0, 1}
        assert set(labels[side][fb[side]].tolist()) == {0, 1}  # feedback of each class each side
    n_val_fb = fb[val].sum()
    assert 6 <= n_val_fb <= 10  # about a fifth of the 40


def test_the_rest_keeps_its_whole_source_split():
    labels, sources = base_and_feedback(flat=False)
    train, val, how = split_indices(labels, sources, seed=3, stratify_sources={"feedback"})
    alone, alone_val, alone_how = split_indices(labels[:24], sources[:24], seed=3)
    assert how == alone_how == "by_source"
    assert val[val < 24].tolist() == alone_val.tolist()  # feedback rows do not move the base split
    base_val_sources = {sources[i] for i in val if i < 24}
    base_train_sources = {sources[i] for i in train if i < 24}
    assert not base_val_sources & base_train_sources


def test_deterministic_for_a_seed():
    labels, sources = base_and_feedback()
    a = split_indices(labels, sources, seed=7, stratify_sources=["feedback"])
    b = split_indices(labels, sources, seed=7, stratify_sources=["feedback"])
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2], strict=True))
    c = split_indices(labels, sources, seed=8, stratify_sources=["feedback"])
    assert not np.array_equal(a[1], c[1])


def test_only_stratified_rows():
    labels = np.arange(10) % 2
    train, val, how = split_indices(labels, ["feedback"] * 10, stratify_sources={"feedback"})
    assert how == "stratified"
    assert sorted(labels[val].tolist()) == [0, 1] and len(train) == 8
