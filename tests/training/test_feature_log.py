import json

import numpy as np
import pytest

from training.feature_log import FeatureLogWriter, read_feature_log
from training.retrain import labelled_features, read_labels


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
