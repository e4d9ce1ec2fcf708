import pytest

from actors.batching import Batcher, OffsetTracker


def test_batch_closes_when_full():
    b = Batcher(max_batch=3, max_wait_s=10.0)
    for i in range(3):
        assert not b.ready(now=0.0)
        b.add(i, now=0.0)
    assert b.ready(now=0.0)
    assert b.take(now=0.0) == [0, 1, 2]
    assert len(b) == 0 and b.time_left(0.0) is None


def test_batch_closes_when_the_oldest_item_has_waited_long_enough():
    b = Batcher(max_batch=32, max_wait_s=0.05)
    b.add("a", now=1.00)
    b.add("b", now=1.04)
    assert not b.ready(now=1.049)
    assert b.time_left(now=1.03) == pytest.approx(0.02)
    assert b.ready(now=1.05)  # measured from the first item, not the last
    assert b.take(now=1.05) == ["a", "b"]


def test_overflow_opens_a_new_batch_at_take_time():
    b = Batcher(max_batch=2, max_wait_s=1.0)
    for i in range(5):
        b.add(i, now=0.0)
    assert b.take(now=5.0) == [0, 1]
    assert b.ready(now=5.0)  # still full
    assert b.take(now=5.0) == [2, 3]
    assert not b.ready(now=5.5) and b.ready(now=6.0)  # the leftover waits max_wait from 5.0


def test_zero_wait_means_no_batching_delay():
    b = Batcher(max_batch=8, max_wait_s=0.0)
    b.add(1, now=0.0)
    assert b.ready(now=0.0)


def test_bad_batcher_settings():
    with pytest.raises(ValueError):
        Batcher(max_batch=0, max_wait_s=0.1)
    with pytest.raises(ValueError):
        Batcher(max_batch=1, max_wait_s=-1)


def test_commit_stops_at_the_lowest_pending_offset():
    t = OffsetTracker()
    assert t.committable() is None
    for off in (10, 11, 12, 13):
        t.add(off)
    t.done(12)
    t.done(13)
    assert t.committable() == 10  # 10 and 11 are not finished: nothing past them
    t.done(10)
    assert t.committable() == 11
    t.done(11)
    assert t.committable() == 14
    t.mark_committed(14)
    assert t.committable() is None  # would not move forward


def test_commit_never_moves_backwards():
    t = OffsetTracker(committed=20)
    t.add(15)  # redelivered after a rebalance
    assert t.committable() is None
    t.done(15)
    assert t.committable() is None
    with pytest.raises(ValueError):
        t.mark_committed(19)
