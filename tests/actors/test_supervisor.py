"""The driver's choice of head at start, and /readyz's reasons."""

import pytest

from actors.supervisor import Readiness, head_to_start_with
from tests.conftest import TINY
from training.errors import RegistryError
from training.model.detector import register_untrained_head
from training.model.registry import Registry


def test_a_corrupt_current_starts_with_the_newest_promoted_head_that_loads(tiny_registry):
    v2 = register_untrained_head(tiny_registry, TINY, seed=2)
    (tiny_registry.root / "CURRENT").write_bytes(b"\xff garbage")
    assert head_to_start_with(tiny_registry).version == v2.version
    (tiny_registry.heads / v2.version / "head.pt").write_bytes(b"")
    assert head_to_start_with(tiny_registry).version == "v1"


def test_no_head_at_all_refuses_to_start_and_says_how_to_get_one(tmp_path):
    with pytest.raises(RegistryError, match="dmguard train"):
        head_to_start_with(Registry(tmp_path / "empty"))


def test_readyz_names_each_reason():
    r = Readiness(expected_workers=2)
    assert r() == (False, "broker does not answer")
    r.broker_ok, r.workers_ready = True, 1
    assert r() == (False, "1/2 workers ready")
    r.workers_ready, r.head = 2, "v1"
    assert r() == (True, "ready: 2 workers, head v1")
    r.problems = ["worker 0: CURRENT is not UTF-8; still serving v1"]
    assert r() == (False, "worker 0: CURRENT is not UTF-8; still serving v1")


def test_the_broker_check_gives_up_within_its_timeout():
    """/readyz asks every few seconds whether the broker answers; with none listening
    the answer must come within the check's timeout (kafka-python alone waits 30 s
    for a first bootstrap, which stalled the driver's loop while the broker was away)."""
    import time

    from services.broker import free_port, kafka_answers

    start = time.monotonic()
    assert kafka_answers(f"127.0.0.1:{free_port()}", timeout_s=1.0) is False
    assert time.monotonic() - start < 1.0 + 5.0  # the deadline, with room for a busy machine
