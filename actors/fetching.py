"""From a record's URL to the encoder's input: fetch (guarded), decode at the encoder's
scale, preprocess with the head's test-time views. Runs in the workers' fetch threads;
`dmguard score` and the benchmarks use `fetch_pixels` too, so all score the same pixels."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from kafka.structs import TopicPartition

from services.config import WorkerSettings
from services.errors import InputError
from services.fetch import FetchPolicy, fetch_bytes
from services.images import DEFAULT_MAX_PIXELS, decode
from services.records import ImageRecord, Source
from training.model.encoders import Preprocess
from training.model.views import view_pixels

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One input record on its way through the pipeline."""

    tp: TopicPartition
    offset: int
    timestamp_ms: int
    value: bytes | None
    record: ImageRecord | None = None
    # (3, S, S) float32 after preprocessing; (1+V, 3, S, S) with the head's views
    pixels: np.ndarray | None = None
    error: InputError | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def source(self) -> Source:
        return Source(self.tp.topic, self.tp.partition, self.offset)


def fetch_pixels(
    url: str,
    policy: FetchPolicy,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    views: Sequence[str] = (),
) -> tuple[np.ndarray, dict[str, float]]:
    """Fetch (guarded), decode at the encoder's scale, preprocess with the head's test-time
    `views` (training.model.views.view_pixels): (pixels, stage seconds). Raises InputError with a
    dead-letter code. The worker and `dmguard score` share it."""
    t0 = time.perf_counter()
    data = fetch_bytes(url, policy)
    t1 = time.perf_counter()
    image = decode(data, target_size=preprocess.image_size, max_pixels=max_pixels)
    pixels = view_pixels(image, preprocess, views)
    return pixels, {"fetch": t1 - t0, "decode": time.perf_counter() - t1}


def fetch_and_preprocess(
    job: Job, settings: WorkerSettings, preprocess: Preprocess, views: Sequence[str] = ()
) -> Job:
    """Runs in a fetch thread. Never raises: failures land in `job.error`."""
    assert job.record is not None
    try:
        job.pixels, job.timings = fetch_pixels(
            job.record.url, settings.fetch, preprocess, settings.max_pixels, views
        )
    except InputError as exc:
        job.error = exc
    except Exception as exc:  # a bug or a library surprise: dead-letter it, keep going
        log.exception("unexpected error fetching %s", job.record.url)
        job.error = InputError(f"{type(exc).__name__}: {exc}", code="internal")
    return job
