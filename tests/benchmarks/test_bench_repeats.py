"""The repeated-uploads sequence of `dmguard bench --repeat-share` (benchmarks/bench_repeats.py):
the share of repeats it promises, files it never reuses otherwise, the same sequence each run."""

from __future__ import annotations

import pytest

from benchmarks.bench_repeats import RepeatSchedule, files_needed


def repeated_share(files: list[int]) -> float:
    """Counted directly: a record repeats when an earlier record carried its file."""
    seen, repeats = set(), 0
    for f in files:
        repeats += f in seen
        seen.add(f)
    return repeats / len(files)


@pytest.mark.parametrize("share", [0.0, 0.3, 0.6])
def test_about_the_asked_share_repeats_and_new_files_are_new(share):
    schedule = RepeatSchedule(share, seed=1)
    files = [schedule(i) for i in range(4000)]
    assert repeated_share(files) == pytest.approx(share, abs=0.03)
    firsts = [f for i, f in enumerate(files) if f not in files[:i]]
    assert firsts == list(range(len(firsts)))  # a new file is the next unused one
    assert max(files) + 1 <= files_needed(share, 4000)


def test_the_same_sequence_every_run_and_in_any_order_of_asking():
    a = RepeatSchedule(0.3, seed=0)
    b = RepeatSchedule(0.3, seed=0)
    late = b(99)  # asked out of order first
    assert [a(i) for i in range(100)] == [b(i) for i in range(100)] and a(99) == late
    with pytest.raises(ValueError):
        RepeatSchedule(1.0)
