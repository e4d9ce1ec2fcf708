"""Exactly-once on Apache Kafka itself (`dmguard broker --engine kafka`, one KRaft node
from the jars `make kafka` fetches): the run a newcomer would try, every fault in one
stream. `serve --exactly-once` on two workers; records in; one worker SIGKILLed; the
broker stopped for 20 s and started again on its data; the driver SIGKILLed and a new
one started. A read_committed reader must see every input id exactly once.

The same faults on the embedded durable broker, one at a time and in both delivery
modes, are tests/e2e/test_faults.py; this test checks that they hold on the broker
platforms run (Kafka's transaction coordinator, its fencing and its group offsets)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from services.poll import wait_until
from tests.conftest import require_kafka_jars
from tests.e2e.harness import (
    Service,
    duplicates,
    good_stream,
    produce,
    read_verdicts,
    wait_accounted,
)
from tests.e2e.test_faults import OUT_OF_ORDER, SLOW, _alive, committed_reader

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

OUTAGE_S = 20.0
N = 300


@pytest.fixture
def kafka(tmp_path):
    from services.broker import KafkaBroker

    require_kafka_jars()
    broker = KafkaBroker(data_dir=tmp_path / "kafka", startup_timeout_s=90).start()
    yield broker
    broker.stop()


def test_every_fault_in_one_stream_on_apache_kafka_loses_and_duplicates_nothing(
    kafka, image_server, tiny_registry, tmp_path
):
    values, expected = good_stream(image_server, N, "kafka-eos", slow_every=OUT_OF_ORDER)
    image_server.delay_s = 0.1
    args = (*SLOW, "--exactly-once")
    first = Service(kafka.bootstrap, tiny_registry.root, tmp_path / "serve1.log", *args)
    second = None
    reader = None
    try:
        first.wait_ready(timeout=180)
        pids = first.worker_pids()
        produce(kafka.bootstrap, values)
        reader = committed_reader(kafka.bootstrap)

        read_verdicts(reader, 40, timeout=180)  # 1. a worker SIGKILLed mid-stream
        os.kill(pids[0], signal.SIGKILL)

        read_verdicts(reader, 110, timeout=180)  # 2. the broker away for 20 s
        kafka.stop()  # SIGTERM: a clean shutdown of the KRaft node
        down_at = time.monotonic()
        wait_until(lambda: first.get("/readyz")[0] == 503, OUTAGE_S, what="/readyz to say 503")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        kafka.start()  # same port, same data
        first.wait_ready(timeout=180)

        read_verdicts(reader, 180, timeout=180)  # 3. the driver SIGKILLed, a new one started
        old = first.worker_pids()
        first.kill()
        killed_at = len(reader.out.verdicts)
        assert killed_at < N, "the last fault came after the stream had finished"
        wait_until(lambda: not any(_alive(p) for p in old), 60, what="the old workers to exit")
        second = Service(kafka.bootstrap, tiny_registry.root, tmp_path / "serve2.log", *args)
        second.wait_ready(timeout=180)

        out = wait_accounted(reader, expected, timeout=240)
        seen = {v["id"] for v in out.verdicts}
        assert seen == expected, f"lost {len(expected - seen)} records:\n{second.tail()}"
        assert not out.dead_letters
        assert duplicates(out) == 0, f"{duplicates(out)} duplicates:\n{second.tail()}"
        assert second.stop() == 0, second.tail()
    finally:
        if reader:
            reader.close()
        first.kill()
        if second:
            second.kill()
