"""Training the MLP head on embeddings: the paper's robust loss with SAM,
early stopping on held-out AUC, run by Ray Train's TorchTrainer.

`fit_epochs` is the whole training loop as a plain function (used by the
Ray Train workers, and directly by tests that compare losses over many
seeds). `fit_head` runs it on N Ray Train workers with DDP: each worker
trains on its shard, rank 0 checkpoints through `ray.train.report` on every
improvement, and a restarted run resumes from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import copy
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.evaluate import roc_auc
from training.head import HeadConfig, MLPHead
from training.losses import bce_loss, robust_loss
from training.sam import SAM, frozen_bn_stats


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "robust"  # "robust" (CVaR + AUC) or "bce" (baseline)
    gamma: float = 0.5  # weight of CVaR against the AUC term
    alpha: float = 0.8  # CVaR tail fraction (the paper's 0.8)
    margin: float = 0.6  # AUC hinge margin η
    power: float = 2.0  # AUC hinge power p
    rho: float = 0.05  # SAM radius; 0 turns SAM off
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.01
    epochs: int = 30
    batch_size: int = 256  # global; each worker takes batch_size / workers
    patience: int = 5  # epochs without held-out AUC gain before stopping
    seed: int = 0
    workers: int = 2  # Ray Train workers
    use_gpu: bool = False
    target_fpr: float = 0.05  # the stored threshold meets this on held-out data
    # Caption embeddings, when used, are the last `text_dim` columns of X. Modality dropout
    # zeroes them for this fraction of training rows, so the head also learns to judge the
    # image alone: records without a caption are served with zeros there.
    text_dim: int = 0
    modality_dropout: float = 0.5

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.loss == "bce":
            return bce_loss
        if self.loss == "robust":
            return lambda logits, y: robust_loss(
                logits, y, self.gamma, self.alpha, self.margin, self.power
            )
        raise ValueError(f"loss must be robust or bce, not {self.loss!r}")


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
    on_epoch: Callable[[dict, MLPHead, bool], None] | None = None,
    resume: dict | None = None,
    device: str = "cpu",
    agree: Callable[[float], float] = lambda auc: auc,
) -> tuple[MLPHead, list[dict]]:
    """Train; returns the head with the best held-out AUC and the per-epoch history.

    `agree` makes every worker use rank 0's held-out AUC, so all stop at the
    same epoch (a worker that stopped alone would leave the others hanging in
    an all-reduce).
    """
    torch.manual_seed(cfg.seed)
    head = MLPHead(HeadConfig(input_dim=X.shape[1]))
    start_epoch, best_auc, history = 0, -1.0, []
    if resume:
        head.load_state_dict(resume["state_dict"])
        start_epoch, best_auc, history = resume["epoch"] + 1, resume["best_auc"], resume["history"]
    best_state = copy.deepcopy(head.state_dict())
    model = wrap(head.to(device))
    base = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt = (
        SAM(model.parameters(), torch.optim.AdamW, rho=cfg.rho, **base)
        if cfg.rho > 0
        else torch.optim.AdamW(model.parameters(), **base)
    )
    per_worker = max(2, cfg.batch_size // world)
    steps = max(1, (len(X) // world) // per_worker) * cfg.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt.base_optimizer if cfg.rho > 0 else opt, T_max=steps
    )
    loss_fn = cfg.loss_fn()
    # torch.tensor copies: arrays from Ray's object store are read-only.
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    Xv = torch.tensor(X_val, dtype=torch.float32, device=device)
    stale = 0
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(X))[rank::world]
        losses = []
        for i in range(0, len(order) - 1, per_worker):
            idx = order[i : i + per_worker]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb, yb = Xt[idx].to(device), yt[idx].to(device)
            if cfg.text_dim and cfg.modality_dropout > 0:
                drop = torch.rand(len(idx), generator=gen) < cfg.modality_dropout  # (B,)
                xb = xb.clone()
                xb[drop.to(device), -cfg.text_dim :] = 0.0
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if cfg.rho > 0:
                opt.first_step(zero_grad=True)  # to w + ε, the worst point nearby
                with frozen_bn_stats(model):  # same batch again: do not count it twice
                    loss_fn(model(xb), yb).backward()
                opt.second_step(zero_grad=True)  # back to w, step with the gradient at w + ε
            else:
                opt.step()
                opt.zero_grad()
            sched.step()
            losses.append(float(loss.detach()))
        model.eval()
        with torch.inference_mode():
            val_scores = torch.sigmoid(head(Xv)).cpu().numpy()
        auc = agree(roc_auc(y_val, val_scores))
        improved = auc > best_auc + 1e-6
        if improved:
            best_auc, best_state, stale = auc, copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else None,
            "val_auc": auc,
        }
        history.append(record)
        if on_epoch:
            on_epoch({**record, "best_auc": best_auc, "history": history}, head, improved)
        if stale >= cfg.patience:
            break
    head.load_state_dict(best_state)
    return head.cpu().eval(), history


def _train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: trains its shard; rank 0 checkpoints each improvement."""
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

    def on_epoch(record: dict, head: MLPHead, improved: bool) -> None:
        metrics = {k: v for k, v in record.items() if k != "history"}
        if improved and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save({"state_dict": head.state_dict(), "epoch": record["epoch"],
                            "best_auc": record["best_auc"], "history": record["history"]}, Path(d) / "state.pt")  # fmt: skip
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    def agree(auc: float) -> float:
        if world == 1:
            return auc
        import torch.distributed as dist

        shared = torch.tensor([auc], dtype=torch.float64)
        dist.broadcast(shared, src=0)
        return float(shared)

    device = ray.train.torch.get_device() if cfg.use_gpu else "cpu"
    fit_epochs(
        config["X"], config["y"], config["X_val"], config["y_val"], cfg,
        rank=rank, world=world, wrap=ray.train.torch.prepare_model, on_epoch=on_epoch,
        resume=resume, device=str(device), agree=agree,
    )  # fmt: skip


def fit_head(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    *,
    storage: Path,
) -> tuple[MLPHead, list[dict]]:
    """Train with Ray Train (TorchTrainer, `cfg.workers` workers); returns the best head."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from services.ray_cluster import init_ray

    init_ray(num_cpus=max(cfg.workers + 1, 2))
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": asdict(cfg), "X": X, "y": y, "X_val": X_val, "y_val": y_val},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            storage_path=str(storage.resolve()),
            name=f"head-{uuid.uuid4().hex[:8]}",
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint (held-out AUC never defined?)")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=False)
    head = MLPHead(HeadConfig(input_dim=X.shape[1]))
    head.load_state_dict(state["state_dict"])
    return head.eval(), state["history"]
