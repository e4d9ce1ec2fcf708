"""Ray Train restarts a failed worker group from its own checkpoints, and the
training function resumes from them: the run carries on where it stopped."""

import io

import numpy as np
import pytest
import torch

from training.evaluation.evaluate import roc_auc
from training.learning.config import TrainConfig
from training.learning.train import FAIL_MARKER, fit_epochs, fit_head
from training.model.head import score


def separable(n: int, seed: int, dim: int = 24, text_dim: int = 8):
    """Image part and caption part both carry the label (the last `text_dim` columns)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    X = rng.normal(0, 1, (n, dim)).astype(np.float32)
    X[:, 0] += y * 3.0
    X[:, dim - text_dim] += y * 3.0
    return X, y


class Interrupted(Exception):
    pass


def state_after(epoch: int, *args) -> dict:
    """The state `fit_epochs` hands its `on_epoch` after `epoch`, saved and loaded as a
    checkpoint is; the run stops there."""
    saved = {}

    def on_epoch(record: dict, state) -> None:
        if record["epoch"] == epoch:
            buf = io.BytesIO()
            torch.save(state(), buf)
            saved["state"] = buf.getvalue()
            raise Interrupted

    with pytest.raises(Interrupted):
        fit_epochs(*args, on_epoch=on_epoch)
    return torch.load(io.BytesIO(saved["state"]), weights_only=False)


@pytest.mark.parametrize("rho", [0.05, 0.0])  # with SAM (its base optimiser's state), without
def test_a_resumed_run_is_the_run_that_was_not_interrupted(rho):
    X, y = separable(300, 0)
    X_val, y_val = separable(120, 1)
    cfg = TrainConfig(epochs=5, batch_size=32, patience=100, text_dim=8, rho=rho)
    args = (X, y, X_val, y_val, cfg)
    whole, history = fit_epochs(*args)
    resumed, history2 = fit_epochs(*args, resume=state_after(2, *args))
    assert [r["epoch"] for r in history2] == [0, 1, 2, 3, 4]
    assert [r.get("resumed", False) for r in history2] == [False, False, False, True, False]
    for a, b in zip(history, history2, strict=True):
        assert (a["loss"], a["val_auc"]) == (b["loss"], b["val_auc"])
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_a_run_resumed_after_early_stopping_trains_no_further():
    X, y = separable(200, 0)
    X_val, y_val = separable(80, 1)
    cfg = TrainConfig(epochs=6, batch_size=32, patience=1, rho=0.0)
    args = (X, y, X_val, y_val, cfg)
    state = state_after(1, *args)
    state["stale"] = cfg.patience  # as if epoch 1 was the one that stopped the run
    _, history = fit_epochs(*args, resume=state)
    assert [r["epoch"] for r in history] == [0, 1]


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_worker_is_restarted_and_training_resumes_from_its_checkpoint(tmp_path):
    X, y = separable(320, 0)
    X_val, y_val = separable(160, 1)
    cfg = TrainConfig(epochs=6, batch_size=32, patience=100, workers=2, text_dim=8, max_failures=1)
    head, history = fit_head(X, y, X_val, y_val, cfg, storage=tmp_path, fail_at_epoch=3)

    [marker] = tmp_path.glob(f"head-*/{FAIL_MARKER}")  # rank 0 did exit, once
    assert marker.read_text() == "3"
    # The history continues through the failure: every epoch once, and the restarted
    # workers picked up after a checkpoint, not at epoch 0. Rank 0 died before reporting
    # epoch 3, so the lost epoch 3 is trained again, or epoch 2 as well when Ray's
    # controller had not yet taken in epoch 2's report (a worker's report waits until the
    # one before it has been taken, so epoch 1's checkpoint at least is there).
    assert [r["epoch"] for r in history] == list(range(cfg.epochs))
    resumed = [r["epoch"] for r in history if r.get("resumed")]
    assert resumed in ([2], [3]), history
    # the head that comes back is the best one, and it works
    scores = score(head, X_val)
    assert scores.shape == (len(X_val),) and scores.dtype == np.float32
    assert roc_auc(y_val, scores) == pytest.approx(max(r["val_auc"] for r in history), abs=1e-6)
    assert roc_auc(y_val, scores) > 0.7
