"""The autoscaler's decisions (actors.scaling), on samples worked out by hand."""

from __future__ import annotations

import pytest

from actors.scaling import Autoscaler, Sample


def scaler(**kw) -> Autoscaler:
    return Autoscaler(
        **{"min_workers": 1, "max_workers": 8, "window_s": 30, "cooldown_s": 60, **kw}
    )


def judged(workers: int, first: Sample, last: Sample, **kw) -> int:
    """What a fresh autoscaler wants after seeing `first` then `last`, long after any resize."""
    s = scaler(**kw)
    s.observe(first)
    s.observe(last)
    return s.desired(workers, now=100)


def test_a_fleet_that_keeps_up_and_is_busy_stays_as_it_is():
    # 2 workers, 8 records/s in and out, lag steady at 5, idle 6 of 60 worker-seconds.
    assert judged(2, Sample(0, lag=5, done=0, idle_s=0), Sample(30, lag=5, done=240, idle_s=6)) == 2


def test_falling_behind_asks_for_what_arrives_plus_the_lag_cleared():
    # 2 workers finish 4/s; the lag grows 6/s: 10/s arrive. Lag 180 > 10 s x 4/s.
    first, last = Sample(0, lag=0, done=0, idle_s=0), Sample(30, lag=180, done=120, idle_s=0)
    # (10/s + 180/60 s) x 1.2 = 15.6/s at 2/s per worker: 8 workers.
    assert judged(2, first, last) == 8
    assert judged(2, first, last, max_workers=4) == 4


def test_an_idle_fleet_shrinks_to_what_would_be_busy_enough():
    # 4 workers, no lag, 100 of 120 worker-seconds idle: 1/6 busy; 4 x (1/6) / 0.6 -> 2.
    first, last = Sample(0, lag=0, done=0, idle_s=0), Sample(30, lag=0, done=60, idle_s=100)
    assert judged(4, first, last) == 2
    assert judged(4, first, last, min_workers=3) == 3  # never below min_workers


def test_no_decision_within_the_cooldown_or_on_too_short_a_window():
    s = scaler()
    s.resized(now=0)
    s.observe(Sample(10, lag=0, done=0, idle_s=0))
    s.observe(Sample(40, lag=500, done=30, idle_s=0))
    assert s.desired(1, now=40) == 1  # 40 s after a resize: cooling down
    assert s.desired(1, now=61) == 8  # after it: behind, up to the cap
    # 5 s of samples say too little
    assert judged(1, Sample(0, lag=0, done=0, idle_s=0), Sample(5, lag=500, done=10, idle_s=0)) == 1


def test_nothing_finished_yet_adds_one_worker_at_a_time():
    assert (
        judged(2, Sample(0, lag=100, done=0, idle_s=0), Sample(30, lag=300, done=0, idle_s=0)) == 3
    )


def test_the_window_keeps_only_recent_samples():
    s = scaler()
    s.observe(Sample(0, lag=10_000, done=0, idle_s=0))  # an old backlog, long cleared
    for t in range(10, 200, 10):
        s.observe(Sample(t, lag=0, done=8 * t, idle_s=0))
    assert s.desired(2, now=300) == 2  # judged on the last 30 s: keeping up, busy


def test_bounds_must_make_sense():
    with pytest.raises(ValueError):
        Autoscaler(min_workers=3, max_workers=2)
    with pytest.raises(ValueError):
        Autoscaler(min_workers=0, max_workers=2)


def test_a_saturated_fleet_whose_lag_grows_scales_up_before_the_backlog_is_large():
    # 1 worker finishes 8.5/s, never idle; 10/s arrive: the lag grows 1.5/s, 0 -> 45 in 30 s,
    # far under lag_s x 8.5/s = 85. Arriving 10/s > 8.5/s x 1.05: falling behind.
    # (10 + 45/60) x 1.2 = 12.9/s at 8.5/s per worker: 2 workers.
    step = Sample(0, lag=0, done=0, idle_s=0), Sample(30, lag=45, done=255, idle_s=0)
    assert judged(1, *step) == 2
    # Lag that wobbles by a batch (20 -> 30: 8.83/s < 8.93/s) is noise: stay.
    assert (
        judged(1, Sample(0, lag=20, done=0, idle_s=0), Sample(30, lag=30, done=255, idle_s=0)) == 1
    )
    # The same growth with the worker idle a fifth of the time is not saturation.
    assert judged(1, step[0], Sample(30, lag=45, done=255, idle_s=6)) == 1
