"""`dmguard_consumer_lag` on Apache Kafka (`make kafka`): under a real backlog it agrees
with Kafka's own figure, the partitions' end offsets minus the group's committed
offsets, read with Kafka's admin API, and both come back to 0 after the stream; and
`serve --workers auto`, which reads that lag, grows the pool while the backlog lasts.
(On the in-memory Tansu the lag undercounts: docs/delivery.md.)"""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from services.poll import wait_until
from tests.e2e.harness import Service, good_stream, produce

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

TOPIC, GROUP, PARTITIONS = "dmguard.images", "dmguard", 4


def kafka_lag(bootstrap: str) -> int:
    """Sum over the input topic's partitions of end offset minus the group's committed
    offset, as Kafka reports them (a consumer in the group that joins nothing)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        ends = consumer.end_offsets(tps)
        return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)
    finally:
        consumer.close(autocommit=False)


def metric_lag(service: Service) -> float:
    return sum(v for (name, _), v in service.metrics().items() if name == "dmguard_consumer_lag")


def test_lag_matches_kafkas_own_and_the_pool_grows_under_a_backlog(
    kafka_broker, image_server, tiny_registry, tmp_path
):
    kafka = kafka_broker
    n = 200
    values, _ = good_stream(image_server, n, "lag")
    image_server.delay_s = 0.2  # one fetch thread a worker: about 5 records/s each
    service = Service(
        kafka.bootstrap,
        tiny_registry.root,
        tmp_path / "serve.log",
        "--fetch-threads",
        "1",
        "--max-batch",
        "4",
        "--max-workers",
        "2",
        "--scale-window",
        "6",
        "--scale-cooldown",
        "8",
        workers="auto",
    )
    try:
        service.wait_ready(timeout=180)
        produce(kafka.bootstrap, values)
        # Workers report their lag every 2 s and finish about 10 records in that time:
        # the two figures, read a moment apart, agree within what 2 s of work changes.
        wait_until(
            lambda: metric_lag(service), 60, what="a backlog on /metrics", done=lambda v: v > 50
        )
        pairs = []
        for _ in range(3):
            pairs.append((metric_lag(service), kafka_lag(kafka.bootstrap)))
            if pairs[-1][1] < 50:
                break
        for ours, theirs in pairs:
            assert theirs > 0 and abs(ours - theirs) <= 30, pairs
        assert pairs[0][0] > 0.5 * n, pairs  # the whole backlog, not an undercount
        wait_until(
            lambda: len(service.worker_pids()), 60, what="a second worker", done=lambda n: n == 2
        )
        assert kafka_lag(kafka.bootstrap) > 0, "the pool should grow while the backlog lasts"
        wait_until(
            lambda: kafka_lag(kafka.bootstrap), 180, what="Kafka's lag to 0", done=lambda v: v == 0
        )
        wait_until(
            lambda: metric_lag(service), 30, what="the metric's lag to 0", done=lambda v: v == 0
        )
        assert service.stop() == 0, service.tail()
    finally:
        service.kill()
