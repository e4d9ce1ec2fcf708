"""One total deadline per fetch, whatever the server or the resolver does.

A fetch's `Deadline` (`FetchPolicy.total_timeout_s`) covers DNS, connect,
TLS handshake, status line, headers and body. Socket timeouts alone cannot
bound that: a server dripping one byte per timeout resets them forever, and
``getaddrinfo`` has no timeout at all. So:

* Resolvers run in a small shared pool of daemon threads (`RESOLVERS`) and
  the fetch waits for the answer only for the time it has left: a hung
  lookup costs a pool thread until it returns, never a fetch thread (if all
  pool threads hang, later lookups time out).
* Once connected, the socket is attached to the deadline and a single
  watchdog thread calls ``shutdown(SHUT_RDWR)`` on it when the deadline
  passes: that interrupts any blocking recv, however slowly a server drips
  its status line, headers, TLS records or body, and the fetch then reports
  ``timeout``. Socket timeouts bounded by the time left back the watchdog
  up; connecting is also bounded by `FetchPolicy.connect_timeout_s`.

The watchdog and the pool belong to the process: a forked child starts its
own threads on first use.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable

RESOLVER_THREADS = 8


def _shutdown(sock: socket.socket) -> None:
    try:
        # The base class's method: ssl.SSLSocket.shutdown would also drop its
        # SSL object under the feet of the reading thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Deadline:
    """The one deadline of a fetch, and the socket the watchdog shuts down when it passes."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._fired = False
        self.done = False
        self._watched = False

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self.at

    def io_timeout(self) -> float:
        """A socket timeout for the next operation: the time left, never 0 (non-blocking)."""
        return max(0.01, self.remaining())

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            fired = self._fired
        if not self._watched:
            self._watched = True
            _WATCHDOG.watch(self)
        if fired or self.expired:
            self.fire()

    def detach(self) -> None:
        """Called before the socket is closed: the watchdog never touches a closed
        socket (whose descriptor may already belong to someone else)."""
        with self._lock:
            self._sock = None

    def fire(self) -> None:
        with self._lock:
            if self.done:
                return
            self._fired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._sock = None


class _Watchdog:
    """One daemon thread firing the deadlines of all fetches of the process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._pid = 0

    def watch(self, deadline: Deadline) -> None:
        with self._cond:
            if self._pid != os.getpid():  # first use, or a forked child: no thread yet
                self._pid = os.getpid()
                self._heap = []
                threading.Thread(target=self._run, name="fetch-watchdog", daemon=True).start()
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].done):
                    _, _, deadline = heapq.heappop(self._heap)
                    deadline.fire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


class _ResolverPool:
    """A few daemon threads running resolvers, so that a fetch can stop waiting."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = 0

    def submit(self, fn: Callable, *args) -> concurrent.futures.Future:
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                for i in range(self._threads):
                    threading.Thread(
                        target=self._work, args=(self._queue,), name=f"resolver-{i}", daemon=True
                    ).start()
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._queue.put((fn, args, future))
        return future

    @staticmethod
    def _work(jobs: queue.SimpleQueue) -> None:
        while True:
            fn, args, future = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting fetch
                future.set_exception(exc)


_WATCHDOG = _Watchdog()
# The one resolver pool of the process, shared by every fetch (services.fetch).
RESOLVERS = _ResolverPool(RESOLVER_THREADS)
