"""Training the MLP head on embeddings: the paper's robust loss with SAM,
early stopping on held-out AUC, run by Ray Train's TorchTrainer.

`fit_epochs` is the whole training loop as a plain function (used by the
Ray Train workers, and directly by tests that compare losses over many
seeds). `fit_head` runs it on N Ray Train workers with DDP: each worker
trains on its shard, rank 0 checkpoints the whole training state through
`ray.train.report` after every epoch, and when a worker fails Ray Train
restarts the group (up to `TrainConfig.max_failures` times), which resumes
from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import copy
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.evaluation.evaluate import roc_auc
from training.learning.config import TrainConfig
from training.learning.losses import bce_loss, robust_loss
from training.learning.sam import SAM, frozen_bn_stats
from training.model.head import HeadConfig, MLPHead, score


def head_config(cfg: TrainConfig, input_dim: int) -> HeadConfig:
    """The head a run of `cfg` trains, for rows `input_dim` wide."""
    return HeadConfig(
        input_dim=input_dim,
        hidden_dim=cfg.hidden_dim,
        blocks=cfg.depth,
        tower_blocks=cfg.tower_blocks,
        standardize=cfg.standardize,
    )


def training_loss(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss a run of `cfg` minimises: the robust loss with its settings, or BCE."""
    if cfg.loss == "bce":
        return bce_loss
    if cfg.loss == "robust":
        return lambda logits, y: robust_loss(logits, y, cfg.gamma, cfg.alpha, cfg.margin, cfg.power)
    raise ValueError(f"loss must be robust or bce, not {cfg.loss!r}")


