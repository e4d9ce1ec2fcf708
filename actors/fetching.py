"""From a record's URL to the encoder's input: fetch (guarded), read what the bytes declare
about their making (services.provenance), decode at the encoder's scale, preprocess with
the head's test-time views. Runs in the workers' fetch threads; `dmguard score` uses
`fetch_image` and the benchmarks `fetch_pixels`, so all score the same pixels, and serving
and `dmguard score` report the same evidence and apply the same policy."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from kafka.structs import TopicPartition

from actors.repeats import Cached, FeatureCache
from services.config import WorkerSettings
from services.errors import InputError
from services.fetch import FetchPolicy, fetch_bytes
from services.images import DEFAULT_MAX_PIXELS, decode
from services.metrics import WorkerStats
from services.provenance import ProvenanceSettings, Report, read_provenance
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
    provenance: Report | None = None  # what the bytes declare (services.provenance)
    decided_by: str = "model"  # "provenance": a declared AI marker makes it "generated"
    digest: bytes = b""  # SHA-256 of the fetched bytes
    size: int = 0  # how many bytes were fetched
    # From the feature cache instead of `pixels`: the encoder's output for these bytes,
    # found under `signature` (the encoder's, `Detector.signature`, when it was fetched).
    cached: Cached | None = None
    signature: Hashable = None

    @property
    def source(self) -> Source:
        return Source(self.tp.topic, self.tp.partition, self.offset)


@dataclass
class Fetched:
    pixels: np.ndarray | None  # None when `cached` holds the encoder's output instead
    timings: dict[str, float]  # stage -> seconds: fetch, provenance, decode
    provenance: Report
    digest: bytes = b""
    size: int = 0
    cached: Cached | None = None

    @property
    def decided_by(self) -> str:
        """Who makes the verdict, under the policy of `services.provenance.decides`."""
        return "provenance" if self.provenance.decisive is not None else "model"


def fetch_image(
    url: str,
    policy: FetchPolicy,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    views: Sequence[str] = (),
    provenance: ProvenanceSettings | None = None,
    cache: FeatureCache | None = None,
    signature: Hashable = None,
) -> Fetched:
    """Fetch (guarded), read the provenance markers from the fetched bytes (before decoding,
    no second fetch), decode at the encoder's scale, preprocess with the head's test-time
    `views` (training.model.views.view_pixels). Raises InputError with a dead-letter code;
    reading the markers never raises. The worker and `dmguard score` share it. With a
    `cache` that holds these bytes' features under `signature`, nothing is decoded: the
    result carries them in `cached` instead of pixels."""
    provenance = provenance or ProvenanceSettings()
    t0 = time.perf_counter()
    data = fetch_bytes(url, policy)
    t1 = time.perf_counter()
    report = read_provenance(data, provenance)
    t2 = time.perf_counter()
    timings = {"fetch": t1 - t0}
    if provenance.mode != "off":
        timings["provenance"] = t2 - t1
    digest = hashlib.sha256(data).digest() if cache is not None else b""
    hit = cache.get(signature, digest) if cache is not None else None
    if hit is not None:
        return Fetched(None, timings, report, digest, len(data), hit)
    image = decode(data, target_size=preprocess.image_size, max_pixels=max_pixels)
    pixels = view_pixels(image, preprocess, views)
    timings["decode"] = time.perf_counter() - t2
    return Fetched(pixels, timings, report, digest, len(data))


def fetch_pixels(
    url: str,
    policy: FetchPolicy,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    views: Sequence[str] = (),
) -> tuple[np.ndarray, dict[str, float]]:
    """`fetch_image` without provenance: (pixels, stage seconds), for the benchmarks and
    tests that compare pixels only."""
    got = fetch_image(url, policy, preprocess, max_pixels, views, ProvenanceSettings("off"))
    return got.pixels, got.timings


def fetch_and_preprocess(
    job: Job,
    settings: WorkerSettings,
    preprocess: Preprocess,
    views: Sequence[str] = (),
    cache: FeatureCache | None = None,
    signature: Hashable = None,
) -> Job:
    """Runs in a fetch thread. Never raises: failures land in `job.error`."""
    assert job.record is not None
    try:
        got = fetch_image(
            job.record.url,
            settings.fetch,
            preprocess,
            settings.max_pixels,
            views,
            settings.provenance,
            cache,
            signature,
        )
        job.pixels, job.timings, job.provenance = got.pixels, got.timings, got.provenance
        job.decided_by, job.digest, job.size = got.decided_by, got.digest, got.size
        job.cached, job.signature = got.cached, signature
    except InputError as exc:
        job.error = exc
    except Exception as exc:  # a bug or a library surprise: dead-letter it, keep going
        log.exception("unexpected error fetching %s", job.record.url)
        job.error = InputError(f"{type(exc).__name__}: {exc}", code="internal")
    return job


def evidence_json(job: Job) -> str | None:
    """The feature log's `evidence` cell: the verdict's evidence as JSON, None when not read."""
    if job.provenance is None or job.provenance.mode == "off":
        return None
    return json.dumps(job.provenance.evidence, ensure_ascii=False, separators=(",", ":"))


def count_provenance(stats: WorkerStats, job: Job) -> None:
    """dmguard_provenance_total{kind,result}: each finding by its claim, an image with none
    as kind="none", and the marker that decided a verdict once more as result="decided"."""
    if job.provenance is None or job.provenance.mode == "off":
        return
    for finding in job.provenance.findings:
        stats.inc("provenance", finding.kind, finding.claim)
    if not job.provenance.findings:
        stats.inc("provenance", "none", "none")
    if job.provenance.decisive is not None:
        stats.inc("provenance", job.provenance.decisive.kind, "decided")
