"""How many DetectorWorkers the stream needs (`serve --workers auto`).

Every few seconds the driver takes a `Sample` of the fleet: the summed consumer
lag, the records finished so far and the seconds the workers spent idle
(waiting for records with nothing in their pipeline). Over the last `window_s`
of samples:

  processed = records finished per second
  arriving  = processed + how fast the lag grew
  busy      = 1 - idle seconds / (seconds x workers)      (the batch fill)

Up: the workers do not keep up, either the lag is already worth more than
`lag_s` seconds of processing (at least 1 record a second), or it is growing
while the workers are saturated (`busy` at least `saturated_busy` and
more arriving than `growth_margin` above what they finish: a fleet that is
never idle and falls behind even slowly will not catch up): enough workers, at the
current rate per worker, for what arrives plus the lag cleared in `drain_s`,
with `headroom`. The second test reacts to a step in the input within one
window instead of waiting for the backlog to build up (and some brokers'
end offsets undercount a batched backlog, docs/delivery.md). Down: no lag to speak of
and the workers idle: as many as would be `target_busy` busy. Never below
`min_workers`, never above `max_workers` (which the pool caps at the input
partitions), and no change within `cooldown_s` of the last one, so that the
signal after a resize settles before the next decision.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    t: float  # seconds (monotonic)
    lag: float  # records waiting, summed over partitions
    done: float  # records finished so far (counter)
    idle_s: float  # seconds the workers spent idle so far (counter, summed over workers)


@dataclass
class Autoscaler:
    min_workers: int
    max_workers: int
    window_s: float = 30.0
    cooldown_s: float = 60.0
    lag_s: float = 10.0  # lag worth this many seconds of processing is "not keeping up"
    drain_s: float = 60.0  # when scaling up, clear the lag in about this long
    headroom: float = 0.2
    target_busy: float = 0.6
    saturated_busy: float = 0.9  # this busy and the lag growing: falling behind
    growth_margin: float = 0.05  # lag growth below this share of the rate is noise

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(
                f"need 1 <= min_workers <= max_workers, got {self.min_workers}, {self.max_workers}"
            )
        self._samples: deque[Sample] = deque()
        self._last_change = -math.inf

    def observe(self, sample: Sample) -> None:
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.t - self._samples[1].t >= self.window_s:
            self._samples.popleft()

    def resized(self, now: float) -> None:
        """The pool changed size: start the cooldown, and judge only what comes after."""
        self._last_change = now
        self._samples.clear()

    def desired(self, workers: int, now: float) -> int:
        """The pool size to have now (`workers` when there is nothing to change)."""
        if now - self._last_change < self.cooldown_s or len(self._samples) < 2:
            return workers
        first, last = self._samples[0], self._samples[-1]
        span = last.t - first.t
        if span < self.window_s / 2:
            return workers
        processed = max(0.0, (last.done - first.done) / span)
        arriving = max(0.0, processed + (last.lag - first.lag) / span)
        busy = min(1.0, max(0.0, 1 - (last.idle_s - first.idle_s) / (span * workers)))
        behind = last.lag > self.lag_s * max(processed, 1.0)
        falling_behind = (
            busy >= self.saturated_busy
            and last.lag > first.lag
            and arriving > processed * (1 + self.growth_margin)
        )
        if behind or falling_behind:
            per_worker = processed / workers
            if per_worker <= 0:
                want = workers + 1  # nothing finished yet: one more, then look again
            else:
                need = (arriving + last.lag / self.drain_s) * (1 + self.headroom)
                want = max(workers + 1, math.ceil(need / per_worker))
        elif busy < self.target_busy:
            want = max(1, math.ceil(workers * busy / self.target_busy))
        else:
            want = workers
        return max(self.min_workers, min(self.max_workers, want))
