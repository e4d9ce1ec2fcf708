"""A worker's batch through the model: every view's encoder features (from the feature
cache where a file was seen before, else embedded now, in one batch), the serving head's
scores, and the failures kept to the records that cause them: a batch on which the model
raises is split in halves down to single records, and a record with a non-finite
embedding or score becomes an `internal` dead letter (`reject`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import numpy as np

from actors.fetching import Job
from actors.repeats import Cached, FeatureCache
from services.errors import InputError
from services.metrics import WorkerStats
from training.model.detector import Detector

log = logging.getLogger(__name__)


def score_jobs(
    detector: Detector,
    jobs: list[Job],
    *,
    cache: FeatureCache | None,
    stats: WorkerStats,
    reject: Callable[[Job], None],
) -> tuple[list[Job], np.ndarray, np.ndarray]:
    """Embed and score `jobs`: (the jobs scored, their embeddings, their scores).

    A batch on which the model raises is split in halves and each half tried
    again, down to single records, so one record that breaks the model costs
    only itself; it and any record with a non-finite embedding or score become
    `internal` dead letters.
    """
    timings: dict[str, float] = {}
    try:
        view_features = _view_features(detector, jobs, timings)
        embeddings, scores = detector.score_features(
            view_features, [j.record.text for j in jobs], timings=timings
        )
    except Exception as exc:
        if len(jobs) == 1:
            log.exception("model failed on record %s", jobs[0].record.id)
            jobs[0].error = InputError(f"model failed: {type(exc).__name__}: {exc}")
            reject(jobs[0])
            return [], np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
        log.warning("model failed on a batch of %d (%s); retrying its halves", len(jobs), exc)
        mid = len(jobs) // 2
        parts = [
            score_jobs(detector, half, cache=cache, stats=stats, reject=reject)
            for half in (jobs[:mid], jobs[mid:])
        ]
        parts = [p for p in parts if p[0]]
        if not parts:
            return [], np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
        return (
            [j for p in parts for j in p[0]],
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )
    stats.observe("batch_size", len(jobs))
    for stage, seconds in timings.items():
        stats.observe("stage_seconds", seconds, stage)
    finite = np.isfinite(scores) & np.isfinite(embeddings).all(axis=1)
    for job in (j for j, ok in zip(jobs, finite, strict=True) if not ok):
        job.error = InputError("the model produced a non-finite embedding or score")
        reject(job)
    if cache is not None:
        _remember(cache, detector.signature, jobs, view_features, finite, timings)
    if finite.all():
        return jobs, embeddings, scores
    kept = [j for j, ok in zip(jobs, finite, strict=True) if ok]
    return kept, embeddings[finite], scores[finite]


def _view_features(detector: Detector, jobs: list[Job], timings: dict[str, float]) -> np.ndarray:
    """Every view's encoder features, (B, 1+V, F): from the cache where a job has them,
    else embedded now, in one batch."""
    todo = [j for j in jobs if j.cached is None]
    embedded = iter(
        detector.embed(np.stack([j.pixels for j in todo]), timings=timings) if todo else ()
    )
    return np.stack([j.cached.features if j.cached else next(embedded) for j in jobs])


def _remember(
    cache: FeatureCache,
    signature: Hashable,
    jobs: list[Job],
    view_features: np.ndarray,
    finite: np.ndarray,
    timings: dict,
) -> None:
    """Put the features just embedded (finite ones) in the cache, with what they cost."""
    todo = [i for i, j in enumerate(jobs) if j.cached is None and j.digest and finite[i]]
    per_image = timings.get("embed", 0.0) / max(1, sum(j.cached is None for j in jobs))
    for i in todo:
        cost = per_image + jobs[i].timings.get("decode", 0.0)
        cache.put(signature, jobs[i].digest, Cached(view_features[i], cost, jobs[i].size))
