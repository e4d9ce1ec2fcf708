"""Scoring one image outside the stream (`dmguard score`, the peer benchmark's
per-file runner): the same fetch, views, head and verdict as a worker's."""

from __future__ import annotations

import time
from pathlib import Path

from actors.fetching import fetch_pixels
from services.errors import InputError
from services.fetch import FetchPolicy
from services.records import ImageRecord, Verdict


def score_one(detector, target: str, policy: FetchPolicy) -> tuple[str | dict, bool]:
    """(the verdict's JSON text, False), or ({id, url, error: {code, message}}, True) when
    the image cannot be scored. A target without "://" is a local path."""
    url = target if "://" in target else Path(target).resolve().as_uri()
    start = time.time() * 1000
    try:
        pixels, _ = fetch_pixels(url, policy, detector.encoder.preprocess, views=detector.views)
        _, scores = detector(pixels[None])
    except InputError as exc:
        return {"id": target, "url": url, "error": {"code": exc.code, "message": str(exc)}}, True
    meta = detector.meta
    verdicts, probabilities = detector.judge(scores)
    verdict = Verdict.build(
        ImageRecord(id=target, url=url),
        score=float(scores[0]),
        threshold=meta.threshold,
        encoder=meta.encoder,
        head_version=meta.version,
        record_ts_ms=start,
        verdict=verdicts[0],
        probability=probabilities[0],
        uncertain_from=meta.uncertain_from,
    )
    return verdict.to_bytes().decode(), False
