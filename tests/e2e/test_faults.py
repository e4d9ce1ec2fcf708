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


def outage(broker, service: Service) -> None:
    """The broker away for OUTAGE_S (SIGTERM: it writes its state and exits): /readyz says
    503 meanwhile; then started again on the same port and data, and serve ready again."""
    broker.stop()
    down_at = time.monotonic()
    wait_until(lambda: service.get("/readyz")[0] == 503, OUTAGE_S, what="/readyz to say 503")
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    broker.start()
    service.wait_ready(timeout=180)


def restart_driver(first: Service, bootstrap: str, registry: Path, log: Path, *args) -> Service:
    """SIGKILL the driver (no drain, no commit, no goodbye to Ray), wait until its local
    Ray's workers are gone with it (no zombie keeps going), and start a new one, ready."""
    pids = first.worker_pids()
    first.kill()
    wait_until(lambda: not any(_alive(p) for p in pids), 60, what="the old workers to exit")
    second = Service(bootstrap, registry, log, *args)
    second.wait_ready(timeout=180)
    return second


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_20s_broker_outage_is_ridden_out_at_least_once(
    durable_broker, image_server, tiny_registry, tmp_path
):
    """Exactly once: test_every_fault_in_one_stream_under_exactly_once_duplicates_nothing."""
    broker = durable_broker
    values, expected = good_stream(image_server, 200, "outage")
    image_server.delay_s = 0.1
    service = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve.log", *SLOW)
    reader = None
    try:
        service.wait_ready()
        pids = service.worker_pids()
        produce(broker.bootstrap, values)
        reader = committed_reader(broker.bootstrap)
        read_verdicts(reader, 40, timeout=120)
        assert len(reader.out.verdicts) < 200, "the outage should land mid-stream"
        outage(broker, service)
        out = wait_accounted(reader, expected, timeout=180)
        seen = {v["id"] for v in out.verdicts}
        assert expected <= seen, f"lost {len(expected - seen)} records:\n{service.tail()}"
        assert seen == expected and not out.dead_letters
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


def test_sigkill_of_the_driver_and_a_restart_lose_nothing_at_least_once(
    durable_broker, image_server, tiny_registry, tmp_path
):
    """Exactly once: test_every_fault_in_one_stream_under_exactly_once_duplicates_nothing."""
    broker = durable_broker
    values, expected = good_stream(image_server, 300, "driver")
    image_server.delay_s = 0.1
    first = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve1.log", *SLOW)
    second = None
    reader = None
    try:
        first.wait_ready()
        produce(broker.bootstrap, values)
        reader = committed_reader(broker.bootstrap)
        read_verdicts(reader, 60, timeout=120)
        log = tmp_path / "serve2.log"
        second = restart_driver(first, broker.bootstrap, tiny_registry.root, log, *SLOW)
        assert len(reader.out.verdicts) < 300, "the kill came after the stream had finished"
        out = wait_accounted(reader, expected, timeout=180)
        seen = {v["id"] for v in out.verdicts}
        assert seen == expected, f"lost {len(expected - seen)} records:\n{second.tail()}"
        assert not out.dead_letters
        assert counter(second.metrics(), "dmguard_workers") == 2
        assert second.stop() == 0, second.tail()
    finally:
        if reader:
            reader.close()
        first.kill()
        if second:
            second.kill()


@pytest.fixture(params=["durable_broker", "kafka_broker"], ids=["noida", "kafka"])
def restartable_broker(request):
    """A broker that can be stopped and started again on its data: the embedded durable
    one (noida-db), and Apache Kafka itself."""
    return request.getfixturevalue(request.param)


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
        outage(broker, first)

        read_verdicts(reader, 180, timeout=180)  # 3. the driver SIGKILLed, a new one started
        log = tmp_path / "serve2.log"
        second = restart_driver(first, broker.bootstrap, tiny_registry.root, log, *args)
        assert len(reader.out.verdicts) < n, "the last fault came after the stream had finished"

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
