"""Faults beyond one worker, end to end: the broker away for 20 s, a worker SIGKILLed,
the whole `dmguard serve` driver SIGKILLed and started again. At least once, one fault
per test on the embedded durable broker (noida-db: it can be stopped and started
again on the same storage); exactly once, every fault in one stream, on noida-db and
on Apache Kafka itself (`make kafka`). Each test starts its own broker, image server
and `dmguard serve`, and reads the outputs as a downstream consumer of exactly-once
outputs would: isolation_level=read_committed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from services.poll import wait_until
from tests.conftest import require_kafka_jars
from tests.e2e.harness import (
    OutputReader,
    Service,
    counter,
    duplicates,
    good_stream,
    produce,
    read_verdicts,
    wait_accounted,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

OUTAGE_S = 20.0
MODES = {"at-least-once": (), "exactly-once": ("--exactly-once",)}
# Slow fetches (0.1 s each, 2 threads per worker): 200 records take ~5 s with 2 workers,
# so a fault after the first 40 verdicts lands mid-stream.
SLOW = ("--fetch-threads", "2", "--max-batch", "4")
# Under exactly-once, every 8th image a second late: records finish out of order, and
# a worker that committed the outputs of records after one still in flight would
# output them again after a kill.
OUT_OF_ORDER = 8


def committed_reader(bootstrap: str) -> OutputReader:
    return OutputReader(bootstrap, isolation_level="read_committed")


def broker_errors(metrics, *, worker_side: bool) -> float:
    """dmguard_broker_errors_total summed over the workers' ops, or the driver's alone."""
    return sum(
        v
        for (name, labels), v in metrics.items()
        if name == "dmguard_broker_errors_total"
        and (dict(labels)["op"] != "health_check") == worker_side
    )


def lag(metrics) -> float:
    return sum(v for (name, _), v in metrics.items() if name == "dmguard_consumer_lag")


# Exactly once: test_every_fault_in_one_stream_under_exactly_once_duplicates_nothing.
@pytest.mark.parametrize("mode", ["at-least-once"])
def test_a_20s_broker_outage_is_ridden_out(
    mode, durable_broker, image_server, tiny_registry, tmp_path
):
    broker = durable_broker
    values, expected = good_stream(image_server, 200, f"outage-{mode}")
    image_server.delay_s = 0.1
    service = Service(
        broker.bootstrap, tiny_registry.root, tmp_path / "serve.log", *SLOW, *MODES[mode]
    )
    reader = None
    try:
        service.wait_ready()
        pids = service.worker_pids()
        produce(broker.bootstrap, values)
        reader = committed_reader(broker.bootstrap)
        read_verdicts(reader, 40, timeout=120)
        broker.stop()  # SIGTERM: noida-db writes its snapshot and exits
        down_at = time.monotonic()
        before = len(reader.out.verdicts)
        assert before < 200, "the outage should land mid-stream"
        wait_until(lambda: service.get("/readyz")[0] == 503, OUTAGE_S, what="/readyz to say 503")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        broker.start()  # same port, same storage
        service.wait_ready(timeout=120)  # /readyz is 200 again
        out = wait_accounted(reader, expected, timeout=180)
        seen = {v["id"] for v in out.verdicts}
        assert expected <= seen, f"lost {len(expected - seen)} records:\n{service.tail()}"
        assert seen == expected and not out.dead_letters
        if mode == "exactly-once":
            assert duplicates(out) == 0, service.tail()
        # Rode it out: the same worker processes, and the outage on /metrics.
        assert service.worker_pids() == pids, service.tail()
        metrics = service.metrics()
        assert broker_errors(metrics, worker_side=True) > 0
        assert broker_errors(metrics, worker_side=False) > 0  # the driver's health checks
        wait_until(lambda: lag(service.metrics()) == 0, 30, what="the lag to come back to 0")
        assert service.stop() == 0, service.tail()
    finally:
        if reader:
            reader.close()
        service.kill()


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# Exactly once: test_every_fault_in_one_stream_under_exactly_once_duplicates_nothing.
@pytest.mark.parametrize("mode", ["at-least-once"])
def test_sigkill_of_the_driver_and_a_restart_lose_nothing(
    mode, durable_broker, image_server, tiny_registry, tmp_path
):
    broker = durable_broker
    values, expected = good_stream(
        image_server, 300, f"driver-{mode}", slow_every=OUT_OF_ORDER if MODES[mode] else 0
    )
    image_server.delay_s = 0.1
    args = (*SLOW, *MODES[mode])
    first = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve1.log", *args)
    second = None
    reader = None
    try:
        first.wait_ready()
        pids = first.worker_pids()
        produce(broker.bootstrap, values)
        reader = committed_reader(broker.bootstrap)
        read_verdicts(reader, 60, timeout=120)
        first.kill()  # SIGKILL: no drain, no commit, no goodbye to Ray
        killed_at = len(reader.out.verdicts)
        assert killed_at < 300, "the kill came after the stream had finished"
        # The driver's local Ray goes with it, and so do its workers: no zombie keeps going.
        wait_until(lambda: not any(_alive(p) for p in pids), 60, what="the old workers to exit")
        second = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve2.log", *args)
        second.wait_ready()
        out = wait_accounted(reader, expected, timeout=180)
        seen = {v["id"] for v in out.verdicts}
        assert seen == expected, f"lost {len(expected - seen)} records:\n{second.tail()}"
        assert not out.dead_letters
        if mode == "exactly-once":
            assert duplicates(out) == 0, f"driver SIGKILL after {killed_at}/300 verdicts"
        assert counter(second.metrics(), "dmguard_workers") == 2
        assert second.stop() == 0, second.tail()
    finally:
        if reader:
            reader.close()
        first.kill()
        if second:
            second.kill()


@pytest.fixture(params=["noida", "kafka"])
def restartable_broker(request, tmp_path):
    """A broker that can be stopped and started again on its data: the embedded durable
    one (noida-db), and Apache Kafka itself (one KRaft node, `make kafka`'s jars)."""
    from services.broker import broker_for

    if request.param == "kafka":
        require_kafka_jars()
    broker = broker_for(request.param, data_dir=tmp_path / request.param)
    if request.param == "kafka":
        broker.startup_timeout_s = 90
    broker.start()
    yield broker
    broker.stop()


def test_every_fault_in_one_stream_under_exactly_once_duplicates_nothing(
    restartable_broker, image_server, tiny_registry, tmp_path
):
    """The run a newcomer would try, every fault in one stream under `--exactly-once`: a
    worker SIGKILLed (Ray restarts it, it fences its predecessor), the broker stopped for
    20 s and started again on its data, the driver SIGKILLed and a new one started. Out of
    order (every 8th image a second late), so a worker that committed past a record
    still in flight would be caught. A read_committed reader sees every id exactly once."""
    broker = restartable_broker
    n = 300
    values, expected = good_stream(image_server, n, "eos-all", slow_every=OUT_OF_ORDER)
    image_server.delay_s = 0.1
    args = (*SLOW, "--exactly-once")
    first = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve1.log", *args)
    second = None
    reader = None
    try:
        first.wait_ready(timeout=180)
        pids = first.worker_pids()
        produce(broker.bootstrap, values)
        reader = committed_reader(broker.bootstrap)

        read_verdicts(reader, 40, timeout=180)  # 1. a worker SIGKILLed mid-stream
        os.kill(pids[0], signal.SIGKILL)
        wait_until(
            first.worker_pids,
            90,
            interval_s=1,
            what="the killed worker to come back",
            done=lambda now: len(now) == 2 and pids[0] not in now,
        )

        read_verdicts(reader, 110, timeout=180)  # 2. the broker away for 20 s
        broker.stop()
        down_at = time.monotonic()
        wait_until(lambda: first.get("/readyz")[0] == 503, OUTAGE_S, what="/readyz to say 503")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        broker.start()  # same port, same data
        first.wait_ready(timeout=180)

        read_verdicts(reader, 180, timeout=180)  # 3. the driver SIGKILLed, a new one started
        old = first.worker_pids()
        first.kill()
        killed_at = len(reader.out.verdicts)
        assert killed_at < n, "the last fault came after the stream had finished"
        wait_until(lambda: not any(_alive(p) for p in old), 60, what="the old workers to exit")
        second = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve2.log", *args)
        second.wait_ready(timeout=180)

        out = wait_accounted(reader, expected, timeout=240)
        seen = {v["id"] for v in out.verdicts}
        assert seen == expected, f"lost {len(expected - seen)} records:\n{second.tail()}"
        assert not out.dead_letters
        assert duplicates(out) == 0, f"{duplicates(out)} duplicates:\n{second.tail()}"
        assert counter(second.metrics(), "dmguard_workers") == 2
        assert second.stop() == 0, second.tail()
    finally:
        if reader:
            reader.close()
        first.kill()
        if second:
            second.kill()
