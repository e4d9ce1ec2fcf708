"""One frozen settings object for the service, built in one place (the CLI).

Kafka client settings keep Kafka's names (`bootstrap_servers`, `group_id`,
`session_timeout_ms`, ...). Extra client settings for real clusters (TLS,
SASL) come from `DMGUARD_KAFKA_<NAME>` environment variables, e.g.
`DMGUARD_KAFKA_SECURITY_PROTOCOL=SASL_SSL`; they are passed to every client
and never printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from services.fetch import FetchPolicy
from services.images import DEFAULT_MAX_PIXELS

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REGISTRY = "./registry"
_SECRET_HINTS = ("password", "secret", "token", "key")


@dataclass(frozen=True)
class Topics:
    images: str = "dmguard.images"
    verdicts: str = "dmguard.verdicts"
    dead_letter: str = "dmguard.dead-letter"
    labels: str = "dmguard.labels"

    def all(self) -> tuple[str, ...]:
        return (self.images, self.verdicts, self.dead_letter, self.labels)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    group_id: str = "dmguard"
    session_timeout_ms: int = 6000  # a group join takes about half of this on Tansu
    heartbeat_interval_ms: int = 1500
    auto_offset_reset: str = "earliest"
    acks: str = "all"
    linger_ms: int = 5
    client_extra: dict[str, Any] = field(default_factory=dict)  # security_protocol, sasl_* ...

    def __repr__(self) -> str:
        shown = {
            k: ("***" if any(h in k for h in _SECRET_HINTS) else v)
            for k, v in self.client_extra.items()
        }
        return (
            f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, group_id={self.group_id!r}, "
            f"session_timeout_ms={self.session_timeout_ms}, client_extra={shown})"
        )

    def common(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers.split(","), **self.client_extra}


@dataclass(frozen=True)
class WorkerSettings:
    """What each DetectorWorker needs; travels to the actor through its constructor."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: Topics = field(default_factory=Topics)
    registry: str = DEFAULT_REGISTRY
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 32
    max_wait_ms: int = 50
    fetch_threads: int = 8
    max_in_flight: int = 0  # fetches in flight; 0: 4 x max_batch
    commit_interval_s: float = 1.0
    registry_poll_s: float = 2.0
    device: str = "auto"
    threads: int = 1  # CPU threads for the encoder
    partitions: tuple[int, ...] = ()  # input partitions this worker reads (set by the pool)
    feature_log: str | None = None  # folder or URI for (id, embedding, score, head) rows; None: off

    @property
    def in_flight_cap(self) -> int:
        return self.max_in_flight or 4 * self.max_batch


@dataclass(frozen=True)
class ServeSettings:
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9464
    stats_interval_s: float = 1.0


def kafka_extra_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """`DMGUARD_KAFKA_SASL_MECHANISM=PLAIN` -> {"sasl_mechanism": "PLAIN"}; integers stay integers."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith("DMGUARD_KAFKA_") and len(key) > len("DMGUARD_KAFKA_"):
            name = key[len("DMGUARD_KAFKA_") :].lower()
            out[name] = int(value) if value.isdigit() else value
    return out


def default_bootstrap() -> str:
    return os.environ.get("DMGUARD_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def default_registry() -> str:
    return os.environ.get("DMGUARD_REGISTRY", DEFAULT_REGISTRY)


def default_feature_log() -> str:
    return os.environ.get("DMGUARD_FEATURE_LOG", "./feature-log")
