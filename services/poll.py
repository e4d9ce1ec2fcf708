"""Waiting for something to happen: the one polling loop dmguard uses.

    wait_until(lambda: consumer.partitions_for_topic(topic), 120, what=f"topic {topic}")

calls the probe, returns its value as soon as `done(value)` holds (by default:
the value is truthy), and otherwise sleeps `interval_s` and tries again; once
`timeout_s` has passed (the probe always runs once more at the end) it raises
WaitTimeout, which names what was awaited and carries the probe's last value,
for a caller that can go on with what it has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from services.errors import DmguardError

T = TypeVar("T")


class WaitTimeout(DmguardError, TimeoutError):
    """`what` did not happen within `timeout_s`; `last` is the probe's last value."""

    def __init__(self, what: str, timeout_s: float, last: Any = None) -> None:
        super().__init__(f"gave up waiting for {what} after {timeout_s:g} s")
        self.what, self.timeout_s, self.last = what, timeout_s, last


def wait_until(
    probe: Callable[[], T],
    timeout_s: float,
    *,
    what: str,
    interval_s: float = 0.5,
    done: Callable[[T], object] = bool,
) -> T:
    """The first value of `probe()` for which `done(value)` holds; WaitTimeout after `timeout_s`.

    An exception from `probe` ends the wait at once (a probe that sees the awaited
    thing can no longer happen says so by raising). `interval_s` may be 0 for a
    probe that blocks by itself (a Kafka poll).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(what, timeout_s, value)
        if interval_s > 0:
            time.sleep(min(interval_s, left))
