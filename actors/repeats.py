"""What a repeated upload costs a worker: as little as it can.

Upload streams repeat themselves (reposts, memes, client retries). Two records with the
same URL in flight at once share one fetch (`SharedFetches`). A repeated file's
bytes are fetched again (a URL can change what it serves) and hashed, but not decoded or
encoded again: the cache hands back the encoder's features, and the head that serves now
scores them. So a head swap never serves a stale verdict, and a hit is the uncached
verdict, only sooner. Entries are keyed by the encoder's signature too (encoder, feature
kind, test-time views): a new encoder never reads an old one's features.

Bounded by bytes (the features' arrays), least recently used first out; thread-safe:
the fetch threads look up, the worker's loop stores."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from actors.fetching import Job
    from services.metrics import WorkerStats

ENTRY_OVERHEAD = 200  # bytes of Python objects around each array, counted against the bound


@dataclass(frozen=True)
class Cached:
    features: np.ndarray  # the encoder's output for every view of the image, (1+V, F)
    cost_s: float  # what decoding and encoding it took: the time a hit saves
    size: int  # the file's bytes: what a hit does not decode again


class FeatureCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Hashable, bytes], Cached] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, signature: Hashable, digest: bytes) -> Cached | None:
        with self._lock:
            entry = self._entries.get((signature, digest))
            if entry is not None:
                self._entries.move_to_end((signature, digest))
            return entry

    def put(self, signature: Hashable, digest: bytes, entry: Cached) -> None:
        """Store (a copy of) `entry`, then drop the least recently used until within the
        bound. An entry larger than the whole bound is not stored."""
        cost = _footprint(entry)
        if cost > self.max_bytes:
            return
        entry = Cached(np.array(entry.features, copy=True), entry.cost_s, entry.size)
        with self._lock:
            old = self._entries.pop((signature, digest), None)
            if old is not None:
                self._bytes -= _footprint(old)
            self._entries[(signature, digest)] = entry
            self._bytes += cost
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= _footprint(dropped)

    @property
    def bytes(self) -> int:
        """Memory held, as the bound counts it."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _footprint(entry: Cached) -> int:
    return entry.features.nbytes + ENTRY_OVERHEAD


class SharedFetches:
    """Records whose URL is already being fetched wait for that fetch instead of fetching it
    again, and get its result (pixels or cached features, provenance, or its error). Used by
    the worker's loop only (one thread)."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[Job]] = {}

    def join(self, job: Job) -> bool:
        """True when `job`'s URL is in flight already (it waits); else it is now, for `job`."""
        assert job.record is not None
        followers = self._waiting.get(job.record.url)
        if followers is not None:
            followers.append(job)
            return True
        self._waiting[job.record.url] = []
        return False

    def finished(self, job: Job) -> list[Job]:
        """The jobs that waited for `job`'s fetch, each now holding its result."""
        assert job.record is not None
        followers = self._waiting.pop(job.record.url, [])
        for f in followers:
            f.pixels, f.cached, f.error = job.pixels, job.cached, job.error
            f.provenance, f.decided_by = job.provenance, job.decided_by
            f.digest, f.size, f.signature = job.digest, job.size, job.signature
        return followers


def count_repeats(stats: WorkerStats, cache_on: bool, job: Job, followers: list[Job]) -> None:
    """dmguard_cache_lookups_total{result} and what the hits and shared fetches saved."""
    if followers:
        stats.inc("cache_lookups", "shared_fetch", n=len(followers))
        stats.inc("cache_saved_bytes", n=job.size * len(followers))
    if not cache_on or job.error is not None:
        return
    if job.cached is None:
        stats.inc("cache_lookups", "miss")
        return
    stats.inc("cache_lookups", "hit")
    stats.inc("cache_saved_bytes", n=job.size)
    stats.inc("cache_saved_seconds", n=job.cached.cost_s)
