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
one GPU with 0.5 each); Ray pins the GPU through CUDA_VISIBLE_DEVICES. Custom
resources (`worker_resources`, e.g. {"detector": 1}) keep the workers on the
nodes started with them; a worker whose node is lost is restarted by Ray on
another node that has them, or waits until one joins.
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
from services.config import ServeSettings, WorkerSettings
from services.errors import DmguardError
from services.kafka_io import partition_count
from services.metrics import DriverMetrics
from training.errors import DeviceError

log = logging.getLogger(__name__)


def worker_resources(settings: ServeSettings, cluster_gpus: float) -> dict:
    """Ray resources for one worker: GPUs where the cluster has them, CPUs otherwise, and
    the custom resources asked for."""
    gpus = settings.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus > 0 and cluster_gpus < gpus:
        raise DeviceError(
            f"each worker asks for {gpus} GPUs but the Ray cluster has {cluster_gpus}: "
            "pass --gpus-per-worker 0 to run on CPUs, or start Ray where the GPUs are"
        )
    wanted = {"num_cpus": settings.cpus_per_worker, "num_gpus": gpus}
    if settings.worker_resources:
        wanted["resources"] = dict(settings.worker_resources)
    return wanted


def split_partitions(partitions: int, workers: int) -> list[tuple[int, ...]]:
    """Round-robin: worker i reads every partition p with p % workers == i."""
    return [tuple(range(i, partitions, workers)) for i in range(workers)]


def worker_threads(cpus: float) -> int:
    return max(1, math.floor(cpus))


class WorkersNotReady(DmguardError):
    """The workers did not come up in time; the message says what to check."""


