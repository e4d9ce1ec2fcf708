"""What the fast StreamWorker tests share: the consumer record the worker reads, the
producer future it attaches an errback to, and running a worker in a thread as Ray
would (anything it raises is kept: that is what would make Ray restart it)."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Message:
    """What the worker reads of a Kafka consumer record."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes | None


class FakeFuture:
    """A producer send's future: the worker only adds an errback."""

    def add_errback(self, fn) -> FakeFuture:
        return self


def start_worker(worker, stop: threading.Event) -> tuple[threading.Thread, list[BaseException]]:
    """`worker.run(stop)` in a daemon thread; returns the thread and what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # what would make Ray restart the worker
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised
