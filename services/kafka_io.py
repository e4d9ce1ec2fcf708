"""Every Kafka client dmguard makes, built from KafkaSettings; topic creation;
sending a batch of messages and reading a topic's values outside any group."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import (
    AuthorizationError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from services.config import KafkaSettings, Topics
from services.errors import BrokerError, KafkaAccessError
from services.kafka_diagnosis import access_problem, authorization_problem
from services.poll import wait_until

log = logging.getLogger(__name__)


MAX_REQUEST_SIZE = 1 << 20  # kafka-python's default, stated: outputs are built to fit under it
# kafka-python backs off reconnecting up to 30 s by default: after a broker outage the
# clients would sit idle that long after it came back. 1 s finds it again at once.
RECONNECT_BACKOFF_MAX_MS = 1000


def cannot_connect(kafka: KafkaSettings) -> BrokerError:
    """The error for a client that could not start: KafkaAccessError saying why when the
    broker is there but refuses it (services.kafka_diagnosis), else BrokerError."""
    problem = access_problem(kafka)
    if problem is not None:
        return KafkaAccessError(problem)
    return BrokerError(f"no Kafka broker answers at {kafka.bootstrap_servers}")


def make_producer(kafka: KafkaSettings, **overrides) -> KafkaProducer:
    """A producer that keeps per-partition order and retries until `delivery_timeout_ms`
    (kafka-python's defaults: idempotent, unlimited retries within 120 s)."""
    cfg = {
        "max_request_size": MAX_REQUEST_SIZE,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        **kafka.common(),
        "acks": kafka.acks,
        "linger_ms": kafka.linger_ms,
        "max_in_flight_requests_per_connection": 1,  # keep per-partition order on retry
    }
    cfg.update(overrides)
    try:
        return KafkaProducer(**cfg)
    except KafkaError as exc:
        raise cannot_connect(kafka) from exc


def make_consumer(kafka: KafkaSettings, *, group: bool = True, **overrides) -> KafkaConsumer:
    """A consumer with manual commits (the worker commits only acknowledged work)."""
    cfg = {
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
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
        raise cannot_connect(kafka) from exc


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close `producer`, giving its outputs `timeout_s` to be acknowledged, and stop its
    sender thread either way. (kafka-python 3.0's `close` flushes first and, when that
    flush times out, raises before stopping the sender, which then retries for ever.)"""
    try:
        producer.close(timeout=timeout_s)
    except KafkaTimeoutError:
        producer._sender.force_close()  # what `close` does next when its flush succeeds


def commit_transaction(
    producer: KafkaProducer,
    offsets: dict[TopicPartition, OffsetAndMetadata],
    group_id: str,
    timeout_s: float,
) -> None:
    """Add the consumed `offsets` to the producer's open transaction and commit it, within
    `timeout_s`; KafkaTimeoutError when the broker has not confirmed by then.

    KafkaProducer's `send_offsets_to_transaction` and `commit_transaction` wait without a
    limit, and a kafka-python 3.0 producer whose broker restarted in the middle of a
    transaction waits for ever (seen on noida-db and after 60 s of retries). These are
    the same two calls with a deadline, through the transaction manager the public
    methods wrap (kafka-python is pinned in requirements/constraints.txt); the caller
    abandons such a producer and starts a new one with the same transactional id, which
    fences the old one and aborts its transaction."""
    manager = producer._transaction_manager
    if manager is None:
        raise ValueError("commit_transaction needs a producer made with a transactional_id")
    for start in (
        lambda: manager.send_offsets_to_transaction(offsets, group_id),
        manager.begin_commit,
    ):
        result = start()
        producer._sender.wakeup()
        if not result.wait(timeout_ms=int(timeout_s * 1000)):
            raise KafkaTimeoutError(f"the broker did not confirm the transaction in {timeout_s}s")


def make_admin(kafka: KafkaSettings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**kafka.common())
    except KafkaError as exc:
        raise cannot_connect(kafka) from exc


def ensure_topics(
    kafka: KafkaSettings, topics: Topics, *, partitions: int = 4, replication: int = 1
) -> list[str]:
    """Create the four topics where missing; returns the names created (idempotent).
    The first thing `serve` and `topics` do: a client the broker refuses (TLS, login) ends
    here in a few seconds with KafkaAccessError, not after kafka-python's 30 s bootstrap."""
    problem = access_problem(kafka) if kafka.client_extra else None
    if problem is not None:
        raise KafkaAccessError(problem)
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
            except AuthorizationError as exc:  # not visible to this user, and not its to create
                needs = {
                    topics.images: "Read",
                    topics.verdicts: "Write",
                    topics.dead_letter: "Write",
                }
                problem = authorization_problem(exc, kafka, needs.get(name, "Describe"), name)
                raise KafkaAccessError(
                    f"{problem} (a topic that does not exist yet needs an admin: `dmguard topics`)"
                ) from exc
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
