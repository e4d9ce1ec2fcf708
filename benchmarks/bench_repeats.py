"""`dmguard bench --repeat-share R`: what the feature cache (actors/repeats.py) is worth on
a stream where a share R of the uploads repeat a file sent earlier.

Each record, in the order the pipeline sends them (warm-up, burst, half-load), is with
probability R a repost of a file an earlier record carried (picked among the earlier
records, so popular files come back more often), under its own URL; otherwise a file no
record carried before. (c) runs twice on that same sequence, the cache off and on, and
the ratio of their records per second is the cache's worth. Every other (c) of `bench`
runs with the cache off: it measures every upload as new."""

from __future__ import annotations

import math
import random

# Enough new files for the warm-up and the burst; the half-load run afterwards may wrap
# around and repeat more than R (its latency is reported, not its throughput).
SPARE_FILES = 8


class RepeatSchedule:
    """Record i (its place in the whole run) -> the index of the file it carries."""

    def __init__(self, share: float, seed: int = 0) -> None:
        if not 0.0 <= share < 1.0:
            raise ValueError(f"the repeat share must be in [0, 1), not {share}")
        self.share = share
        self._rng = random.Random(seed)
        self._files: list[int] = []
        self._new = 0

    def __call__(self, i: int) -> int:
        while len(self._files) <= i:
            if self._files and self._rng.random() < self.share:
                self._files.append(self._rng.choice(self._files))
            else:
                self._files.append(self._new)
                self._new += 1
        return self._files[i]

    def repeats(self, n: int) -> float:
        """The share of the first `n` records that repeat an earlier one's file."""
        return 1 - len(set(self(i) for i in range(n))) / n if n else 0.0


def files_needed(share: float, records: int) -> int:
    """How many distinct files `records` records at this share need, with room to spare."""
    return math.ceil((1 - share) * records * 1.15) + SPARE_FILES


def repeat_figures(off: dict, on: dict, schedule: RepeatSchedule, first: int, n: int) -> dict:
    """The "repeats" key of bench's JSON: both runs side by side, the ratio, and the share
    of the burst's records that really were repeats."""
    burst = [schedule(first + i) for i in range(n)]
    seen = {schedule(i) for i in range(first)}
    repeated = 0
    for f in burst:
        repeated += f in seen
        seen.add(f)

    def brief(run: dict) -> dict:
        return {
            "ips": round(run["ips"], 2),
            "latency_ms": run["latency_ms"],
            "stage_share": run["stage_share"],
            "worker_peak_rss_mib": run["worker_peak_rss_mib"],
        }

    return {
        "repeat_share": schedule.share,
        "burst_repeats": round(repeated / n, 3) if n else 0.0,
        "cache_off": brief(off),
        "cache_on": {**brief(on), "cache_mb": on.get("cache_mb")},
        "cache_vs_no_cache": round(on["ips"] / off["ips"], 3),
    }
