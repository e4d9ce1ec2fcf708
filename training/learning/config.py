"""What a training run is configured with (TrainConfig): plain data, importable without
torch, so that the command line can take its flags' defaults from it."""

from __future__ import annotations

from dataclasses import dataclass


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
    # Sample training rows so that label and content (or embedding cluster) are
    # independent (training.learning.balance), so that the subject cannot stand in for the label.
    balance: bool = True
    # Scores that this fraction of held-out real images reach, but under the threshold,
    # are "uncertain" (the abstain band); 0 turns the band off.
    uncertain_fpr: float = 0.2
    # Caption embeddings, when used, are the last `text_dim` columns of X. Modality dropout
    # zeroes them for this fraction of training rows, so the head also learns to judge the
    # image alone: records without a caption are served with zeros there.
    text_dim: int = 0
    modality_dropout: float = 0.5
    # Ray Train restarts a failed worker group this many times, from its latest checkpoint.
    max_failures: int = 2
    # > 0: the rows are the class tokens of this many transformer blocks (training.model.features,
    # "blocks"), pooled by the head before its MLP (HeadConfig.tower_blocks).
    tower_blocks: int = 0
    hidden_dim: int = 0  # the head's width; 0: as wide as its input (the paper's head)
    # Hidden Linear-BN-LeakyReLU-Dropout blocks of the head: 3 is the paper's MLP, 0 a
    # linear head (logistic regression on the features, trained with the same loss and SAM).
    depth: int = 3
    # Standardise the head's inputs with the training rows' statistics (HeadConfig.standardize).
    standardize: bool = False
    # With standardize: the statistics also count the unlabelled rows of the stream the
    # head will serve (in the leave-source-out benchmark, the held-out fold's features).
    adapt: bool = False
    # What the head reads from the image tower (training.model.features); stored with the head.
    features: str = "embedding"
