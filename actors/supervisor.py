"""The serving driver: starts (or joins) Ray, runs the WorkerPool, serves /metrics,
/healthz and /readyz, resizes the pool under `--workers auto`, and when told to stop
(SIGTERM/SIGINT, or `stop`) drains the workers, commits and returns 0.

`run_service` is what `dmguard serve` runs; `running_service` runs the same driver in
a thread of this process (the demo and the benchmarks), ready when its block starts.
"""

from __future__ import annotations

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

from services.config import ServeSettings

if TYPE_CHECKING:
    from services.metrics import DriverMetrics
    from training.model.registry import HeadMeta, Registry

log = logging.getLogger(__name__)

BROKER_CHECK_S = 5.0
SCALE_CHECK_S = 5.0  # how often `--workers auto` samples the fleet


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
    from training.model.registry import Registry

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
        min_workers=min(settings.min_workers, most),
        max_workers=most,
        window_s=settings.scale_window_s,
        cooldown_s=settings.scale_cooldown_s,
    )


def _maybe_resize(scaler, pool, metrics: DriverMetrics, readiness: Readiness) -> None:
    """Feed the autoscaler one sample of the fleet; resize the pool if it says so."""
    from actors.scaling import Sample

    now = time.monotonic()
    scaler.observe(
        Sample(now, metrics.lag_total(), metrics.records_counted(), metrics.idle_total())
    )
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
        target=run_service,
        args=(settings,),
        kwargs={"stop": stop, "metrics": metrics},
        daemon=True,
    )
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
