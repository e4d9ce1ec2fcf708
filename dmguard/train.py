"""`dmguard train`, `eval` and `retrain`: a head from labelled images, its held-out
metrics, and rounds of labels ⋈ feature log → train → promote if not worse.

The work is training/'s (retrain's schedule too: training.learning.retrain.retrain_loop).
What is here beyond the flags, embed-then-train and evaluation under
perturbations, is glue that belongs with training/ (training.learning.job) once that
package takes it; retrain's SIGTERM handler stays here, as only the program
owns the process.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path

from dmguard.common import (
    kafka_args,
    kafka_from,
    parse_views,
    registry_arg,
)
from services.config import Topics, default_feature_log, offline_weights
from services.errors import ConfigError, DmguardError
from training.learning.config import TrainConfig


# -------------------------------------------------------------------- flags
def add_parser(sub) -> None:
    sp = sub.add_parser("train", help="train a head with Ray Train and register it")
    registry_arg(sp)
    sp.add_argument(
        "--data", required=True, help="folder (real/ fake/, or nature/ ai/) or CSV/JSONL manifest"
    )
    sp.add_argument(
        "--encoder", default=None, help="encoder spec (default: the offline CLIP weights)"
    )
    sp.add_argument("--no-text", action="store_true", help="ignore captions: an image-only head")
    training_args(sp)
    sp.set_defaults(func=run_train)

    sp = sub.add_parser(
        "retrain", help="retrain from dmguard.labels + the feature log; promote if not worse"
    )
    kafka_args(sp)
    registry_arg(sp)
    when = sp.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=float, metavar="SECONDS", help="run a round every SECONDS")
    when.add_argument("--once", action="store_true", help="run one round and exit")
    sp.add_argument(
        "--fail-on-skip",
        action="store_true",
        help="with --once, exit 3 when the round trains nothing (too few new labels, a split "
        "without both classes, a failed training); without it such a round exits 0. Each round "
        "prints one JSON line; --every goes on after a round that skips or fails",
    )
    sp.add_argument(
        "--min-new-labels", type=int, default=50, help="labelled features the head has not seen"
    )
    sp.add_argument(
        "--feature-log",
        default=default_feature_log(),
        help="folder or URI of the workers' feature log (default: $DMGUARD_FEATURE_LOG or "
        "%(default)s)",
    )
    training_args(sp)
    sp.set_defaults(func=run_retrain)

    sp = sub.add_parser(
        "eval",
        help="print one JSON object of held-out metrics for a head, or (--leave-source-out) "
        "for heads trained with every source held out in turn",
        description="Metrics of a registered head on --data (per source, and per content where "
        "the manifest has a content column); or, with --leave-source-out, the benchmark that "
        "subject cannot game: the data's sources are dealt into folds, and each fold is scored "
        "by a head trained (with the training flags below) on the other folds' sources, its "
        "threshold chosen on still other held-back sources.",
    )
    registry_arg(sp)
    sp.add_argument(
        "--data", required=True, help="folder (real/ fake/, or nature/ ai/) or CSV/JSONL manifest"
    )
    sp.add_argument("--version", default=None, help="head version (default: CURRENT)")
    sp.add_argument(
        "--perturb", default="", help="also under laundering, e.g. jpeg:75,resize:0.5,blur:1"
    )
    lso = sp.add_argument_group("leave-source-out benchmark")
    lso.add_argument(
        "--leave-source-out",
        action="store_true",
        help="train and score heads fold by fold instead of evaluating a stored head",
    )
    lso.add_argument(
        "--encoder", default=None, help="encoder spec (default: the offline CLIP weights)"
    )
    lso.add_argument(
        "--augment",
        type=int,
        default=2,
        help="laundered copies of each training image (JPEG/WebP, downscale, crop)",
    )
    lso.add_argument(
        "--views",
        default="",
        metavar="NAMES",
        help="test-time views scored beside the centre crop and averaged, comma-separated "
        "(flip, whole, zoom: training/model/views.py); default none",
    )
    lso.add_argument("--folds", type=int, default=5, help="folds the sources are dealt into")
    lso.add_argument("--seeds", type=int, default=3, help="repeat with this many seeds and average")
    training_args(sp)
    sp.set_defaults(func=run_eval)


def training_args(sp: argparse.ArgumentParser) -> None:
    """The training flags of train, retrain and eval; every default is TrainConfig's."""
    d = TrainConfig()
    g = sp.add_argument_group("training (defaults from training.learning.config.TrainConfig)")
    g.add_argument(
        "--features",
        default=d.features,
        metavar="KIND",
        help="what the head reads from the image tower: 'embedding' (the final CLIP embedding), "
        "'blocks' (every transformer block's class token) or 'blocks:A-B' (blocks A to B, "
        "0-based; 'blocks:8' is one block). Default: %(default)s. `retrain` ignores it: a new "
        "head reads what the current one reads",
    )
    g.add_argument(
        "--pool-blocks",
        action="store_true",
        help="with block features, pool the blocks with learned weights before the MLP (RINE) "
        "instead of reading their concatenation",
    )
    g.add_argument(
        "--hidden-dim", type=int, default=d.hidden_dim, help="head width (0: its input width)"
    )
    g.add_argument(
        "--head-depth",
        type=int,
        default=d.depth,
        help="hidden Linear-BN-LeakyReLU-Dropout blocks of the head: 3 is the paper's MLP "
        "(default), 0 a linear head on the features",
    )
    g.add_argument(
        "--standardize",
        action="store_true",
        help="standardise each input feature with the training rows' mean and standard "
        "deviation (stored in the head)",
    )
    g.add_argument(
        "--adapt",
        action="store_true",
        help="with --standardize and --leave-source-out: the statistics also count the held-out "
        "fold's features, unlabelled (test-time adaptation to the stream; docs/detection.md)",
    )
    g.add_argument(
        "--no-balance",
        action="store_true",
        help="do not reweigh training rows so that label and content (or embedding cluster) "
        "are independent",
    )
    g.add_argument("--epochs", type=int, default=d.epochs, help="most epochs (default %(default)s)")
    g.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="Ray Train workers (and embedding actors) (default %(default)s)",
    )
    g.add_argument(
        "--loss",
        choices=["robust", "bce"],
        default=d.loss,
        help="robust: the paper's CVaR + pairwise AUC loss; bce: the baseline "
        "(default %(default)s)",
    )
    g.add_argument("--gamma", type=float, default=d.gamma, help="CVaR weight against the AUC loss")
    g.add_argument("--alpha", type=float, default=d.alpha, help="CVaR tail fraction")
    g.add_argument("--rho", type=float, default=d.rho, help="SAM radius (0: plain AdamW)")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    g.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="rows per step, over all workers (default %(default)s)",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after this many epochs without held-out AUC gain",
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the split, the head and the batches"
    )
    g.add_argument(
        "--target-fpr",
        type=float,
        default=d.target_fpr,
        help="the threshold meets this FPR held out (worst case over content groups and "
        "held-back real collections)",
    )
    g.add_argument(
        "--tolerance", type=float, default=0.0, help="promote if AUC >= current - tolerance"
    )
    g.add_argument("--use-gpu", action="store_true", help="train on a GPU (Ray Train workers)")
    g.add_argument(
        "--modality-dropout",
        type=float,
        default=d.modality_dropout,
        help="fraction of training rows whose caption is hidden (heads with text)",
    )
    g.add_argument("--cache", default=".cache", help="embedding cache and Ray Train storage")