def fit_epochs(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    *,
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
    on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None,
    resume: dict | None = None,
    device: str = "cpu",
    agree: Callable[[float], float] = lambda auc: auc,
    weights: np.ndarray | None = None,
    unlabelled: np.ndarray | None = None,
) -> tuple[MLPHead, list[dict]]:
    """Train; returns the head with the best held-out AUC and the per-epoch history.

    `weights` (N,), when given: each epoch draws N rows with replacement in proportion
    to them (training.learning.balance: the classes get equal mass per content group).
    `unlabelled` (M, D): rows without labels that count in the input standardisation's
    statistics beside X (TrainConfig.adapt).

    After each epoch, `on_epoch(record, state)` gets the epoch's history record
    (epoch, loss, val_auc, plus best_auc) and `state()`, which builds the whole
    training state: the head's current and best weights, the optimiser's (with
    SAM, its base optimiser's) and the learning-rate schedule's state, the epoch,
    the best AUC, the early-stopping count and the history. `resume` takes such a
    state and carries on from the epoch after it, exactly where an uninterrupted
    run would be (an epoch's batches, Dropout and modality-dropout masks depend
    only on the seed, the rank and the epoch). The first record after a resume has
    `"resumed": True`.

    `agree` makes every worker use rank 0's held-out AUC, so all stop at the same epoch
    (a worker that stopped alone would leave the others hanging in an all-reduce).
    """
    torch.manual_seed(cfg.seed)
    head = MLPHead(head_config(cfg, X.shape[1]))
    if cfg.standardize:  # every worker holds all training rows: the same statistics
        head.fit_standardizer(X if unlabelled is None else np.concatenate([X, unlabelled]))
    if resume:
        head.load_state_dict(resume["head"])
    model = wrap(head.to(device))
    per_worker = max(2, cfg.batch_size // world)
    opt, sched = _optimiser(model, cfg, steps=max(1, (len(X) // world) // per_worker) * cfg.epochs)
    start_epoch, best_auc, stale, history = 0, -1.0, 0, []
    best_state = copy.deepcopy(head.state_dict())
    if resume:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        best_state = resume["best"]
        start_epoch, best_auc = resume["epoch"] + 1, resume["best_auc"]
        stale, history = resume["stale"], list(resume["history"])
    epoch = start_epoch

    def state() -> dict:  # the training state after `epoch`, for a checkpoint
        return {
            "epoch": epoch,
            "head": head.state_dict(),
            "best": best_state,
            "best_auc": best_auc,
            "stale": stale,
            "history": history,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        }

    loss_fn = training_loss(cfg)
    # torch.tensor copies: arrays from Ray's object store are read-only.
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:  # a run resumed from the epoch that stopped it
            break
        order = _epoch_order(len(X), cfg.seed + epoch, weights)[rank::world]
        dropout_seed, modality_seed = _epoch_seeds(cfg.seed, rank, epoch)
        torch.manual_seed(dropout_seed)  # the head's Dropout layers
        gen = torch.Generator().manual_seed(modality_seed)
        model.train()
        losses = _train_epoch(model, opt, sched, loss_fn, Xt, yt, order, per_worker, cfg, gen)
        auc = agree(roc_auc(y_val, score(head, X_val, device=device)))
        if auc > best_auc + 1e-6:
            best_auc, best_state, stale = auc, copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else None,
            "val_auc": auc,
        }
        if resume and epoch == start_epoch:
            record["resumed"] = True
        history.append(record)
        if on_epoch:
            on_epoch({**record, "best_auc": best_auc}, state)
    head.load_state_dict(best_state)
    return head.cpu().eval(), history


def _optimiser(model: nn.Module, cfg: TrainConfig, *, steps: int):
    """AdamW (wrapped in SAM when rho > 0) and its cosine schedule over `steps` steps."""
    base = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt = (
        SAM(model.parameters(), torch.optim.AdamW, rho=cfg.rho, **base)
        if cfg.rho > 0
        else torch.optim.AdamW(model.parameters(), **base)
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt.base_optimizer if cfg.rho > 0 else opt, T_max=steps
    )
    return opt, sched


def _train_epoch(
    model: nn.Module,
    opt,
    sched,
    loss_fn,
    Xt: torch.Tensor,
    yt: torch.Tensor,
    order: np.ndarray,
    size: int,
    cfg: TrainConfig,
    gen: torch.Generator,
) -> list[float]:
    """One epoch's steps over the rows `order`, `size` a batch (a batch under two rows is
    skipped: BatchNorm needs two), the learning-rate schedule stepped after each; returns
    each step's loss."""
    device = next(model.parameters()).device
    losses = []
    for i in range(0, len(order) - 1, size):
        idx = order[i : i + size]
        if len(idx) < 2:
            continue
        xb, yb = _batch(Xt, yt, idx, cfg, gen, device)
        losses.append(_step(model, opt, loss_fn, xb, yb, sam=cfg.rho > 0))
        sched.step()
    return losses


def _batch(
    Xt: torch.Tensor,
    yt: torch.Tensor,
    idx: np.ndarray,
    cfg: TrainConfig,
    gen: torch.Generator,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows `idx` on `device`, captions hidden for `cfg.modality_dropout` of them."""
    xb, yb = Xt[idx].to(device), yt[idx].to(device)
    if cfg.text_dim and cfg.modality_dropout > 0:
        drop = torch.rand(len(idx), generator=gen) < cfg.modality_dropout  # (B,)
        xb = xb.clone()
        xb[drop.to(device), -cfg.text_dim :] = 0.0
    return xb, yb


def _step(
    model: nn.Module, opt, loss_fn, xb: torch.Tensor, yb: torch.Tensor, *, sam: bool
) -> float:
    """One optimisation step on a batch; with SAM, its two passes. Returns the loss at w."""
    loss = loss_fn(model(xb), yb)
    loss.backward()
    if sam:
        opt.first_step(zero_grad=True)  # to w + ε, the worst point nearby
        with frozen_bn_stats(model):  # same batch again: do not count it twice
            loss_fn(model(xb), yb).backward()
        opt.second_step(zero_grad=True)  # back to w, step with the gradient at w + ε
    else:
        opt.step()
        opt.zero_grad()
    return float(loss.detach())


def _epoch_order(n: int, seed: int, weights: np.ndarray | None) -> np.ndarray:
    """The rows of one epoch, in order: a permutation, or n draws by `weights`."""
    rng = np.random.default_rng(seed)
    if weights is None:
        return rng.permutation(n)
    p = np.asarray(weights, dtype=np.float64)
    if p.shape != (n,) or not np.all(np.isfinite(p)) or p.min() < 0 or p.sum() <= 0:
        raise ValueError("sampling weights must be N finite non-negative numbers, not all 0")
    return rng.choice(n, size=n, replace=True, p=p / p.sum())


def _epoch_seeds(seed: int, rank: int, epoch: int) -> tuple[int, int]:
    """The seeds of one worker's epoch (Dropout, modality dropout): a resumed run draws
    what an uninterrupted one would have."""
    a, b = np.random.SeedSequence([seed, rank, epoch]).generate_state(2)
    return int(a), int(b)


FAIL_MARKER = "injected-failure"  # in the run's folder, once `fail_at_epoch` has fired


def _train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: trains its shard; rank 0 checkpoints the whole training state
    after every epoch, and a restarted worker group resumes from the latest checkpoint."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig(**config["cfg"])
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", weights_only=False)
    fail_at, marker = config.get("fail_at_epoch"), Path(config["run_dir"]) / FAIL_MARKER

    def on_epoch(record: dict, state: Callable[[], dict]) -> None:
        if rank == 0 and record["epoch"] == fail_at and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(record["epoch"]))
            os._exit(1)  # the injected failure: this epoch is lost, not reported
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save(state(), Path(d) / "state.pt")
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(record)

    def agree(auc: float) -> float:
        if world == 1:
            return auc
        import torch.distributed as dist

        shared = torch.tensor([auc], dtype=torch.float64)
        dist.broadcast(shared, src=0)
        return float(shared)

    device = ray.train.torch.get_device() if cfg.use_gpu else "cpu"
    fit_epochs(
        config["X"],
        config["y"],
        config["X_val"],
        config["y_val"],
        cfg,
        rank=rank,
        world=world,
        wrap=ray.train.torch.prepare_model,
        on_epoch=on_epoch,
        resume=resume,
        device=str(device),
        agree=agree,
        weights=config.get("weights"),
    )


def fit_head(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    *,
    storage: Path,
    fail_at_epoch: int | None = None,
    weights: np.ndarray | None = None,
    unlabelled: np.ndarray | None = None,
) -> tuple[MLPHead, list[dict]]:
    """Train with Ray Train (TorchTrainer, `cfg.workers` workers); returns the best head
    and the per-epoch history.

    A worker group that fails is restarted up to `cfg.max_failures` times, each time
    resuming from the latest checkpoint (see `fit_epochs`). `fail_at_epoch` is a test
    hook: rank 0 exits at the end of that epoch, before reporting it, the first time
    only (a marker file in the run's folder remembers it).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from services.ray_cluster import init_ray

    init_ray(num_cpus=max(cfg.workers + 1, 2))
    storage.mkdir(parents=True, exist_ok=True)
    name = f"head-{uuid.uuid4().hex[:8]}"
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "cfg": asdict(cfg),
            "X": X,
            "y": y,
            "X_val": X_val,
            "y_val": y_val,
            "weights": weights,
            "fail_at_epoch": fail_at_epoch,
            "run_dir": str(storage.resolve() / name),
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            storage_path=str(storage.resolve()),
            name=name,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=False)
    if state["best_auc"] < 0:
        raise RuntimeError("held-out AUC was never defined (one class held out?)")
    head = MLPHead(head_config(cfg, X.shape[1]))
    head.load_state_dict(state["best"])
    return head.eval(), state["history"]
