"""Every Kafka client dmguard makes, built from KafkaSettings; topic creation;
sending a batch of messages and reading a topic's values outside any group."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from services.config import KafkaSettings, Topics
from services.errors import BrokerError
from services.poll import wait_until

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
    wait_until(
        lambda: set(names) <= set(admin.list_topics()),
        timeout_s,
        interval_s=0.1,
        what=f"topics {', '.join(names)} to appear in the broker's metadata",
    )


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


def produce(
    kafka: KafkaSettings,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    **overrides,
) -> int:
    """Send (key, value) messages to `topic`, wait until the broker has them all; returns
    how many were sent. `overrides` are producer settings (see `make_producer`)."""
    producer = make_producer(kafka, **overrides)
    sent = 0
    for key, value in messages:
        producer.send(topic, value=value, key=key)
        sent += 1
    producer.flush()
    producer.close()
    return sent


def read_values(
    consumer: KafkaConsumer,
    *,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
    poll_ms: int = 200,
) -> Iterator[bytes | None]:
    """The values of an assigned consumer's records as they arrive, until `max_records`
    have come or none has for `idle_timeout_s` (None: no limit)."""
    seen, last = 0, time.monotonic()
    while max_records is None or seen < max_records:
        for messages in consumer.poll(timeout_ms=poll_ms).values():
            for m in messages:
                yield m.value
                seen += 1
                last = time.monotonic()
                if max_records is not None and seen >= max_records:
                    return
        if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
            return
