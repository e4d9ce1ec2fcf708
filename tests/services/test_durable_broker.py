"""The durable embedded broker (noida-db, `dmguard broker --durable DIR`): what a restart
on the same folder keeps. Real broker processes on loopback, real Kafka clients."""

from __future__ import annotations

import os
import signal
import time

import pytest
from kafka.structs import TopicPartition

from services.broker import EmbeddedBroker
from services.config import KafkaSettings, Topics
from services.kafka_io import ensure_topics, make_consumer, produce, read_values

pytestmark = pytest.mark.broker
N = 200


def _write(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    """N keyed records, read once by a group that commits; returns the committed offsets."""
    produce(kafka, topic, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(N)])
    consumer = make_consumer(kafka)
    consumer.subscribe([topic])
    got = list(read_values(consumer, max_records=N, idle_timeout_s=20))
    assert len(got) == N
    consumer.commit()
    parts = consumer.partitions_for_topic(topic)
    committed = {p: consumer.committed(TopicPartition(topic, p)) for p in parts}
    consumer.close()
    return committed


def _read_back(kafka: KafkaSettings, topic: str) -> tuple[set[bytes], dict[int, int]]:
    """Every value of `topic` from the beginning, and the group's committed offsets."""
    reader = make_consumer(kafka, group=False)
    parts = sorted(reader.partitions_for_topic(topic) or [])
    tps = [TopicPartition(topic, p) for p in parts]
    reader.assign(tps)
    reader.seek_to_beginning(*tps)
    values = set(read_values(reader, max_records=N, idle_timeout_s=10))
    reader.close()
    group = make_consumer(kafka)
    committed = {p: group.committed(TopicPartition(topic, p)) for p in parts}
    group.close()
    return values, committed


@pytest.mark.parametrize("stop", ["sigterm", "sigkill-after-idle"])
def test_records_and_committed_offsets_survive_a_restart_on_the_same_folder(tmp_path, stop):
    topic = Topics().images
    first = EmbeddedBroker(durable_dir=tmp_path / "broker").start()
    try:
        kafka = KafkaSettings(bootstrap_servers=first.bootstrap)
        ensure_topics(kafka, Topics(), partitions=4)
        committed = _write(kafka, topic)
        assert sum(committed.values()) == N
        if stop == "sigterm":
            first.stop()
        else:  # the snapshot is written about every second while state changes
            time.sleep(2.5)
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait()
            first.process = None
    finally:
        first.stop()
    second = EmbeddedBroker(port=first.port, durable_dir=tmp_path / "broker").start()
    try:
        kafka = KafkaSettings(bootstrap_servers=second.bootstrap)
        values, after = _read_back(kafka, topic)
    finally:
        second.stop()
    assert values == {f"v{i}".encode() for i in range(N)}
    assert after == committed


def test_the_in_memory_broker_keeps_nothing_across_a_restart(tmp_path):
    """The reference the durable test is measured against: the same steps on the default
    broker lose the topic (so the test above would fail if --durable were ignored)."""
    first = EmbeddedBroker().start()
    try:
        kafka = KafkaSettings(bootstrap_servers=first.bootstrap)
        ensure_topics(kafka, Topics(), partitions=4)
        produce(kafka, Topics().images, [(None, b"x")] * 10)
    finally:
        first.stop()
    second = EmbeddedBroker(port=first.port).start()
    try:
        reader = make_consumer(KafkaSettings(bootstrap_servers=second.bootstrap), group=False)
        assert not reader.partitions_for_topic(Topics().images)
        reader.close()
    finally:
        second.stop()


def test_tail_read_committed_hides_an_aborted_transaction(tmp_path):
    """`dmguard tail --isolation-level read_committed` on the durable broker (which honours
    aborts): the aborted transaction's record is not printed, the committed one is; the
    default level prints both."""
    import subprocess
    import sys

    from services.kafka_io import make_producer

    with EmbeddedBroker(durable_dir=tmp_path / "broker") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        ensure_topics(kafka, Topics(), partitions=1)
        producer = make_producer(kafka, transactional_id="t-test", enable_idempotence=True)
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(Topics().verdicts, b'{"id": "aborted"}')
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(Topics().verdicts, b'{"id": "committed"}')
        producer.commit_transaction()
        producer.close()

        def tail(*extra: str) -> list[str]:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dmguard",
                    "tail",
                    "--bootstrap",
                    broker.bootstrap,
                    "--from-beginning",
                    "--timeout",
                    "3",
                    *extra,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.split()

        assert tail("--isolation-level", "read_committed") == ['{"id":', '"committed"}']
        assert '"aborted"}' in tail()
