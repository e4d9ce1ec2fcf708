"""Kafka clients built from KafkaSettings, and topic creation."""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from services.config import KafkaSettings, Topics
from services.errors import BrokerError

log = logging.getLogger(__name__)


MAX_REQUEST_SIZE = 1 << 20  # kafka-python's default, stated: outputs are built to fit under it


def make_producer(kafka: KafkaSettings, **overrides) -> KafkaProducer:
    cfg = {
        "max_request_size": MAX_REQUEST_SIZE,
        **kafka.common(),
        "acks": kafka.acks,
        "linger_ms": kafka.linger_ms,
        "retries": 5,
        "max_in_flight_requests_per_connection": 1,  # keep per-partition order on retry
    }
    cfg.update(overrides)
    try:
        return KafkaProducer(**cfg)
    except KafkaError as exc:
        raise BrokerError(f"no Kafka broker answers at {kafka.bootstrap_servers}") from exc


def make_consumer(kafka: KafkaSettings, *, group: bool = True, **overrides) -> KafkaConsumer:
    """A consumer with manual commits (the worker commits only acknowledged work)."""
    cfg = {
        **kafka.common(),
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
    }
    if group:
        cfg.update(
            group_id=kafka.group_id,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        )
    cfg.update(overrides)
    try:
        return KafkaConsumer(**cfg)
    except KafkaError as exc:
        raise BrokerError(f"no Kafka broker answers at {kafka.bootstrap_servers}") from exc


def make_admin(kafka: KafkaSettings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**kafka.common())
    except KafkaError as exc:
        raise BrokerError(f"no Kafka broker answers at {kafka.bootstrap_servers}") from exc


def ensure_topics(
    kafka: KafkaSettings, topics: Topics, *, partitions: int = 4, replication: int = 1
) -> list[str]:
    """Create the four topics where missing; returns the names created (idempotent)."""
    admin = make_admin(kafka)
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in topics.all() if t not in existing]
        created = []
        for name in wanted:
            try:
                admin.create_topics(
                    [NewTopic(name, num_partitions=partitions, replication_factor=replication)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        _wait_for_metadata(admin, topics.all())
        return created
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics: {exc}") from exc
    finally:
        admin.close()


def _wait_for_metadata(
    admin: KafkaAdminClient, names: tuple[str, ...], timeout_s: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if set(names) <= set(admin.list_topics()):
            return
        time.sleep(0.1)
    raise BrokerError(f"topics {names} did not appear within {timeout_s}s")


def partition_count(kafka: KafkaSettings, topic: str) -> int:
    consumer = make_consumer(kafka, group=False)
    try:
        parts = consumer.partitions_for_topic(topic)
    finally:
        consumer.close()
    if not parts:
        raise BrokerError(f"topic {topic} does not exist (run `dmguard topics`)")
    return len(parts)


def assign_all(consumer, topic: str, *, from_beginning: bool = True) -> list[TopicPartition]:
    """Read `topic` outside any group: assign every partition, seek to its start (or end)."""
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    if tps:
        consumer.assign(tps)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*tps)
    return tps
