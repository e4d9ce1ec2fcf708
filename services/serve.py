"""`dmguard serve`: the driver. Starts (or joins) Ray, runs the WorkerPool,
serves /metrics, /healthz and /readyz, and on SIGTERM/SIGINT drains the
workers, commits and returns 0."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from services.broker import kafka_answers
from services.config import ServeSettings
from services.kafka_io import ensure_topics
from services.metrics import DriverMetrics, MetricsServer
from services.ray_cluster import init_ray
from training.errors import RegistryError
from training.registry import HeadMeta, Registry

log = logging.getLogger(__name__)

BROKER_CHECK_S = 5.0


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


def _head_to_start_with(registry: Registry) -> HeadMeta:
    """The head CURRENT names or, when CURRENT or that head cannot be read, the
    newest promoted head that loads (the workers make the same choice and /readyz
    reports the problem). Refuses to start without any head; the RegistryError
    says how to get one."""
    try:
        return registry.load()[1]
    except RegistryError as exc:
        found = registry.last_good()
        if found is None:
            raise
        log.error(
            "%s; starting with the newest promoted head that loads, %s", exc, found[1].version
        )
        return found[1]


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

    meta = _head_to_start_with(Registry(settings.worker.registry))
    kafka, topics = settings.worker.kafka, settings.worker.topics
    ensure_topics(kafka, topics)
    needed_cpus = max(os.cpu_count() or 1, settings.workers * settings.cpus_per_worker + 1)
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
    print(
        f"metrics on http://{settings.metrics_host}:{server.port}/metrics",
        file=sys.stderr,
        flush=True,
    )
    try:
        pool.start()
        print(
            f"serving: {settings.workers} workers, head {meta.version} ({meta.encoder}), "
            f"{topics.images} -> {topics.verdicts}",
            file=sys.stderr,
            flush=True,
        )
        next_broker_check = 0.0
        while not stop.is_set():
            pool.collect(metrics, timeout_s=0.0)
            if time.monotonic() >= next_broker_check:
                readiness.broker_ok = kafka_answers(kafka.bootstrap_servers, **kafka.client_extra)
                next_broker_check = time.monotonic() + BROKER_CHECK_S
            readiness.workers_ready = sum(1 for s in pool.statuses.values() if s.get("running"))
            readiness.head = ",".join(sorted({s["head_version"] for s in pool.statuses.values()}))
            readiness.problems = [
                f"worker {s['worker_id']}: {s['registry_problem']}"
                for s in pool.statuses.values()
                if s.get("registry_problem")
            ]
            stop.wait(settings.stats_interval_s)
        print("stopping: draining in-flight work", file=sys.stderr, flush=True)
        drained = pool.stop(metrics)
        print(
            "stopped" + ("" if drained else " (some work was not drained; it will be redelivered)"),
            file=sys.stderr,
            flush=True,
        )
        return 0
    finally:
        server.stop()
        ray.shutdown()
