"""Growing and shrinking the worker pool mid-stream (what `serve --workers auto` does
when its autoscaler decides): real broker, real local Ray, real HTTP fetches. The
partitions move between workers, and every record gets exactly one output: each
worker drains and commits before any worker gets its new share."""

from __future__ import annotations

import json

import pytest

from services.config import Topics, serve_settings
from services.kafka_io import ensure_topics
from tests.e2e.harness import (
    OutputReader,
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
        bootstrap=broker.bootstrap, registry=str(tiny_registry.root), workers=2,
        max_batch=4, fetch_threads=2, allow_network=("127.0.0.1/32",), feature_log=None,
        state_dir=str(tmp_path / "state"),
    )  # fmt: skip
    ensure_topics(settings.worker.kafka, Topics(), partitions=4)
    values, expected = good_stream(image_server, 400, "resize")
    image_server.delay_s = 0.1
    started_ray = not ray.is_initialized()
    init_ray(num_cpus=4)
    pool, metrics = WorkerPool(settings), DriverMetrics()
    reader = None

    def reading() -> list[tuple[int, ...]]:
        """Each worker's partitions, once every worker reports its share."""
        pool.collect(metrics, timeout_s=1.0)
        return [tuple(pool.statuses[i]["partitions"]) for i in sorted(pool.statuses)]

    try:
        pool.start()
        produce(broker.bootstrap, values)
        reader = OutputReader(broker.bootstrap)
        read_verdicts(reader, 80, timeout=120)
        assert pool.resize(3, metrics) == 3
        shares = wait_until(reading, 30, what="3 workers on their shares",
                            done=lambda r: r == split_partitions(4, 3))  # fmt: skip
        assert sorted(p for share in shares for p in share) == [0, 1, 2, 3]
        read_verdicts(reader, 200, timeout=120)
        at_shrink = len(reader.out.verdicts)
        assert pool.resize(1, metrics) == 1
        wait_until(reading, 30, what="1 worker on every partition",
                   done=lambda r: r == [(0, 1, 2, 3)])  # fmt: skip
        assert pool.resize(9, metrics) == 4  # never more workers than partitions
        out = wait_accounted(reader, expected, timeout=180)
        assert at_shrink < 400, "the resizes should land mid-stream"
        assert {v["id"] for v in out.verdicts} == expected and not out.dead_letters
        assert duplicates(out) == 0, json.dumps(reading())
        assert pool.stop(metrics)
    finally:
        if reader:
            reader.close()
        if started_ray:
            ray.shutdown()
