"""Continuous retraining: labels from `dmguard.labels`, joined by id with the
feature log (so CLIP is never run again), plus the current head's own
training data from the embedding cache; train, evaluate, promote or not.

The ids of the labelled features a head was trained on are kept beside it
(`heads/vN/feedback_ids.json`), so "new labels" means labels the current
head has not learnt from yet.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from services.config import KafkaSettings
from services.errors import RecordError
from services.kafka_io import assign_all, make_consumer
from services.records import LabelRecord
from training.feature_log import read_feature_log
from training.job import head_input, train_register
from training.registry import Registry
from training.train import TrainConfig

log = logging.getLogger(__name__)


def read_labels(kafka: KafkaSettings, topic: str) -> tuple[dict[str, int], int]:
    """Every label on the topic ({id: 1 generated / 0 real}, last one wins) and the count of bad ones."""
    consumer = make_consumer(kafka, group=False)
    try:
        tps = assign_all(consumer, topic)
        if not tps:
            return {}, 0
        end = consumer.end_offsets(tps)
        labels, bad = {}, 0
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for messages in consumer.poll(timeout_ms=500).values():
                for m in messages:
                    try:
                        rec = LabelRecord.from_bytes(m.value)
                    except RecordError:
                        bad += 1
                        continue
                    labels[rec.id] = 1 if rec.label == "generated" else 0
        return labels, bad
    finally:
        consumer.close()


def labelled_features(
    feature_log: str, labels: dict[str, int], encoder: str
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, embeddings, labels) for logged images that have a label, under `encoder`."""
    table = read_feature_log(feature_log)
    table = table.filter(pc.equal(table.column("encoder"), encoder))
    latest: dict[str, np.ndarray] = {}
    for rid, emb in zip(
        table.column("id").to_pylist(), table.column("embedding").to_pylist(), strict=True
    ):
        if rid in labels:
            latest[rid] = np.asarray(
                emb, np.float32
            )  # a reprocessed record logs the same embedding again
    ids = sorted(latest)
    X = np.stack([latest[i] for i in ids]) if ids else np.zeros((0, 0), np.float32)
    return ids, X, np.array([labels[i] for i in ids], dtype=np.int64)


@dataclass(frozen=True)
class RetrainSettings:
    kafka: KafkaSettings
    labels_topic: str
    registry: str
    feature_log: str
    cache: Path = Path(".cache")
    min_new_labels: int = 50
    tolerance: float = 0.0
    train: TrainConfig = field(default_factory=TrainConfig)


def retrain_once(s: RetrainSettings) -> dict:
    """One round; returns a summary (what was found, trained, promoted)."""
    registry = Registry(s.registry)
    current = registry.current()
    if current is None:
        return {"trained": False, "reason": "no current head: train or register one first"}
    meta = registry.meta(current)
    labels, bad = read_labels(s.kafka, s.labels_topic)
    ids, X_fb, y_fb = labelled_features(s.feature_log, labels, meta.encoder)
    used = _feedback_ids(registry, current)
    new = [i for i in ids if i not in used]
    summary = {"current": current, "labels": len(labels), "bad_labels": bad, "labelled_features": len(ids),
               "new": len(new)}  # fmt: skip
    if len(new) < max(1, s.min_new_labels):
        return {
            **summary,
            "trained": False,
            "reason": f"{len(new)} new labelled features < {s.min_new_labels}",
        }
    # The feature log holds no caption embeddings: a head with text sees feedback as caption-less.
    X = head_input(X_fb, None, uses_text=meta.uses_text, input_dim=meta.input_dim)
    y, sources = y_fb, ["feedback"] * len(ids)
    data = meta.extra.get("data")
    if data and Path(data["src"]).exists():  # the current head's own training data, from the cache
        from training.data import load_samples
        from training.embeddings import embed_samples

        base = embed_samples(
            load_samples(data["src"]), meta.encoder, cache_dir=s.cache / "embeddings", progress=False,
            with_text=meta.uses_text,
        )  # fmt: skip
        X_base = head_input(base.X, base.T, uses_text=meta.uses_text, input_dim=meta.input_dim)
        X, y, sources = (
            np.concatenate([X_base, X]),
            np.concatenate([base.labels, y]),
            base.sources + sources,
        )
    cfg = replace(s.train, text_dim=X.shape[1] - X_fb.shape[1])
    new_meta = train_register(
        X, y, sources, encoder=meta.encoder, registry=registry, cfg=cfg, storage=s.cache / "ray-train",
        tolerance=s.tolerance, extra={"data": data, "feedback": {"labelled_features": len(ids), "new": len(new)}},
    )  # fmt: skip
    (registry.heads / new_meta.version / "feedback_ids.json").write_text(json.dumps(ids))
    promotion = new_meta.extra["promotion"]
    return {**summary, "trained": True, "version": new_meta.version, **promotion}


def _feedback_ids(registry: Registry, version: str) -> set[str]:
    path = registry.heads / version / "feedback_ids.json"
    return set(json.loads(path.read_text())) if path.exists() else set()
