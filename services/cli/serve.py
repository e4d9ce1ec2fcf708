"""`dmguard serve`: the driver. Starts (or joins) Ray, runs the WorkerPool,
serves /metrics, /healthz and /readyz, and on SIGTERM/SIGINT drains the
workers, commits and returns 0. `running_service` runs the same driver in a
thread of this process (the demo and the bench)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from services.cli.common import DEVICES, kafka_args, registry_arg
from services.config import (
    ServeSettings,
    WorkerSettings,
    default_feature_log,
    default_state_dir,
    serve_settings,
)
from services.fetch import DEFAULT_MAX_BYTES, FetchPolicy
from services.images import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from services.metrics import DriverMetrics
    from training.registry import HeadMeta, Registry

log = logging.getLogger(__name__)

BROKER_CHECK_S = 5.0
SCALE_CHECK_S = 5.0  # how often `--workers auto` samples the fleet


# -------------------------------------------------------------------- the command
def add_parser(sub) -> None:
    sp = sub.add_parser("serve", help="run the detector on the stream until SIGTERM/SIGINT")
    kafka_args(sp)
    registry_arg(sp)
    sp.add_argument(
        "--workers",
        type=_workers,
        default=ServeSettings.workers,
        help="DetectorWorker actors (one per GPU, or per CPU slot), or `auto`: as many as "
        "the stream needs, from the consumer lag and how busy the workers are, between "
        "--min-workers and --max-workers",
    )
    sp.add_argument("--min-workers", type=int, default=ServeSettings.min_workers,
                    help="with --workers auto: the fewest workers (default %(default)s)")  # fmt: skip
    sp.add_argument("--max-workers", type=int, default=ServeSettings.max_workers,
                    help="with --workers auto: the most workers (default: one per input "
                         "partition, which is also the cap)")  # fmt: skip
    sp.add_argument("--scale-window", type=float, default=ServeSettings.scale_window_s,
                    metavar="SECONDS",
                    help="with --workers auto: judge the last this many seconds of lag and "
                         "load (default %(default)s)")  # fmt: skip
    sp.add_argument("--scale-cooldown", type=float, default=ServeSettings.scale_cooldown_s,
                    metavar="SECONDS",
                    help="with --workers auto: decide again no sooner than this after a "
                         "resize (default %(default)s)")  # fmt: skip
    sp.add_argument("--metrics-port", type=int, default=ServeSettings.metrics_port)
    sp.add_argument("--metrics-host", default=ServeSettings.metrics_host)
    sp.add_argument(
        "--max-batch", type=int, default=WorkerSettings.max_batch, help="largest model batch"
    )
    sp.add_argument(
        "--max-wait-ms",
        type=int,
        default=WorkerSettings.max_wait_ms,
        help="longest an image waits for its batch to fill",
    )
    sp.add_argument(
        "--fetch-threads",
        type=int,
        default=WorkerSettings.fetch_threads,
        help="fetch/decode threads per worker",
    )
    sp.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch from loopback/private/link-local addresses too (never on a public service)",
    )
    sp.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        help="allow one private network only, e.g. 127.0.0.1/32 (repeatable)",
    )
    sp.add_argument(
        "--allow-file-urls", action="store_true", help="accept file:// URLs (local testing)"
    )
    sp.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest image download"
    )
    sp.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest decoded image"
    )
    sp.add_argument(
        "--fetch-timeout",
        type=float,
        default=FetchPolicy.total_timeout_s,
        help="seconds one fetch may take in all: DNS, connect, headers and body "
        "(default %(default)s)",
    )
    sp.add_argument("--group-id", default="dmguard", help="Kafka consumer group of the workers")
    sp.add_argument("--cpus-per-worker", type=float, default=ServeSettings.cpus_per_worker)
    sp.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per worker, fractional allowed (default: 1 where the cluster has GPUs, else 0)",
    )
    sp.add_argument(
        "--worker-resources",
        type=_resources,
        default={},
        metavar="JSON",
        help="Ray custom resources each worker reserves, e.g. '{\"detector\": 1}' to keep "
        "the workers on the nodes started with `ray start --resources` offering them",
    )
    sp.add_argument("--device", choices=DEVICES, default="auto")
    sp.add_argument("--feature-log", default=default_feature_log(),
                    help="folder or URI where workers log embeddings for retraining "
                         "(default: $DMGUARD_FEATURE_LOG or %(default)s)")  # fmt: skip
    sp.add_argument("--no-feature-log", action="store_true", help="do not log embeddings")
    sp.add_argument("--state-dir", default=default_state_dir(),
                    help="where workers note what they were processing, so that a record "
                         "that crashes its worker twice is dead-lettered instead of crashing "
                         "it for ever; every node must see it (default: $DMGUARD_STATE_DIR or "
                         "REGISTRY/worker-state)")  # fmt: skip
    sp.add_argument(
        "--exactly-once",
        action="store_true",
        help="each worker commits its outputs and the offsets they answer in one Kafka "
        "transaction: read_committed readers see one output per record, also after a "
        "crash (default: at least once, duplicates possible after a crash)",
    )
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = serve_settings(
        bootstrap=args.bootstrap, group_id=args.group_id, registry=args.registry,
        workers=args.min_workers if args.workers == "auto" else args.workers,
        autoscale=args.workers == "auto", min_workers=args.min_workers,
        max_workers=args.max_workers, scale_window_s=args.scale_window,
        scale_cooldown_s=args.scale_cooldown, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, metrics_host=args.metrics_host,
        metrics_port=args.metrics_port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        fetch_threads=args.fetch_threads, max_pixels=args.max_pixels, device=args.device,
        feature_log=None if args.no_feature_log else args.feature_log, state_dir=args.state_dir,
        allow_private_urls=args.allow_private_urls, allow_network=args.allow_network,
        allow_file_urls=args.allow_file_urls, max_bytes=args.max_bytes,
        fetch_timeout=args.fetch_timeout, exactly_once=args.exactly_once,
        worker_resources=args.worker_resources,
    )  # fmt: skip
    return run_service(settings)


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


# -------------------------------------------------------------------- the driver
class Readiness:
    """/readyz: workers up with a head loaded, the broker answering, and the
    registry readable (a worker that cannot read it keeps serving its last good
    head, but operators must hear of it)."""

    def __init__(self, expected_workers: int) -> None:
        self.expected = expected_workers
        self.workers_ready = 0
        self.broker_ok = False
        self.head = ""
        self.problems: list[str] = []

    def __call__(self) -> tuple[bool, str]:
        if not self.broker_ok:
            return False, "broker does not answer"
        if self.workers_ready < self.expected:
            return False, f"{self.workers_ready}/{self.expected} workers ready"
        if self.problems:
            return False, "; ".join(self.problems)
        return True, f"ready: {self.workers_ready} workers, head {self.head}"


def head_to_start_with(registry: Registry) -> HeadMeta:
    """The head the workers will serve (`Registry.load_serving`): refuses to start
    without any head (the RegistryError says how to get one); a problem with
    CURRENT is logged here and reported by /readyz."""
    _, meta, problem = registry.load_serving()
    if problem is not None:
        log.error("%s", problem)
    return meta


def run_service(
    settings: ServeSettings,
    *,
    stop: threading.Event | None = None,
    metrics: DriverMetrics | None = None,
) -> int:
    """Run until `stop` is set (or a signal arrives); returns the exit code.

    `metrics` lets a caller in the same process (the benchmark) read the counters directly.
    """
    import ray

    from actors.pool import WorkerPool
    from services.broker import kafka_answers
    from services.kafka_io import ensure_topics, partition_count
    from services.metrics import DriverMetrics, MetricsServer
    from services.ray_cluster import init_ray
    from training.registry import Registry

    meta = head_to_start_with(Registry(settings.worker.registry))
    kafka, topics = settings.worker.kafka, settings.worker.topics
    ensure_topics(kafka, topics)
    most = settings.workers
    if settings.autoscale:  # room for the most workers it may grow to, on a local Ray
        most = max(most, settings.max_workers or partition_count(kafka, topics.images))
    needed_cpus = max(os.cpu_count() or 1, most * settings.cpus_per_worker + 1)
    init_ray(num_cpus=needed_cpus)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        # After ray.init, which installs a SIGTERM handler of its own that exits at once.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    metrics = metrics or DriverMetrics()
    readiness = Readiness(settings.workers)
    pool = WorkerPool(settings)
    server = MetricsServer(
        metrics,
        readiness,
        host=settings.metrics_host,
        port=settings.metrics_port,
        status=lambda: {"workers": list(pool.statuses.values())},
    ).start()
    _say(f"metrics on http://{settings.metrics_host}:{server.port}/metrics")
    try:
        pool.start()
        scaler = _autoscaler(settings, pool.partitions) if settings.autoscale else None
        _say(
            f"serving: {settings.workers} workers"
            + (f" (auto, {scaler.min_workers} to {scaler.max_workers})" if scaler else "")
            + f", head {meta.version} ({meta.encoder}), {topics.images} -> {topics.verdicts}"
        )
        next_broker_check = next_scale_check = 0.0
        while not stop.is_set():
            pool.collect(metrics, timeout_s=0.0)
            if scaler is not None and time.monotonic() >= next_scale_check:
                _maybe_resize(scaler, pool, metrics, readiness)
                next_scale_check = time.monotonic() + SCALE_CHECK_S
            if time.monotonic() >= next_broker_check:
                readiness.broker_ok = kafka_answers(kafka.bootstrap_servers, **kafka.client_extra)
                if not readiness.broker_ok:
                    metrics.broker_errors.labels("health_check").inc()
                next_broker_check = time.monotonic() + BROKER_CHECK_S
            readiness.workers_ready = sum(1 for s in pool.statuses.values() if s.get("running"))
            readiness.head = ",".join(sorted({s["head_version"] for s in pool.statuses.values()}))
            readiness.problems = [
                f"worker {s['worker_id']}: {s['registry_problem']}"
                for s in pool.statuses.values()
                if s.get("registry_problem")
            ]
            stop.wait(settings.stats_interval_s)
        _say("stopping: draining in-flight work")
        drained = pool.stop(metrics)
        _say(
            "stopped" + ("" if drained else " (some work was not drained; it will be redelivered)")
        )
        return 0
    finally:
        server.stop()
        ray.shutdown()


def _autoscaler(settings: ServeSettings, partitions: int):
    from actors.scaling import Autoscaler

    most = min(settings.max_workers or partitions, partitions)
    return Autoscaler(
        min_workers=min(settings.min_workers, most), max_workers=most,
        window_s=settings.scale_window_s, cooldown_s=settings.scale_cooldown_s,
    )  # fmt: skip


def _maybe_resize(scaler, pool, metrics: DriverMetrics, readiness: Readiness) -> None:
    """Feed the autoscaler one sample of the fleet; resize the pool if it says so."""
    from actors.scaling import Sample

    now = time.monotonic()
    scaler.observe(Sample(now, metrics.lag_total(), metrics.records_counted(),
                          metrics.idle_total()))  # fmt: skip
    current = len(pool.actors)
    wanted = scaler.desired(current, now)
    if wanted == current:
        return
    _say(f"scaling: {current} -> {wanted} workers (lag {metrics.lag_total():.0f})")
    size = pool.resize(wanted, metrics)
    if size != current:
        readiness.expected = size
        metrics.resizes.inc()
    if size != wanted:
        _say(f"scaling: stayed at {size} workers (no room for more in the Ray cluster)")
    scaler.resized(time.monotonic())


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def running_service(
    settings: ServeSettings, metrics: DriverMetrics | None = None, ready_timeout_s: float = 180.0
) -> Iterator[str]:
    """`serve` in a thread of this process (sharing its Ray), ready when the block starts;
    yields the base URL of its /metrics, /readyz and /status (`settings.metrics_port` must
    be a real port, not 0); stopped and drained on exit."""
    from services.errors import DmguardError
    from services.poll import wait_until

    stop = threading.Event()
    thread = threading.Thread(
        target=run_service, args=(settings,), kwargs={"stop": stop, "metrics": metrics},
        daemon=True,
    )  # fmt: skip
    thread.start()
    base = f"http://127.0.0.1:{settings.metrics_port}"

    def ready() -> bool:
        if not thread.is_alive():
            raise DmguardError("serve stopped before it was ready (see the log above)")
        return _get_ok(f"{base}/readyz")

    try:
        wait_until(ready, ready_timeout_s, what="serve to be ready (see the log above)")
        yield base
    finally:
        stop.set()
        thread.join(120)


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