def train_config(args: argparse.Namespace) -> TrainConfig:
    from training.model.features import check_kind  # loads torch: not at CLI start-up

    try:
        check_kind(args.features)
    except ValueError as exc:
        raise ConfigError(f"--features: {exc}") from None
    return TrainConfig(
        features=args.features,
        hidden_dim=args.hidden_dim,
        depth=args.head_depth,
        standardize=args.standardize,
        adapt=args.adapt,
        balance=not args.no_balance,
        loss=args.loss,
        gamma=args.gamma,
        alpha=args.alpha,
        rho=args.rho,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        seed=args.seed,
        workers=args.workers,
        target_fpr=args.target_fpr,
        use_gpu=args.use_gpu,
        modality_dropout=args.modality_dropout,
    )


# -------------------------------------------------------------------- train
def run_train(args: argparse.Namespace) -> int:
    from training.data.embeddings import embed_samples
    from training.data.samples import load_samples
    from training.learning.job import train_register
    from training.model.head import head_input
    from training.model.registry import Registry

    check_exists(args.data, "--data")
    encoder = resolve_encoder(args.encoder)
    samples = load_samples(args.data)
    cfg = pooled(train_config(args), encoder, args.pool_blocks)
    emb = embed_samples(
        samples,
        encoder,
        cache_dir=Path(args.cache) / "embeddings",
        workers=args.workers,
        with_text=not args.no_text,
        features=cfg.features,
    )
    print_bad(emb.bad)
    text_dim = 0 if emb.T is None else emb.T.shape[1]
    cfg = replace(cfg, text_dim=text_dim)
    meta = train_register(
        head_input(emb.X, emb.T, uses_text=text_dim > 0, text_dim=text_dim),
        emb.labels,
        emb.sources,
        encoder=encoder,
        registry=Registry(args.registry),
        cfg=cfg,
        storage=Path(args.cache) / "ray-train",
        tolerance=args.tolerance,
        extra={"data": {"src": str(Path(args.data).resolve())}},
        groups=[s.content for s in emb.samples],
    )
    print(
        json.dumps(
            {
                "version": meta.version,
                "promoted": meta.extra["promotion"]["promoted"],
                "metrics": {k: v for k, v in meta.metrics.items() if k != "per_source"},
            }
        )
    )
    return 0


