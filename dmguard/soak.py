"""`dmguard soak`: its flags, read back and handed to benchmarks.soak (what a soak
measures and its targets are described there and in docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks import soak as measure
from benchmarks.soak_mix import BAD_KINDS
from benchmarks.soak_stats import LAG_BOUND_SECONDS, RSS_GROWTH_TARGET, parse_steps
from services.config import WorkerSettings, offline_weights


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "soak",
        help="run the service for a long time at a steady load; record its health each minute",
        description="Run the service in-process (embedded broker, local image server) at a "
        "steady fraction of its measured capacity with ~5% bad records, record worker RSS, "
        "lag, p99 latency and restarts each minute, and check them against the targets "
        f"(RSS growth < {RSS_GROWTH_TARGET:.0%} after warm-up, lag bounded, no restarts). "
        "Writes soak.csv, soak.json, soak.png and soak.txt (the curves as text) under --out.",
    )
    sp.add_argument(
        "--minutes", type=float, default=30.0, help="length of the soak (default %(default)s)"
    )
    sp.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="records/s to send; skips the capacity measurement (default: --fraction "
        "of the measured capacity)",
    )
    sp.add_argument(
        "--fraction",
        type=float,
        default=0.8,
        help="target rate as a fraction of the measured capacity (default %(default)s)",
    )
    sp.add_argument(
        "--capacity-images",
        type=int,
        default=300,
        help="records in the saturating burst that measures capacity (default %(default)s)",
    )
    sp.add_argument(
        "--bad-fraction",
        type=float,
        default=0.05,
        help="share of bad records, spread over " + ", ".join(BAD_KINDS) + " (default %(default)s)",
    )
    weights = offline_weights()
    sp.add_argument(
        "--encoder",
        default=f"onnx:{weights}" if weights else "open_clip:dmguard-tiny",
        help="encoder spec (default: %(default)s)",
    )
    sp.add_argument(
        "--workers",
        default=str(len(os.sched_getaffinity(0))),
        help="DetectorWorker actors, or `auto` (serve --workers auto, from 1 to "
        "--max-workers) (default: one per core, %(default)s)",
    )
    sp.add_argument(
        "--max-workers",
        type=int,
        default=0,
        help="with --workers auto: the most workers (default: one per input partition)",
    )
    sp.add_argument(
        "--steps",
        default=None,
        metavar="RATExSECONDS,...",
        help="send at these rates for these long, one after the other, instead of "
        "--minutes at --rate/--fraction: e.g. 2x120,10x240,2x240 (a step response, "
        "for --workers auto; rows are worth shortening with --row-seconds)",
    )
    sp.add_argument(
        "--max-batch",
        type=int,
        default=WorkerSettings.max_batch,
        help="largest model batch of a worker (default %(default)s, as serve's)",
    )
    sp.add_argument(
        "--row-seconds",
        type=float,
        default=60.0,
        help="seconds between rows (default %(default)s: one a minute, numbered as minutes; "
        "shorter for a quick try)",
    )
    sp.add_argument(
        "--lag-bound",
        type=float,
        default=None,
        metavar="RECORDS",
        help="lag above this after warm-up fails the 'lag bounded' target "
        f"(default: {LAG_BOUND_SECONDS:g} s of input at the target rate)",
    )
    sp.add_argument(
        "--cache-mb",
        type=float,
        default=WorkerSettings.cache_mb,
        metavar="MB",
        help="the workers' feature cache, as serve's --cache-mb; a target checks no worker's "
        "cache goes above it (default %(default)s)",
    )
    sp.add_argument(
        "--seed", type=int, default=0, help="seed of the record mix (default %(default)s)"
    )
    sp.add_argument(
        "--out",
        default=measure.DEFAULT_OUT,
        help="folder for soak.csv (rows), soak.json (summary), soak.png and soak.txt (curves) "
        "(default %(default)s)",
    )
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit code 0 when every target was met, 1 when one was not."""
    from services.errors import ConfigError

    if args.minutes <= 0 or args.row_seconds <= 0:
        raise ConfigError("--minutes and --row-seconds must be positive")
    if not 0 < args.fraction <= 1.5:
        raise ConfigError("--fraction must be in (0, 1.5]")
    if not 0 <= args.bad_fraction <= 1:
        raise ConfigError("--bad-fraction must be in [0, 1]")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be positive")
    autoscale = args.workers == "auto"
    workers = 1 if autoscale else int(args.workers) if args.workers.isdigit() else 0
    if args.capacity_images < 1 or workers < 1:
        raise ConfigError("--capacity-images must be at least 1, --workers a number or auto")
    steps = parse_steps(args.steps) if args.steps else None
    summary = measure.run_soak(
        encoder_spec=args.encoder,
        workers=workers,
        max_batch=args.max_batch,
        autoscale=autoscale,
        max_workers=args.max_workers,
        steps=steps,
        minutes=sum(sec for _, sec in steps) / 60 if steps else args.minutes,
        rate=steps[0][0] if steps else args.rate,
        fraction=args.fraction,
        capacity_images=args.capacity_images,
        bad_fraction=args.bad_fraction,
        row_seconds=args.row_seconds,
        lag_bound=args.lag_bound,
        seed=args.seed,
        out=Path(args.out),
        cache_mb=args.cache_mb,
    )
    return 0 if summary["all_targets_met"] or steps else 1
