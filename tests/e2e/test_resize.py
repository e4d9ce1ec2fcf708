"""Growing and shrinking the worker pool mid-stream: `WorkerPool.resize` driven by hand,
and `serve --workers auto` deciding by itself. Real broker, real Ray, real HTTP fetches.
The partitions move between workers, and every record gets exactly one output: each
worker drains and commits before any worker gets its new share."""

from __future__ import annotations

import json

import pytest

from services.config import Topics, serve_settings
from services.kafka_io import ensure_topics
from tests.e2e.harness import (
    OutputReader,
    Service,
    Trickle,
    counter,
    duplicates,
    good_stream,
    produce,
    read_verdicts,
    wait_accounted,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]


def test_resizing_the_pool_moves_partitions_without_losing_or_repeating_a_record(
    broker, image_server, tiny_registry, tmp_path
):
    import ray

    from actors.pool import WorkerPool, split_partitions
    from services.metrics import DriverMetrics
    from services.poll import wait_until
    from services.ray_cluster import init_ray

    settings = serve_settings(
        bootstrap=broker.bootstrap,
        registry=str(tiny_registry.root),
        workers=2,
        max_batch=4,
        fetch_threads=2,
        allow_network=("127.0.0.1/32",),
        feature_log=None,
        state_dir=str(tmp_path / "state"),
    )
    ensure_topics(settings.worker.kafka, Topics(), partitions=4)
    # Records keep arriving (about 20 a second) until every resize has landed, however
    # long the resizes take on a loaded machine: the stream outlasts them by construction.
    values, _ = good_stream(image_server, 4000, "resize")
    image_server.delay_s = 0.1
    if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) < 4:
        ray.shutdown()  # an earlier test's Ray in this process: too small to grow to 3
    started_ray = not ray.is_initialized()
    init_ray(num_cpus=4)
    pool, metrics = WorkerPool(settings), DriverMetrics()
    reader = trickle = None

    def reading() -> list[tuple[int, ...]]:
        """Each worker's partitions, once every worker reports its share."""
        pool.collect(metrics, timeout_s=1.0)
        return [tuple(pool.statuses[i]["partitions"]) for i in sorted(pool.statuses)]

    try:
        pool.start()
        trickle = Trickle(broker.bootstrap, values)
        reader = OutputReader(broker.bootstrap)
        read_verdicts(reader, 80, timeout=120)
        assert pool.resize(3, metrics) == 3
        shares = wait_until(
            reading,
            30,
            what="3 workers on their shares",
            done=lambda r: r == split_partitions(4, 3),
        )
        assert sorted(p for share in shares for p in share) == [0, 1, 2, 3]
        read_verdicts(reader, 200, timeout=120)
        sent_at_shrink = trickle.sent
        assert pool.resize(1, metrics) == 1
        wait_until(
            reading, 30, what="1 worker on every partition", done=lambda r: r == [(0, 1, 2, 3)]
        )
        assert pool.resize(9, metrics) == 4  # never more workers than partitions
        sent = trickle.stop()
        assert sent_at_shrink < sent < len(values), "records should arrive across the resizes"
        expected = {json.loads(v)["id"] for v in values[:sent]}
        out = wait_accounted(reader, expected, timeout=180)
        assert {v["id"] for v in out.verdicts} == expected and not out.dead_letters
        assert duplicates(out) == 0, json.dumps(reading())
        assert pool.stop(metrics)
    finally:
        if trickle:
            trickle.stop()
        if reader:
            reader.close()
        if started_ray:
            ray.shutdown()


def test_serve_workers_auto_grows_under_a_backlog_and_shrinks_when_idle(
    durable_broker, image_server, tiny_registry, tmp_path
):
    """On the durable broker: the autoscaler reads the lag, and the in-memory broker's
    end offsets undercount a backlog produced in batches."""
    broker = durable_broker
    from services.poll import wait_until

    values, expected = good_stream(image_server, 240, "auto")
    image_server.delay_s = 0.2  # one fetch thread: about 5 records/s per worker
    service = Service(
        broker.bootstrap,
        tiny_registry.root,
        tmp_path / "serve.log",
        "--max-workers",
        "2",
        "--fetch-threads",
        "1",
        "--max-batch",
        "4",
        "--scale-window",
        "6",
        "--scale-cooldown",
        "8",
        workers="auto",
    )
    reader = None

    def workers() -> int:
        return len(service.worker_pids())

    try:
        service.wait_ready()
        assert workers() == 1  # --workers auto starts at --min-workers
        produce(broker.bootstrap, values)  # ~48 s of work for one worker
        reader = OutputReader(broker.bootstrap)
        wait_until(workers, 60, what="a second worker", done=lambda n: n == 2)
        grown_at = len(reader.read(idle_s=0.05).verdicts)
        assert grown_at < 240, "the pool should grow while the backlog lasts"
        out = wait_accounted(reader, expected, timeout=180)
        assert {v["id"] for v in out.verdicts} == expected and not out.dead_letters
        assert duplicates(out) == 0
        wait_until(workers, 60, what="the pool back to one worker", done=lambda n: n == 1)
        # The driver counts a resize once `resize` returns, a moment after /status shows it.
        wait_until(
            lambda: counter(service.metrics(), "dmguard_pool_resizes_total"),
            10,
            what="two resizes counted",
            done=lambda n: n >= 2,
        )
        assert "scaling: 1 -> 2 workers" in service.log.read_text()
        assert service.stop() == 0, service.tail()
    finally:
        if reader:
            reader.close()
        service.kill()
