"""How the training loop (`training.learning.train.fit_epochs`) uses SAM and the robust loss:
with rho > 0 each batch takes SAM's two passes (loss at w, first_step, loss again at
w + ε with BatchNorm's statistics frozen, second_step); with rho = 0 one plain AdamW
step per batch and no SAM at all; and the robust loss gets the configured gamma,
alpha, margin and power. `training.learning.sam` itself is tested in test_sam.py; this is the
wiring, watched through spies on what train.py calls."""

from __future__ import annotations

import contextlib
import inspect

import numpy as np
import pytest
import torch

import training.learning.train as train
from training.learning.config import TrainConfig
from training.learning.losses import robust_loss
from training.learning.sam import SAM
from training.learning.train import fit_epochs

ROWS, BATCH, EPOCHS = 40, 8, 2
BATCHES = EPOCHS * (ROWS // BATCH)  # every batch full: 40 rows, 8 a batch, 2 epochs


def small_problem(n: int = ROWS, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    X = (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32)
    return X, y


class Spy:
    """What the training loop did, in order: ("loss", inside frozen_bn_stats), "first",
    ("second", whether any parameter had a gradient), and the robust loss's arguments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list = []
        self.loss_args: list[dict] = []
        self.sams: list[SAM] = []
        self.frozen = False
        spy = self
        signature = inspect.signature(robust_loss)

        def recording_loss(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            spy.loss_args.append(
                {k: v for k, v in bound.arguments.items() if k not in ("logits", "labels")}
            )
            spy.events.append(("loss", spy.frozen))
            return robust_loss(*args, **kwargs)

        class RecordingSAM(SAM):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                spy.sams.append(self)

            def first_step(self, zero_grad: bool = True) -> None:
                spy.events.append("first")
                super().first_step(zero_grad=zero_grad)

            def second_step(self, zero_grad: bool = True) -> None:
                has_grad = any(
                    p.grad is not None and bool(p.grad.abs().sum() > 0)
                    for g in self.param_groups
                    for p in g["params"]
                )
                spy.events.append(("second", has_grad))
                super().second_step(zero_grad=zero_grad)

        real_frozen = train.frozen_bn_stats

        @contextlib.contextmanager
        def recording_frozen(model):
            with real_frozen(model):
                spy.frozen = True
                try:
                    yield
                finally:
                    spy.frozen = False

        monkeypatch.setattr(train, "robust_loss", recording_loss)
        monkeypatch.setattr(train, "SAM", RecordingSAM)
        monkeypatch.setattr(train, "frozen_bn_stats", recording_frozen)


def run(cfg: TrainConfig) -> dict:
    """Train on the small problem; returns the state after the last epoch."""
    X, y = small_problem()
    states = []
    fit_epochs(X, y, X, y, cfg, on_epoch=lambda record, state: states.append(state()))
    assert len(states) == EPOCHS
    return states[-1]


def adamw_steps(state: dict) -> set[int]:
    """The step count AdamW keeps for each parameter (one per optimiser step)."""
    return {int(s["step"]) for s in state["optimizer"]["state"].values()}


def config(**kw) -> TrainConfig:
    return TrainConfig(epochs=EPOCHS, batch_size=BATCH, patience=EPOCHS + 1, **kw)


def test_with_rho_each_batch_takes_both_sam_passes_in_order(monkeypatch):
    spy = Spy(monkeypatch)
    state = run(config(rho=0.05))
    assert len(spy.sams) == 1
    assert spy.sams[0].param_groups[0]["rho"] == 0.05
    # loss at w, climb, loss at w + ε (BatchNorm statistics frozen), back and step
    one_batch = [("loss", False), "first", ("loss", True), ("second", True)]
    assert spy.events == one_batch * BATCHES
    # the base optimiser stepped once per batch (in second_step), no more
    assert adamw_steps(state) == {BATCHES}


def test_without_rho_each_batch_takes_one_plain_step_and_no_sam(monkeypatch):
    spy = Spy(monkeypatch)
    state = run(config(rho=0.0))
    assert spy.sams == []
    assert spy.events == [("loss", False)] * BATCHES  # one forward pass, never frozen
    assert adamw_steps(state) == {BATCHES}


@pytest.mark.parametrize("rho", [0.05, 0.0])
def test_the_robust_loss_gets_the_configured_gamma_alpha_margin_and_power(monkeypatch, rho):
    spy = Spy(monkeypatch)
    # every value apart from the others and from robust_loss's defaults
    run(config(rho=rho, gamma=0.3, alpha=0.7, margin=0.45, power=3.0))
    expected = {"gamma": 0.3, "alpha": 0.7, "margin": 0.45, "power": 3.0}
    assert len(spy.loss_args) == BATCHES * (2 if rho > 0 else 1)
    assert all(args == expected for args in spy.loss_args), spy.loss_args[0]


def test_the_bce_baseline_does_not_use_the_robust_loss(monkeypatch):
    spy = Spy(monkeypatch)
    run(config(loss="bce", rho=0.0))
    assert spy.loss_args == []


def test_the_training_loss_is_the_robust_loss_with_those_settings():
    """The loss the loop minimises is robust_loss with the configured values: the loss
    function the config builds, compared with a direct call on the same logits."""
    cfg = config(gamma=0.3, alpha=0.7, margin=0.45, power=3.0)
    torch.manual_seed(0)
    logits, labels = torch.randn(16), (torch.arange(16) % 2).float()
    got = train.training_loss(cfg)(logits, labels)
    assert torch.equal(got, robust_loss(logits, labels, 0.3, 0.7, 0.45, 3.0))
    assert not torch.equal(got, robust_loss(logits, labels))  # the defaults would differ
