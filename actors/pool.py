"""WorkerPool: starts the DetectorWorker actors, gathers their reports, stops them.

Partitions: the pool, not Kafka's group protocol, hands out the input
partitions (worker i reads partitions p with p % workers == i) and every
worker commits under the same group id. Ray already supervises the workers,
so a crashed worker comes back as the same actor with the same partitions and
resumes from their last commit at once: no join delay, no rebalance storm,
no duplicate owners. It also keeps the service independent of the broker's
group coordinator (the embedded Tansu broker cannot re-form a group whose
first members have all gone: a second `serve` never got an assignment).
Adding partitions to the topic takes a restart of `serve`.

Resources: each worker reserves `cpus_per_worker` CPUs and, where the
cluster has GPUs, `gpus_per_worker` GPUs (fractional allowed: two workers on
one GPU with 0.5 each); Ray pins the GPU through CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.worker import DetectorWorker
from services.config import ServeSettings
from services.kafka_io import partition_count
from services.metrics import DriverMetrics
from training.errors import DeviceError

log = logging.getLogger(__name__)


def worker_resources(settings: ServeSettings, cluster_gpus: float) -> dict[str, float]:
    """Ray resources for one worker: GPUs where the cluster has them, CPUs otherwise."""
    gpus = settings.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus > 0 and cluster_gpus < gpus:
        raise DeviceError(
            f"each worker asks for {gpus} GPUs but the Ray cluster has {cluster_gpus}: "
            "pass --gpus-per-worker 0 to run on CPUs, or start Ray where the GPUs are"
        )
    return {"num_cpus": settings.cpus_per_worker, "num_gpus": gpus}


def split_partitions(partitions: int, workers: int) -> list[tuple[int, ...]]:
    """Round-robin: worker i reads every partition p with p % workers == i."""
    return [tuple(range(i, partitions, workers)) for i in range(workers)]


def worker_threads(cpus: float) -> int:
    return max(1, math.floor(cpus))


class WorkerPool:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.actors: list[Any] = []
        self._pending: dict[int, Any] = {}  # actor index -> report ObjectRef in flight
        self.statuses: dict[int, dict] = {}

    def start(self, *, ready_timeout_s: float = 120.0) -> None:
        resources = worker_resources(self.settings, ray.cluster_resources().get("GPU", 0.0))
        worker_settings = self.settings.worker
        if worker_settings.threads <= 1:
            worker_settings = replace(
                worker_settings, threads=worker_threads(resources["num_cpus"])
            )
        if resources["num_gpus"] > 0 and worker_settings.device == "auto":
            worker_settings = replace(worker_settings, device="cuda")
        n_partitions = partition_count(worker_settings.kafka, worker_settings.topics.images)
        if n_partitions < self.settings.workers:
            log.warning(
                "%d workers but only %d input partitions: %d workers will idle",
                self.settings.workers,
                n_partitions,
                self.settings.workers - n_partitions,
            )
        shares = split_partitions(n_partitions, self.settings.workers)
        remote = ray.remote(DetectorWorker).options(
            **resources, max_restarts=-1, max_task_retries=0, max_concurrency=4
        )
        self.actors = [
            remote.remote(replace(worker_settings, partitions=share), str(i))
            for i, share in enumerate(shares)
        ]
        deadline = time.monotonic() + ready_timeout_s
        for actor in self.actors:  # constructors load the model: wait for them
            ray.get(actor.pid.remote(), timeout=max(1.0, deadline - time.monotonic()))

    def collect(self, metrics: DriverMetrics, *, timeout_s: float = 0.0) -> int:
        """Apply every report that has arrived; returns how many workers answered."""
        for i, actor in enumerate(self.actors):
            if i not in self._pending:
                self._pending[i] = actor.report.remote()
        answered = 0
        ready, _ = ray.wait(
            list(self._pending.values()), num_returns=len(self._pending), timeout=timeout_s
        )
        ready_set = set(ready)
        for i, ref in list(self._pending.items()):
            if ref not in ready_set:
                continue
            del self._pending[i]
            try:
                report = ray.get(ref)
            except RayActorError:
                self.statuses.pop(i, None)  # restarting; Ray brings it back
                continue
            metrics.apply(report["stats"])
            self.statuses[i] = report["status"]
            answered += 1
        models = {(s["encoder"], s["head_version"]) for s in self.statuses.values()}
        metrics.set_fleet(len(self.statuses), models)
        return answered

    def stop(self, metrics: DriverMetrics, *, timeout_s: float = 60.0) -> bool:
        """Drain every worker; True when all finished their in-flight work."""
        for ref in self._pending.values():  # reports already asked for still count
            try:
                metrics.apply(ray.get(ref, timeout=timeout_s)["stats"])
            except (RayActorError, GetTimeoutError):
                pass
        self._pending.clear()
        refs = [a.stop.remote(timeout_s) for a in self.actors]
        drained = True
        for ref in refs:
            try:
                result = ray.get(ref, timeout=timeout_s + 10)
            except (RayActorError, GetTimeoutError) as exc:
                log.warning("a worker did not stop cleanly: %s", exc)
                drained = False
                continue
            metrics.apply(result["stats"])
            drained &= result["drained"]
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.statuses.clear()
        metrics.set_fleet(0, set())
        return drained
