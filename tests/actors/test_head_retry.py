"""A promoted head that fails to load (a corrupt head.pt, NaN weights) is not retried on
every registry poll but again after 30 s (README: "not loaded; the same, retried every
30 s"), on a fake clock: `actors.stream`'s `time` is replaced, so nothing waits. The
worker serves its old head meanwhile, and swaps once the head loads."""

from __future__ import annotations

import time
import types

import pytest
import torch

import actors.stream
from actors.stream import StreamWorker
from services.config import WorkerSettings
from tests.conftest import TINY
from training.model.detector import register_untrained_head

RETRY_S = 30.0  # what the README promises


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    fake_time = types.SimpleNamespace(
        monotonic=clock, time=time.time, perf_counter=time.perf_counter, sleep=time.sleep
    )
    monkeypatch.setattr(actors.stream, "time", fake_time)
    return clock


@pytest.fixture
def worker(tiny_registry, tmp_path) -> StreamWorker:
    w = StreamWorker(
        WorkerSettings(registry=str(tiny_registry.root), state_dir=str(tmp_path / "state")),
        worker_id="t",
    )
    assert w.status()["head_version"] == "v1"
    return w


def break_head(path, how: str) -> None:
    if how == "corrupt":
        path.write_bytes(b"PK\x03\x04 truncated")
    else:
        blob = torch.load(path, weights_only=True)
        first = next(iter(blob["state_dict"]))
        blob["state_dict"][first] = torch.full_like(blob["state_dict"][first], float("nan"))
        torch.save(blob, path)


@pytest.fixture(params=["corrupt", "nan-weights"])
def broken_v2(request, tiny_registry):
    """v2 promoted, its head.pt broken; returns (version, restore), restore putting the good
    weights back."""
    meta = register_untrained_head(tiny_registry, TINY, seed=1)
    path = tiny_registry.heads / meta.version / "head.pt"
    good = path.read_bytes()
    break_head(path, request.param)
    return meta.version, lambda: path.write_bytes(good)


def count_loads(worker: StreamWorker, monkeypatch) -> list:
    """The versions the worker tries to load from its registry, in order."""
    tries = []
    real_load = worker.registry.load

    def load(version=None, **kw):
        tries.append(version)
        return real_load(version, **kw)

    monkeypatch.setattr(worker.registry, "load", load)
    return tries


def poll_at(worker: StreamWorker, clock: Clock, t: float) -> None:
    clock.now = 1000.0 + t
    worker._maybe_swap_head()


def test_a_head_that_failed_to_load_is_tried_again_after_30_s_not_before(
    worker, clock, broken_v2, monkeypatch
):
    v2, _ = broken_v2
    tries = count_loads(worker, monkeypatch)
    poll_at(worker, clock, 0.0)
    assert tries == [v2]  # tried at once
    assert f"cannot load head {v2}" in worker.status()["registry_problem"]
    for t in (2.0, 10.0, 29.0, RETRY_S - 0.001):  # every registry poll in between
        poll_at(worker, clock, t)
    assert tries == [v2]  # not retried on every poll
    poll_at(worker, clock, RETRY_S)
    assert tries == [v2, v2]  # retried after 30 s
    poll_at(worker, clock, RETRY_S + 1.0)
    assert tries == [v2, v2]  # and the interval starts again from that try
    poll_at(worker, clock, 2 * RETRY_S - 0.001)
    assert tries == [v2, v2]
    poll_at(worker, clock, 2 * RETRY_S)
    assert tries == [v2, v2, v2]
    assert worker.status()["head_version"] == "v1"  # serving the old head all along
    counts = worker.stats.drain()["counts"]
    assert counts[("registry_errors", ())] == 1  # the same problem, said once
    assert ("head_swaps", ()) not in counts


def test_a_head_repaired_meanwhile_is_swapped_in_at_the_retry(
    worker, clock, broken_v2, monkeypatch
):
    v2, repair = broken_v2
    poll_at(worker, clock, 0.0)
    repair()
    poll_at(worker, clock, RETRY_S / 2)
    assert worker.status()["head_version"] == "v1"  # not looked at again yet
    poll_at(worker, clock, RETRY_S)
    status = worker.status()
    assert status["head_version"] == v2 and status["registry_problem"] is None
    assert worker.stats.drain()["counts"][("head_swaps", ())] == 1


def test_a_newer_promotion_is_tried_at_once(worker, clock, broken_v2, tiny_registry, monkeypatch):
    """The wait is for the head that failed, not for the registry: a head promoted after
    it is loaded at the next poll."""
    v2, _ = broken_v2
    tries = count_loads(worker, monkeypatch)
    poll_at(worker, clock, 0.0)
    v3 = register_untrained_head(tiny_registry, TINY, seed=3).version
    poll_at(worker, clock, 2.0)
    assert tries == [v2, v3]
    assert worker.status()["head_version"] == v3
