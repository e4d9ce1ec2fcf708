"""A record redone under exactly once is logged twice in the feature log (the log is a
file, not part of the transaction), and docs/delivery.md says "retraining keeps the
last row per id". Where retraining joins the labels with the feature log
(`training.learning.retrain.labelled_features`), on hand-built logs holding two rows for one id
with different embeddings, which row does it keep?

* Rows one worker wrote (one file, or two files of its folder): the later one.
* Rows two workers wrote: the newest by `ts`, whichever worker folder is read last
  (the log is read in path order, so `worker=1` comes after `worker=0`). (A redone
  record logs the same image's embedding again, so the two rows normally agree.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.data.feature_log import SCHEMA, FeatureLogWriter
from training.learning.retrain import labelled_features

ENC = "enc"
FIRST = [1.0, 0.0, 0.0]  # the row written first
LATER = [0.0, 2.0, 0.0]  # the row written when the record was redone
OTHER = [0.0, 0.0, 3.0]


def write_part(root: Path, worker: str, name: str, rows: list[tuple[str, float, list[float]]]):
    """One Parquet file of the log, as FeatureLogWriter names them: (id, ts, embedding) rows."""
    folder = root / f"worker={worker}"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "url": [f"http://example.com/{r[0]}.jpg" for r in rows],
            "ts": [r[1] for r in rows],
            "encoder": [ENC] * n,
            "embedding": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
            "score": pa.array([0.5] * n, pa.float32()),
            "head_version": ["v1"] * n,
            "features": ["embedding"] * n,
            "evidence": pa.array([None] * n, pa.string()),
        },
        schema=SCHEMA,
    )
    pq.write_table(table, folder / name)


def kept(root: Path, labels: dict[str, int]) -> dict[str, list[float]]:
    ids, X, y = labelled_features(str(root), labels, ENC)
    assert y.tolist() == [labels[i] for i in ids]
    return {i: x.tolist() for i, x in zip(ids, X, strict=True)}


def test_two_rows_in_one_file_the_later_row_wins(tmp_path):
    root = tmp_path / "log"
    write_part(
        root,
        "0",
        "part-1000-aaaaaaaa.parquet",
        [("x", 1.0, FIRST), ("y", 1.5, OTHER), ("x", 2.0, LATER)],
    )
    assert kept(root, {"x": 1, "y": 0}) == {"x": LATER, "y": OTHER}


def test_the_writer_logging_a_record_twice_keeps_the_later_row(tmp_path):
    """Through FeatureLogWriter, as a worker writes it: the record done, then redone."""
    root = tmp_path / "log"
    writer = FeatureLogWriter(str(root), "0", roll_rows=1)  # one file per append
    writer.append(["x"], ["u"], ENC, np.array([FIRST], np.float32), np.array([0.1]), "v1")
    writer.append(["y"], ["u"], ENC, np.array([OTHER], np.float32), np.array([0.2]), "v1")
    writer.append(["x"], ["u"], ENC, np.array([LATER], np.float32), np.array([0.3]), "v1")
    assert len(list((root / "worker=0").glob("part-*.parquet"))) == 3
    assert kept(root, {"x": 0, "y": 1}) == {"x": LATER, "y": OTHER}


def test_two_files_of_one_worker_the_later_file_wins(tmp_path):
    """Files are named part-<unix ms>-<random>: the later file sorts, and is read, last,
    even where it was written to the folder first (the names order it, not the disk)."""
    root = tmp_path / "log"
    write_part(root, "0", "part-1700000002000-00000000.parquet", [("x", 2.0, LATER)])
    write_part(root, "0", "part-1700000001000-ffffffff.parquet", [("x", 1.0, FIRST)])
    assert kept(root, {"x": 1}) == {"x": LATER}


def test_across_workers_the_newest_row_wins_whichever_folder_is_read_last(tmp_path):
    """The record first done by worker 1, then redone by worker 0 (its partition moved
    there, say after a restart with another --workers): worker=1 is read after worker=0,
    but worker 0's row is the newer one, and it is kept."""
    root = tmp_path / "log"
    write_part(root, "1", "part-1700000001000-00000000.parquet", [("x", 1.0, FIRST)])
    write_part(root, "0", "part-1700000002000-00000000.parquet", [("x", 2.0, LATER)])
    assert kept(root, {"x": 1}) == {"x": LATER}
    # the other way round, the newer row is also the one read last, and kept
    root2 = tmp_path / "log2"
    write_part(root2, "0", "part-1700000001000-00000000.parquet", [("x", 1.0, FIRST)])
    write_part(root2, "1", "part-1700000002000-00000000.parquet", [("x", 2.0, LATER)])
    assert kept(root2, {"x": 1}) == {"x": LATER}


def test_a_later_row_under_another_encoder_does_not_replace_the_row_retraining_reads(tmp_path):
    """Rows of another encoder are not candidates at all: the last row of this encoder wins."""
    root = tmp_path / "log"
    write_part(root, "0", "part-1000-aaaaaaaa.parquet", [("x", 1.0, LATER)])
    folder = root / "worker=0"
    other = pq.read_table(folder / "part-1000-aaaaaaaa.parquet").to_pylist()
    other[0].update(encoder="other-enc", ts=2.0, embedding=OTHER)
    pq.write_table(
        pa.Table.from_pylist(other, schema=SCHEMA), folder / "part-2000-aaaaaaaa.parquet"
    )
    assert kept(root, {"x": 1}) == {"x": LATER}
