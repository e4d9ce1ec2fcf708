import json

import numpy as np
import pytest

from training.data.feature_log import FeatureLogWriter, read_feature_log
from training.learning.retrain import labelled_features, read_labels


def test_rows_roll_into_parquet_files_and_read_back(tmp_path):
    root = str(tmp_path / "log")
    assert len(read_feature_log(root)) == 0
    w = FeatureLogWriter(root, "0", roll_rows=3, roll_s=3600)
    emb = np.eye(4, dtype=np.float32)
    w.append(["a", "b"], ["u1", "u2"], "enc", emb[:2], np.array([0.1, 0.9]), "v1")
    assert len(read_feature_log(root)) == 0  # buffered
    w.append(["c", "d"], ["u3", "u4"], "enc", emb[2:], np.array([0.2, 0.8]), "v1")  # 4 >= 3: rolls
    assert len(read_feature_log(root)) == 4
    w2 = FeatureLogWriter(root, "1", roll_rows=100)
    w2.append(["e"], ["u5"], "other", emb[:1], np.array([0.5]), "v2")
    w2.flush()
    table = read_feature_log(root)
    assert sorted(table.column("id").to_pylist()) == ["a", "b", "c", "d", "e"]
    assert table.column("embedding").to_pylist()[0] == pytest.approx(emb[0].tolist())
    assert not [
        p for p in (tmp_path / "log").rglob("*") if p.name.startswith(".")
    ]  # no temp files left


def test_labelled_features_join_by_id_and_encoder(tmp_path):
    root = str(tmp_path / "log")
    w = FeatureLogWriter(root, "0")
    w.append(["a", "b", "c"], ["u"] * 3, "enc", np.ones((3, 2), np.float32), np.zeros(3), "v1")
    w.append(["d"], ["u"], "other-enc", np.ones((1, 2), np.float32), np.zeros(1), "v1")
    w.flush()
    ids, X, y = labelled_features(root, {"a": 1, "c": 0, "d": 1, "zzz": 0}, "enc")
    assert ids == ["a", "c"] and X.shape == (2, 2) and y.tolist() == [1, 0]


def test_labelled_features_follow_the_kind_the_head_reads(tmp_path):
    """A head over block tokens is retrained on logged block tokens, never on final
    embeddings of the same images; files written before the column existed are
    'embedding'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "log"
    (root / "worker=old").mkdir(parents=True)
    old = pa.table(
        {
            "id": ["a"],
            "url": ["u"],
            "ts": [0.0],
            "encoder": ["enc"],
            "embedding": pa.array([[9.0, 9.0]], pa.list_(pa.float32())),
            "score": pa.array([0.5], pa.float32()),
            "head_version": ["v1"],
        }
    )
    pq.write_table(old, root / "worker=old" / "part-1.parquet")
    w = FeatureLogWriter(str(root), "0")
    w.append(
        ["b"], ["u"], "enc", np.full((1, 3), 2, np.float32), np.zeros(1), "v2", features="blocks:8"
    )
    w.flush()
    labels = {"a": 1, "b": 0}
    ids, X, _ = labelled_features(str(root), labels, "enc", "blocks:8")
    assert ids == ["b"] and X.tolist() == [[2.0, 2.0, 2.0]]
    ids, X, _ = labelled_features(str(root), labels, "enc")
    assert ids == ["a"] and X.tolist() == [[9.0, 9.0]]
    assert read_feature_log(str(root)).column("features").to_pylist().count("blocks:8") == 1


@pytest.mark.broker
def test_read_labels_last_one_wins_and_bad_ones_counted(broker):
    from kafka import KafkaProducer

    from services.config import KafkaSettings, Topics
    from services.kafka_io import ensure_topics

    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
    ensure_topics(kafka, Topics())
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for value in [
        {"id": "a", "label": "real"},
        {"id": "b", "label": 1},
        {"id": "a", "label": "generated"},
        "junk",
    ]:
        producer.send(
            "dmguard.labels", json.dumps(value).encode(), key=b"k"
        )  # one partition: order kept
    producer.flush()
    labels, bad = read_labels(kafka, "dmguard.labels")
    assert labels == {"a": 1, "b": 1} and bad == 1


def test_a_pyarrow_uri_root_works_like_a_folder(tmp_path):
    root = (tmp_path / "uri-log").as_uri()  # file:///...: pyarrow's filesystem from the URI
    assert root.startswith("file://")
    w = FeatureLogWriter(root, "7", roll_rows=2, roll_s=3600)
    w.append(["a", "b", "c"], ["u"] * 3, "enc", np.eye(3, dtype=np.float32), np.zeros(3), "v1")
    parts = list((tmp_path / "uri-log" / "worker=7").glob("part-*.parquet"))
    assert len(parts) == 1  # written on the local disk the URI names
    assert sorted(read_feature_log(root).column("id").to_pylist()) == ["a", "b", "c"]
    assert sorted(read_feature_log(str(tmp_path / "uri-log")).column("id").to_pylist()) == [
        "a",
        "b",
        "c",
    ]
    assert len(read_feature_log((tmp_path / "nothing-here").as_uri())) == 0


class FakeClock:
    """Stands in for the `time` module inside training.data.feature_log."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def time(self):
        return 1_700_000_000.0 + self.now


def test_rows_are_flushed_once_the_interval_has_passed_not_before(tmp_path, monkeypatch):
    import training.data.feature_log as feature_log

    clock = FakeClock()
    monkeypatch.setattr(feature_log, "time", clock)
    root = str(tmp_path / "log")
    w = FeatureLogWriter(root, "0", roll_rows=1000, roll_s=10.0)
    emb = np.ones((1, 2), np.float32)
    w.append(["a"], ["u"], "enc", emb, np.zeros(1), "v1")
    clock.now += 9.5
    w.append(["b"], ["u"], "enc", emb, np.zeros(1), "v1")
    w.flush_if_due()
    assert len(read_feature_log(root)) == 0  # 9.5 s < 10 s: still buffered
    clock.now += 0.5
    w.flush_if_due()  # the loop's call, without a new row
    assert sorted(read_feature_log(root).column("id").to_pylist()) == ["a", "b"]
    # the interval restarts at the flush
    clock.now += 5
    w.append(["c"], ["u"], "enc", emb, np.zeros(1), "v1")
    assert len(read_feature_log(root)) == 2  # 5 s after the last flush
    clock.now += 5
    w.append(["d"], ["u"], "enc", emb, np.zeros(1), "v1")
    assert len(read_feature_log(root)) == 4
    clock.now += 60
    w.flush_if_due()  # an empty buffer writes nothing
    assert len(list((tmp_path / "log" / "worker=0").glob("part-*.parquet"))) == 2
