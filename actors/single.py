"""Scoring one image outside the stream (`dmguard score`, the peer benchmark's
per-file runner): the same fetch, provenance policy, views, head and verdict as a
worker's."""

from __future__ import annotations

import time
from pathlib import Path

from actors.fetching import fetch_image
from services.errors import InputError
from services.fetch import FetchPolicy
from services.provenance import ProvenanceSettings
from services.records import ImageRecord, Verdict


def score_one(
    detector, target: str, policy: FetchPolicy, provenance: ProvenanceSettings | None = None
) -> tuple[str | dict, bool]:
    """(the verdict's JSON text, False), or ({id, url, error: {code, message}}, True) when
    the image cannot be scored. A target without "://" is a local path. `provenance`: the
    markers read and the policy applied, as in `serve` (default: mode "on")."""
    url = target if "://" in target else Path(target).resolve().as_uri()
    start = time.time() * 1000
    try:
        got = fetch_image(
            url, policy, detector.encoder.preprocess, views=detector.views, provenance=provenance
        )
        _, scores = detector(got.pixels[None])
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
        verdict="generated" if got.decided_by == "provenance" else verdicts[0],
        probability=probabilities[0],
        uncertain_from=meta.uncertain_from,
        evidence=got.provenance.evidence,
        decided_by=got.decided_by,
    )
    return verdict.to_bytes().decode(), False
