"""Metrics: workers count and time things locally (WorkerStats), the driver
merges what they report into one prometheus_client registry (DriverMetrics)
and serves it with /healthz and /readyz (MetricsServer).

Why workers do not serve /metrics themselves: one scrape target covers all
workers on all nodes, and a restarted worker does not reset the counters
operators see. A worker that crashes loses at most the counts since its last
report; its records are reprocessed and counted again.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.errors import DEAD_LETTER_CODES
from services.http import HttpServer, Response

STAGES = ("fetch", "provenance", "decode", "embed", "score", "produce")
OUTCOMES = ("verdict", "dead_letter")
CACHE_RESULTS = ("hit", "miss", "shared_fetch")
# Where a worker (or the driver's health check) found the broker away; see actors.stream.
BROKER_OPS = (
    "connect",
    "flush",
    "commit",
    "transaction",
    "produce",
    "lag",
    "client",
    "health_check",
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class WorkerStats:
    """Thread-safe local counts of one worker, drained by the driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
        self._observations: defaultdict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(
            list
        )
        self._gauges: dict[tuple[str, tuple[str, ...]], float] = {}

    def inc(self, name: str, *labels: str, n: float = 1) -> None:
        with self._lock:
            self._counts[(name, labels)] += n

    def observe(self, name: str, value: float, *labels: str) -> None:
        with self._lock:
            self._observations[(name, labels)].append(value)

    def set_gauge(self, name: str, value: float, *labels: str) -> None:
        with self._lock:
            self._gauges[(name, labels)] = value

    def clear_gauge(self, name: str) -> None:
        """Forget every value of gauge `name` (e.g. the lag of partitions no longer read)."""
        with self._lock:
            for key in [k for k in self._gauges if k[0] == name]:
                del self._gauges[key]

    def drain(self) -> dict[str, Any]:
        """Counts and observations since the last drain; the gauges' current values."""
        with self._lock:
            out = {
                "counts": dict(self._counts),
                "observations": dict(self._observations),
                "gauges": dict(self._gauges),
            }
            self._counts.clear()
            self._observations = defaultdict(list)
            return out


