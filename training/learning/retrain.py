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
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from services.config import KafkaSettings
from services.errors import DmguardError, RecordError
from services.kafka_io import assign_all, make_consumer
from services.records import LabelRecord
from training.data.feature_log import read_feature_log
from training.errors import RegistryError, TrainingDataError
from training.learning.config import TrainConfig
from training.learning.job import train_register
from training.model.head import head_input
from training.model.registry import HeadMeta, Registry

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
    feature_log: str, labels: dict[str, int], encoder: str, features: str = "embedding"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, image features, labels) for logged images that have a label, under `encoder`
    and of the kind `features` (rows without a kind are "embedding")."""
    table = read_feature_log(feature_log)
    kinds = pc.fill_null(table.column("features"), "embedding")
    table = table.filter(
        pc.and_(pc.equal(table.column("encoder"), encoder), pc.equal(kinds, features))
    )
    # A record redone (after a crash, or by another worker) is logged again: the newest
    # row wins, by its `ts`; rows of equal `ts` in the order they were read.
    ids, embs = table.column("id").to_pylist(), table.column("embedding").to_pylist()
    ts = table.column("ts").to_pylist()
    latest: dict[str, np.ndarray] = {}
    for i in sorted(range(len(ids)), key=lambda i: (ts[i] if ts[i] is not None else -1.0, i)):
        if ids[i] in labels:
            latest[ids[i]] = np.asarray(embs[i], np.float32)
    ids = sorted(latest)
    X = np.stack([latest[i] for i in ids]) if ids else np.zeros((0, 0), np.float32)
    return ids, X, np.array([labels[i] for i in ids], dtype=np.int64)


FEEDBACK = "feedback"  # the source name of every labelled feature-log row
SKIP_EXIT = 3  # `retrain --once --fail-on-skip`: the round trained nothing


def round_features(
    meta: HeadMeta, X_fb: np.ndarray, y_fb: np.ndarray, cache: Path
) -> tuple[np.ndarray, np.ndarray, list[str], int | None]:
    """A round's rows as the head reads them (`training.model.head.head_input`), with labels and
    sources: the current head's own training data from the embedding cache (captions
    included, for a head that uses text), then the labelled feature-log rows `X_fb`,
    caption-less (the feature log holds no caption embeddings). The last item is the
    number of base rows, None when the head records no training data that still exists."""
    X = head_input(X_fb, None, uses_text=meta.uses_text, input_dim=meta.input_dim)
    y, sources = y_fb, [FEEDBACK] * len(X_fb)
    data = meta.extra.get("data")
    if not (data and Path(data["src"]).exists()):
        return X, y, sources, None
    from training.data.embeddings import embed_samples
    from training.data.samples import load_samples

    base = embed_samples(
        load_samples(data["src"]),
        meta.encoder,
        cache_dir=cache / "embeddings",
        progress=False,
        with_text=meta.uses_text,
        features=meta.features,
    )
    X_base = head_input(base.X, base.T, uses_text=meta.uses_text, input_dim=meta.input_dim)
    return (
        np.concatenate([X_base, X]),
        np.concatenate([base.labels, y]),
        base.sources + sources,
        len(base.labels),
    )


@dataclass(frozen=True)
class RetrainSettings:
    kafka: KafkaSettings
    labels_topic: str
    registry: str
    feature_log: str
    cache: Path = Path(".cache")
    min_new_labels: int = 50
    min_per_class: int = 2  # labelled rows of each class each side of the split needs
    tolerance: float = 0.0
    train: TrainConfig = field(default_factory=TrainConfig)


def retrain_once(s: RetrainSettings, *, labels: tuple[dict[str, int], int] | None = None) -> dict:
    """One round; returns a summary (what was found, trained, promoted).

    `labels` ({id: 1 generated / 0 real}, count of bad label records) stands
    in for reading the labels topic (tests, callers that hold them already).

    A round that trains nothing says why in `reason`, with `trained` false:
    too few new labels, a split without enough of each class on each side
    (with the split's counts), or a failure while training (logged with its
    traceback). Feedback rows are split stratified by label among themselves;
    the current head's own data keeps its whole-source split.

    Raises:
        RegistryError: no registry at `s.registry`, or no current head in it.
        BrokerError: the labels topic cannot be read.
    """
    registry = Registry(s.registry)
    current = registry.current()
    if current is None:
        raise RegistryError(
            f"no current head in registry {s.registry}: train one with `dmguard train --data SRC` "
            "(or point --registry / $DMGUARD_REGISTRY at one)"
        )
    meta = registry.meta(current)
    label_map, bad = read_labels(s.kafka, s.labels_topic) if labels is None else labels
    ids, X_fb, y_fb = labelled_features(s.feature_log, label_map, meta.encoder, meta.features)
    used = _feedback_ids(registry, current)
    new = [i for i in ids if i not in used]
    summary = {
        "current": current,
        "labels": len(label_map),
        "bad_labels": bad,
        "labelled_features": len(ids),
        "new": len(new),
        "feedback_per_class": {"generated": int((y_fb == 1).sum()), "real": int((y_fb == 0).sum())},
    }
    if len(new) < max(1, s.min_new_labels):
        return {
            **summary,
            "trained": False,
            "reason": f"{len(new)} new labelled features < {s.min_new_labels}",
        }
    X, y, sources, n_base = round_features(meta, X_fb, y_fb, s.cache)
    if n_base is not None:
        summary["base"] = n_base
    data = meta.extra.get("data")
    # The new head reads what the current one reads, shaped the same way.
    cfg = replace(
        s.train,
        text_dim=X.shape[1] - X_fb.shape[1],
        features=meta.features,
        tower_blocks=meta.extra.get("train_config", {}).get("tower_blocks", 0),
        hidden_dim=meta.extra.get("train_config", {}).get("hidden_dim", 0),
        depth=meta.extra.get("train_config", {}).get("depth", 3),
        standardize=meta.extra.get("train_config", {}).get("standardize", False),
    )
    try:
        new_meta = train_register(
            X,
            y,
            sources,
            encoder=meta.encoder,
            registry=registry,
            cfg=cfg,
            storage=s.cache / "ray-train",
            tolerance=s.tolerance,
            stratify_sources={FEEDBACK},
            min_per_class=s.min_per_class,
            extra={"data": data, "feedback": {"labelled_features": len(ids), "new": len(new)}},
        )
    except TrainingDataError as exc:
        return {**summary, "trained": False, "reason": str(exc), "split": exc.counts}
    except Exception as exc:  # noqa: BLE001 - a failed round is reported; the next may succeed
        log.exception("retrain: training failed")
        return {
            **summary,
            "trained": False,
            "reason": f"training failed: {_one_line(exc)}",
            "error": type(exc).__name__,
        }
    (registry.heads / new_meta.version / "feedback_ids.json").write_text(json.dumps(ids))
    promotion = new_meta.extra["promotion"]
    return {**summary, "trained": True, "version": new_meta.version, **promotion}


def retrain_loop(
    round_fn: Callable[[], dict],
    emit: Callable[[dict], None],
    *,
    every: float | None = None,
    fail_on_skip: bool = False,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run `round_fn` once (`every` None) or every `every` seconds until `stop()`.

    Each round's summary goes to `emit`. Returns the exit code of `--once`: 0,
    or SKIP_EXIT when the round trained nothing and `fail_on_skip` is set; an
    error in a `--once` round propagates. With `every`, a round that raises is
    reported (a DmguardError by its message; anything else logged with its
    traceback at ERROR) as {"trained": false, "reason": ..., "error": ...} and
    the loop goes on to the next round.
    """
    if every is None:
        result = round_fn()
        emit(result)
        return SKIP_EXIT if fail_on_skip and not result.get("trained") else 0
    while True:
        try:
            result = round_fn()
        except DmguardError as exc:
            log.error("retrain round: %s", exc)
            result = {"trained": False, "reason": _one_line(exc), "error": type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - one bad round must not end the retrainer
            log.exception("retrain round failed")
            result = {
                "trained": False,
                "reason": f"round failed: {_one_line(exc)}",
                "error": type(exc).__name__,
            }
        emit(result)
        deadline = time.monotonic() + every
        while not stop() and (left := deadline - time.monotonic()) > 0:
            sleep(min(0.5, left))
        if stop():
            return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, DmguardError) else text


def _feedback_ids(registry: Registry, version: str) -> set[str]:
    path = registry.heads / version / "feedback_ids.json"
    return set(json.loads(path.read_text())) if path.exists() else set()
