"""Workers that do not come up in time: `serve` waits `--worker-start-timeout` (not a fixed
120 s: a new node pulling a CUDA image takes minutes), then stops with one line saying what
to check, not a Ray traceback. Ray and the broker are faked: only the pool's wiring runs."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
from ray.exceptions import GetTimeoutError

import actors.pool as pool_module
from actors.pool import WorkerPool, WorkersNotReady
from dmguard import describe_failure
from services.config import serve_settings


def test_start_waits_the_configured_time_then_says_what_to_check(monkeypatch):
    waited: list[float] = []

    def never_ready(self, first, count, ready_timeout_s):
        waited.append(ready_timeout_s)
        raise GetTimeoutError("Get timed out: some object(s) not ready.")

    monkeypatch.setattr(pool_module.ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setattr(
        pool_module.ray, "remote", lambda cls: SimpleNamespace(options=lambda **kw: None)
    )
    monkeypatch.setattr(pool_module, "partition_count", lambda kafka, topic: 4)
    monkeypatch.setattr(WorkerPool, "_new_actors", never_ready)
    settings = serve_settings(workers=2, worker_start_timeout_s=7.5, registry="unused")
    with pytest.raises(WorkersNotReady) as caught:
        WorkerPool(settings).start()
    assert waited == [7.5]
    line = describe_failure(caught.value, argparse.Namespace())
    assert line is not None and "within 7.5 s (--worker-start-timeout)" in line, line