class WorkerPool:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.actors: list[Any] = []
        self.shares: list[tuple[int, ...]] = []  # the partitions each actor should read
        self.partitions = 0  # of the input topic
        self._pending: dict[int, Any] = {}  # actor index -> report ObjectRef in flight
        self._assigning: dict[int, Any] = {}  # actor index -> assign ObjectRef in flight
        self.statuses: dict[int, dict] = {}
        self._remote: Any = None
        self._worker_settings: WorkerSettings | None = None

    def start(self, workers: int | None = None) -> None:
        """Start `workers` actors (default `settings.workers`, at most one per input
        partition) and give each its share of the partitions."""
        cluster = ray.cluster_resources()
        resources = worker_resources(self.settings, cluster.get("GPU", 0.0))
        for name, amount in self.settings.worker_resources.items():
            if cluster.get(name, 0.0) < amount:
                log.warning(
                    "no node of the Ray cluster offers %s of resource %r yet: the workers "
                    "wait until one joins",
                    amount,
                    name,
                )
        worker_settings = self.settings.worker
        if worker_settings.threads <= 1:
            worker_settings = replace(
                worker_settings, threads=worker_threads(resources["num_cpus"])
            )
        if resources["num_gpus"] > 0 and worker_settings.device == "auto":
            worker_settings = replace(worker_settings, device="cuda")
        self._worker_settings = worker_settings
        self.partitions = partition_count(worker_settings.kafka, worker_settings.topics.images)
        wanted = workers or self.settings.workers
        if self.partitions < wanted:
            log.warning(
                "%d workers but only %d input partitions: %d workers will idle",
                wanted,
                self.partitions,
                wanted - self.partitions,
            )
        self._remote = ray.remote(DetectorWorker).options(
            **resources, max_restarts=-1, max_task_retries=0, max_concurrency=4
        )
        try:
            self.actors = self._new_actors(0, wanted, self.settings.worker_start_timeout_s)
        except GetTimeoutError:
            raise WorkersNotReady(
                f"the {wanted} workers did not all start and load their model within "
                f"{self.settings.worker_start_timeout_s:g} s (--worker-start-timeout): on a "
                "cluster, is there a node with room for them, and has it pulled its image?"
            ) from None
        self.shares = split_partitions(self.partitions, wanted)
        ray.get([a.assign.remote(s) for a, s in zip(self.actors, self.shares, strict=True)])

    def _new_actors(self, first: int, count: int, ready_timeout_s: float) -> list[Any]:
        """`count` actors standing by (no partitions), once their models are loaded.

        Built without partitions, so that one Ray restarts after a crash stands by too
        until `collect` gives it its current share: it can never read partitions that
        have moved to another worker since it was built."""
        standby = replace(self._worker_settings, partitions=())
        actors = [self._remote.remote(standby, str(first + i)) for i in range(count)]
        deadline = time.monotonic() + ready_timeout_s
        try:
            for actor in actors:  # constructors load the model: wait for them
                ray.get(actor.pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except GetTimeoutError:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            raise
        return actors

    def resize(self, workers: int, metrics: DriverMetrics, *, timeout_s: float = 60.0) -> int:
        """Grow or shrink to `workers` (1 to the partition count) and hand out the
        partitions again; returns the new size.

        New actors load their model first, while the others keep working. Then every
        worker drains and commits what it reads (`DetectorWorker.assign(())`), and only
        then gets its new share: no partition is ever read by two workers, and each new
        reader starts at the offset its predecessor committed, so no committed record is
        lost or done twice."""
        workers = max(1, min(workers, self.partitions))
        if workers == len(self.actors):
            return workers
        try:
            more = max(0, workers - len(self.actors))
            grown = self._new_actors(len(self.actors), more, self.settings.worker_start_timeout_s)
        except GetTimeoutError:  # no room in the cluster (yet): stay as we are
            log.warning(
                "no room in the Ray cluster for %d workers; staying at %d",
                workers,
                len(self.actors),
            )
            return len(self.actors)
        self._settle_assigns()
        releases = [a.assign.remote((), timeout_s) for a in self.actors]
        for ref in releases:
            try:
                ray.get(ref, timeout=timeout_s + 10)
            except (RayActorError, GetTimeoutError) as exc:  # it restarts standing by
                log.warning("a worker did not drain cleanly: %s", exc)
        for i, actor in enumerate(self.actors[workers:], start=workers):
            self._last_report(i, actor, metrics)
            ray.kill(actor, no_restart=True)
        self.actors = self.actors[:workers] + grown
        self.shares = split_partitions(self.partitions, workers)
        ray.get([a.assign.remote(s) for a, s in zip(self.actors, self.shares, strict=True)])
        return workers

    def _last_report(self, i: int, actor: Any, metrics: DriverMetrics) -> None:
        """Apply the stats of a worker about to go, and forget it."""
        self._pending.pop(i, None)
        self.statuses.pop(i, None)
        try:
            metrics.apply(ray.get(actor.report.remote(), timeout=10)["stats"])
        except (RayActorError, GetTimeoutError):
            pass

    def _settle_assigns(self) -> None:
        for ref in self._assigning.values():
            try:
                ray.get(ref, timeout=70)
            except (RayActorError, GetTimeoutError):
                pass
        self._assigning.clear()

    def _reconcile(self, i: int, status: dict) -> None:
        """A worker standing by that should read partitions (Ray restarted it): assign."""
        if i < len(self.shares) and self.shares[i] and not status.get("partitions"):
            if i not in self._assigning:
                self._assigning[i] = self.actors[i].assign.remote(self.shares[i])

    def collect(self, metrics: DriverMetrics, *, timeout_s: float = 0.0) -> int:
        """Apply every report that has arrived, and give a worker Ray restarted its
        partitions again; returns how many workers answered."""
        if self._assigning:
            done, _ = ray.wait(
                list(self._assigning.values()), num_returns=len(self._assigning), timeout=0
            )
            for i in [i for i, ref in self._assigning.items() if ref in done]:
                try:
                    ray.get(self._assigning.pop(i))
                except RayActorError:
                    pass  # restarting again: the next report says so
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
            self._reconcile(i, report["status"])
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
