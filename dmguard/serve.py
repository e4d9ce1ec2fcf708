"""`dmguard serve`: its flags, read into ServeSettings, and the driver
(actors.supervisor) run until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from actors.supervisor import run_service
from dmguard.common import DEVICES, kafka_args, registry_arg
from services.config import (
    KafkaSettings,
    ServeSettings,
    WorkerSettings,
    default_feature_log,
    default_state_dir,
    serve_settings,
)
from services.fetch import DEFAULT_MAX_BYTES, FetchPolicy
from services.images import DEFAULT_MAX_PIXELS
from services.provenance import MODES, ProvenanceSettings


# -------------------------------------------------------------------- the command
def add_parser(sub) -> None:
    sp = sub.add_parser("serve", help="run the detector on the stream until SIGTERM/SIGINT")
    kafka_args(sp)
    registry_arg(sp)
    _pool_args(sp)
    _worker_args(sp)
    _fetch_args(sp)
    sp.set_defaults(func=run)


def _pool_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("the workers, their resources and /metrics")
    g.add_argument(
        "--workers",
        type=_workers,
        default=ServeSettings.workers,
        help="DetectorWorker actors (one per GPU, or per CPU slot), or `auto`: as many as "
        "the stream needs, from the consumer lag and how busy the workers are, between "
        "--min-workers and --max-workers",
    )
    g.add_argument(
        "--min-workers",
        type=int,
        default=ServeSettings.min_workers,
        help="with --workers auto: the fewest workers (default %(default)s)",
    )
    g.add_argument(
        "--max-workers",
        type=int,
        default=ServeSettings.max_workers,
        help="with --workers auto: the most workers (default: one per input "
        "partition, which is also the cap)",
    )
    g.add_argument(
        "--scale-window",
        dest="scale_window_s",
        type=float,
        default=ServeSettings.scale_window_s,
        metavar="SECONDS",
        help="with --workers auto: judge the last this many seconds of lag and "
        "load (default %(default)s)",
    )
    g.add_argument(
        "--scale-cooldown",
        dest="scale_cooldown_s",
        type=float,
        default=ServeSettings.scale_cooldown_s,
        metavar="SECONDS",
        help="with --workers auto: decide again no sooner than this after a "
        "resize (default %(default)s)",
    )
    g.add_argument(
        "--cpus-per-worker",
        type=float,
        default=ServeSettings.cpus_per_worker,
        help="CPUs each worker reserves in Ray (default %(default)s)",
    )
    g.add_argument(
        "--gpus-per-worker",
        type=float,
        default=ServeSettings.gpus_per_worker,
        help="GPUs per worker, fractional allowed (default: 1 where the cluster has GPUs, else 0)",
    )
    g.add_argument(
        "--worker-resources",
        type=_resources,
        default=None,
        metavar="JSON",
        help="Ray custom resources each worker reserves, e.g. '{\"detector\": 1}' to keep "
        "the workers on the nodes started with `ray start --resources` offering them",
    )
    g.add_argument(
        "--worker-start-timeout",
        dest="worker_start_timeout_s",
        type=float,
        default=ServeSettings.worker_start_timeout_s,
        metavar="SECONDS",
        help="how long a new worker may take to start and load its model (a new node and "
        "its image pull included) before serve gives up on it (default %(default)s)",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        default=ServeSettings.metrics_port,
        help="port of /metrics, /healthz, /readyz and /status (default %(default)s)",
    )
    g.add_argument(
        "--metrics-host",
        default=ServeSettings.metrics_host,
        help="address the metrics server listens on (default %(default)s)",
    )


def _fetch_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("fetching and decoding images: what may be fetched, and how much")
    g.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch from loopback/private/link-local addresses too (never on a public service)",
    )
    g.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        help="allow one private network only, e.g. 127.0.0.1/32 (repeatable)",
    )
    g.add_argument(
        "--allow-file-urls", action="store_true", help="accept file:// URLs (local testing)"
    )
    g.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest image download"
    )
    g.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest decoded image"
    )
    g.add_argument(
        "--fetch-timeout",
        type=float,
        default=FetchPolicy.total_timeout_s,
        help="seconds one fetch may take in all: DNS, connect, headers and body "
        "(default %(default)s)",
    )


def _worker_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group(
        "each worker: batching, device, feature log, crash-loop state, delivery"
    )
    g.add_argument(
        "--group-id", default=KafkaSettings.group_id, help="Kafka consumer group of the workers"
    )
    g.add_argument(
        "--max-batch", type=int, default=WorkerSettings.max_batch, help="largest model batch"
    )
    g.add_argument(
        "--max-wait-ms",
        type=int,
        default=WorkerSettings.max_wait_ms,
        help="longest an image waits for its batch to fill",
    )
    g.add_argument(
        "--fetch-threads",
        type=int,
        default=WorkerSettings.fetch_threads,
        help="fetch/decode threads per worker",
    )
    g.add_argument(
        "--device",
        choices=DEVICES,
        default=WorkerSettings.device,
        help="where the encoder runs: auto picks CUDA on a GPU worker (default %(default)s)",
    )
    g.add_argument(
        "--feature-log",
        default=default_feature_log(),
        help="folder or URI where workers log embeddings for retraining "
        "(default: $DMGUARD_FEATURE_LOG or %(default)s)",
    )
    g.add_argument("--no-feature-log", action="store_true", help="do not log embeddings")
    g.add_argument(
        "--state-dir",
        default=default_state_dir(),
        help="where workers note what they were processing, so that a record "
        "that crashes its worker twice is dead-lettered instead of crashing "
        "it for ever; every node must see it (default: $DMGUARD_STATE_DIR or "
        "REGISTRY/worker-state)",
    )
    g.add_argument(
        "--cache-mb",
        type=float,
        default=WorkerSettings.cache_mb,
        metavar="MB",
        help="memory each worker may keep of recently seen files' encoder features, by "
        "content hash: a repeated upload skips decode and encoder, the serving head still "
        "scores it; 0 turns it off (default %(default)s)",
    )
    g.add_argument(
        "--provenance",
        choices=MODES,
        default=ProvenanceSettings.mode,
        help="markers in the file (C2PA, IPTC source type, generator metadata): on = a "
        "declared AI marker makes the verdict 'generated'; evidence = report only; off = "
        "not read (default %(default)s; docs/provenance.md)",
    )
    g.add_argument(
        "--c2pa-trust-anchors",
        type=Path,
        default=None,
        metavar="PEM",
        help="certificate authorities whose C2PA signers count as verified (a PEM bundle; "
        "default: none, so no manifest is verified)",
    )
    g.add_argument(
        "--exactly-once",
        action="store_true",
        help="each worker commits its outputs and the offsets they answer in one Kafka "
        "transaction: read_committed readers see one output per record, also after a "
        "crash (default: at least once, duplicates possible after a crash)",
    )


# What the parser holds besides serve's settings; every other dest is a keyword of
# services.config.serve_settings (which refuses an unknown one).
_NOT_SETTINGS = {
    "func",
    "command",
    "verbose",
    "debug",
    "no_feature_log",
    "worker_resources",
    "provenance",
    "c2pa_trust_anchors",
}


def run(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    if args.workers == "auto":
        flags.update(autoscale=True, workers=args.min_workers)
    if args.no_feature_log:
        flags["feature_log"] = None
    if args.worker_resources is not None:
        flags["worker_resources"] = args.worker_resources
    anchors = args.c2pa_trust_anchors.read_text() if args.c2pa_trust_anchors else None
    flags["provenance"] = ProvenanceSettings(mode=args.provenance, trust_anchors=anchors)
    return run_service(serve_settings(**flags))


def _workers(text: str) -> int | str:
    """--workers: a positive number, or `auto`."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of workers, or auto") from None
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1 worker")
    return n


def _resources(text: str) -> dict[str, float]:
    """--worker-resources: a JSON object of resource name -> positive amount."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        for k, v in value.items()
    ):
        raise argparse.ArgumentTypeError('a JSON object of positive amounts, e.g. {"detector": 1}')
    return {k: float(v) for k, v in value.items()}