class DriverMetrics:
    """The service's metrics, in one registry, fed by WorkerStats.drain() reports."""

    def __init__(self) -> None:
        disable_created_metrics()  # *_created series double the scrape and no dashboard reads them
        r = self.registry = CollectorRegistry()
        self.records = PromCounter(
            "dmguard_records_total", "Input records finished, by outcome", ["outcome"], registry=r
        )
        self.verdicts = PromCounter(
            "dmguard_verdicts_total", "Verdicts produced, by verdict", ["verdict"], registry=r
        )
        self.dead_letters = PromCounter(
            "dmguard_dead_letters_total", "Dead-letter records, by code", ["code"], registry=r
        )
        self.head_swaps = PromCounter(
            "dmguard_head_swaps_total", "Heads loaded by running workers", registry=r
        )
        self.registry_errors = PromCounter(
            "dmguard_registry_errors_total",
            "Times a worker found the registry unreadable or a head it could not load",
            registry=r,
        )
        self.resizes = PromCounter(
            "dmguard_pool_resizes_total",
            "Times `serve --workers auto` grew or shrank the worker pool",
            registry=r,
        )
        self.idle_seconds = PromCounter(
            "dmguard_worker_idle_seconds_total",
            "Seconds workers waited for records with nothing in their pipeline (summed)",
            registry=r,
        )
        self.broker_errors = PromCounter(
            "dmguard_broker_errors_total",
            "Times the broker did not answer, by operation: connect, flush, commit, "
            "transaction, produce, lag, client (workers) and health_check (the driver)",
            ["op"],
            registry=r,
        )
        self.isolated = PromCounter(
            "dmguard_isolated_records_total",
            "Records processed one at a time after a worker died uncleanly (crash-loop breaker)",
            registry=r,
        )
        self.batch_size = Histogram(
            "dmguard_batch_size", "Images per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.provenance = PromCounter(
            "dmguard_provenance_total",
            "Provenance findings by kind and claim (services.provenance); kind=none for an "
            "image with none, result=decided when a marker made the verdict",
            ["kind", "result"],
            registry=r,
        )
        self.cache_lookups = PromCounter(
            "dmguard_cache_lookups_total",
            "Fetched files looked up in the workers' feature caches by content hash (hit, "
            "miss), and records that shared a fetch of the same URL in flight (shared_fetch)",
            ["result"],
            registry=r,
        )
        self.cache_saved_bytes = PromCounter(
            "dmguard_cache_saved_bytes_total",
            "Bytes not decoded again (cache hits) or not fetched again (shared fetches)",
            registry=r,
        )
        self.cache_saved_seconds = PromCounter(
            "dmguard_cache_saved_seconds_total",
            "Decode and encoder seconds the cache hits did not spend (what the first time cost)",
            registry=r,
        )
        self.cache_memory = Gauge(
            "dmguard_cache_memory_bytes",
            "Memory each worker's feature cache holds (bounded by --cache-mb)",
            ["worker"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "dmguard_cache_entries",
            "Files each worker's feature cache holds",
            ["worker"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "dmguard_stage_seconds",
            "Seconds per pipeline stage (per image for fetch/decode, per batch otherwise)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "dmguard_end_to_end_seconds",
            "Input record timestamp to verdict sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "dmguard_consumer_lag",
            "Records not yet consumed, by input partition",
            ["partition"],
            registry=r,
        )
        self.workers = Gauge("dmguard_workers", "Workers alive and reporting", registry=r)
        self.model_info = Gauge(
            "dmguard_model_info",
            "Encoder and head version served (1 while any worker serves it)",
            ["encoder", "head_version"],
            registry=r,
        )
        for o in OUTCOMES:
            self.records.labels(o)
        for v in ("generated", "real", "uncertain"):  # every one of records.VERDICTS
            self.verdicts.labels(v)
        for c in DEAD_LETTER_CODES:
            self.dead_letters.labels(c)
        for s in STAGES:
            self.stage_seconds.labels(s)
        for op in BROKER_OPS:
            self.broker_errors.labels(op)
        for result in CACHE_RESULTS:
            self.cache_lookups.labels(result)
        self._lock = threading.Lock()

    def apply(self, report: dict[str, Any]) -> None:
        """Add one worker's drained stats."""
        with self._lock:
            for (name, labels), n in report.get("counts", {}).items():
                metric = self._counter(name)
                (metric.labels(*labels) if labels else metric).inc(n)
            for (name, labels), values in report.get("observations", {}).items():
                metric = self._histogram(name)
                child = metric.labels(*labels) if labels else metric
                for v in values:
                    child.observe(v)
            gauges = {
                "consumer_lag": self.lag,
                "cache_memory_bytes": self.cache_memory,
                "cache_entries": self.cache_entries,
            }
            for (name, labels), value in report.get("gauges", {}).items():
                gauges[name].labels(*labels).set(value)

    def set_fleet(self, workers: int, models: set[tuple[str, str]]) -> None:
        with self._lock:
            self.workers.set(workers)
            self.model_info.clear()
            for encoder, version in models:
                self.model_info.labels(encoder, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def records_counted(self) -> float:
        """Input records finished so far, verdicts and dead letters together."""
        return _total(self.records, "dmguard_records_total")

    def lag_total(self) -> float:
        """Records waiting, summed over the input partitions (last report of each)."""
        return _total(self.lag, "dmguard_consumer_lag")

    def idle_total(self) -> float:
        """Seconds the workers have waited with nothing to do, summed over workers."""
        return _total(self.idle_seconds, "dmguard_worker_idle_seconds_total")

    def _counter(self, name: str) -> PromCounter:
        return {
            "records": self.records,
            "verdicts": self.verdicts,
            "dead_letters": self.dead_letters,
            "head_swaps": self.head_swaps,
            "registry_errors": self.registry_errors,
            "isolated": self.isolated,
            "broker_errors": self.broker_errors,
            "provenance": self.provenance,
            "idle_seconds": self.idle_seconds,
            "cache_lookups": self.cache_lookups,
            "cache_saved_bytes": self.cache_saved_bytes,
            "cache_saved_seconds": self.cache_saved_seconds,
        }[name]

    def _histogram(self, name: str) -> Histogram:
        return {
            "batch_size": self.batch_size,
            "stage_seconds": self.stage_seconds,
            "end_to_end_seconds": self.end_to_end,
        }[name]


def _total(metric, sample_name: str) -> float:
    """The sum of a metric's samples named `sample_name`, over every label."""
    return sum(
        s.value for family in metric.collect() for s in family.samples if s.name == sample_name
    )


class MetricsServer:
    """/metrics, /healthz (the process is up), /readyz (`ready()` says why not) and
    /status (JSON: each worker's pid, partitions and head) on one port."""

    def __init__(
        self,
        metrics: DriverMetrics,
        ready: Callable[[], tuple[bool, str]],
        *,
        host: str,
        port: int,
        status: Callable[[], Any] = dict,
    ) -> None:
        self.metrics, self.ready, self.status = metrics, ready, status
        self._http = HttpServer(
            {
                "/metrics": lambda: (200, self.metrics.render(), CONTENT_TYPE_LATEST),
                "/healthz": lambda: (200, b"ok\n", "text/plain"),
                "/readyz": self._readyz,
                "/status": lambda: (200, json.dumps(self.status()).encode(), "application/json"),
            },
            host=host,
            port=port,
            name="metrics-http",
        )
        self.port = self._http.port

    def _readyz(self) -> Response:
        ok, why = self.ready()
        return 200 if ok else 503, (why + "\n").encode(), "text/plain"

    def start(self) -> MetricsServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()