def pooled(cfg, encoder: str, pool: bool):
    """`cfg` with the head pooling its block features (HeadConfig.tower_blocks) when asked."""
    if not pool:
        return cfg
    if cfg.features == "embedding":
        raise ConfigError("--pool-blocks needs block features (--features blocks or blocks:A-B)")
    from training.model.encoders import load_encoder
    from training.model.features import block_range

    blocks = load_encoder(encoder, device="cpu", threads=1).block_shape[0]
    return replace(cfg, tower_blocks=len(block_range(cfg.features, blocks)))


def resolve_encoder(spec: str | None) -> str:
    """`--encoder`, else the offline CLIP weights `dmguard models` fetched."""
    if spec:
        return spec
    weights = offline_weights()
    if weights is not None:
        return f"onnx:{weights}"
    raise DmguardError(
        "no encoder given and no offline weights: run `dmguard models` or pass --encoder SPEC"
    )


def check_exists(path: str, flag: str) -> None:
    if not Path(path).exists():
        raise ConfigError(
            f"{flag} {path}: no such file or folder "
            "(give a folder with real/ and fake/, or a CSV/JSONL manifest)"
        )


def print_bad(bad: list[tuple[str, str]]) -> None:
    if bad:
        print(f"{len(bad)} images skipped:", file=sys.stderr)
        for location, reason in bad[:20]:
            print(f"  {location}: {reason}", file=sys.stderr)


# -------------------------------------------------------------------- eval
def run_eval(args: argparse.Namespace) -> int:
    if args.leave_source_out:
        return run_leave_source_out(args)
    from training.data.embeddings import embed_samples
    from training.data.samples import load_samples
    from training.evaluation.evaluate import evaluate
    from training.evaluation.perturb import parse_perturbations
    from training.model.head import head_input, score
    from training.model.registry import Registry

    check_exists(args.data, "--data")
    head, meta = Registry(args.registry).load(args.version)
    samples = load_samples(args.data)

    def run(transform=None) -> dict:
        emb = embed_samples(
            samples,
            meta.encoder,
            cache_dir=Path(args.cache) / "embeddings",
            transform=transform,
            progress=False,
            with_text=meta.uses_text,
            features=meta.features,
        )
        print_bad(emb.bad)
        X = head_input(emb.X, emb.T, uses_text=meta.uses_text, input_dim=meta.input_dim)
        scores = score(head, X)
        out = evaluate(emb.labels, scores, meta.threshold, emb.sources)
        if any(s.content for s in emb.samples):
            by_content = evaluate(
                emb.labels, scores, meta.threshold, [s.content or "untagged" for s in emb.samples]
            )
            out["per_content"] = by_content["per_source"]
        return out

    out = {"version": meta.version, "encoder": meta.encoder, **run()}
    if args.perturb:
        out["perturbations"] = {
            name: run(fn) for name, fn in parse_perturbations(args.perturb).items()
        }
    print(json.dumps(out))
    return 0


def run_leave_source_out(args: argparse.Namespace) -> int:
    from training.data.samples import load_samples
    from training.evaluation.benchmark import run_benchmark

    check_exists(args.data, "--data")
    if args.folds < 2 or args.seeds < 1:
        raise ConfigError("--folds must be at least 2 and --seeds at least 1")
    encoder = resolve_encoder(args.encoder)
    out = run_benchmark(
        load_samples(args.data),
        encoder,
        pooled(train_config(args), encoder, args.pool_blocks),
        augment=args.augment,
        views=parse_views(args.views),
        folds=args.folds,
        seeds=range(args.seed, args.seed + args.seeds),
        cache_dir=Path(args.cache) / "embeddings",
        workers=args.workers,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(json.dumps(out))
    return 0


# -------------------------------------------------------------------- retrain
def run_retrain(args: argparse.Namespace) -> int:
    from training.learning.retrain import RetrainSettings, retrain_loop, retrain_once

    settings = RetrainSettings(
        kafka=kafka_from(args),
        labels_topic=Topics().labels,
        registry=args.registry,
        feature_log=args.feature_log,
        cache=Path(args.cache),
        min_new_labels=args.min_new_labels,
        tolerance=args.tolerance,
        train=train_config(args),
    )
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        return retrain_loop(
            lambda: retrain_once(settings),
            lambda summary: print(json.dumps(summary), flush=True),
            every=None if args.once else args.every,
            fail_on_skip=args.fail_on_skip,
            stop=lambda: stop["now"],
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
