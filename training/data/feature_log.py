"""The feature log: what the workers saw, so retraining never recomputes CLIP.

Each worker appends one row per verdict — (id, url, ts, encoder, embedding,
score, head_version, features, evidence) — to rolling Parquet files of its own.
`embedding` holds what the head read (training.model.features: the final embedding,
or transformer blocks' class tokens) and `features` says which; rows written
before that column existed read as null, i.e. "embedding". `evidence` is the
verdict's provenance evidence as JSON text (services.provenance; "[]" when the
file declared nothing), null where provenance was off or for rows written before
the column existed.

    ROOT/worker=<id>/part-<unix ms>-<uuid>.parquet

A file is written whole and then renamed into place, so readers never see a
half-written one. ROOT is a local folder, or any URI pyarrow's filesystems
understand (s3://bucket/prefix, gs://..., hdfs://...).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs as pafs

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("ts", pa.float64()),  # unix seconds when the verdict was made
        ("encoder", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("score", pa.float32()),
        ("head_version", pa.string()),
        ("features", pa.string()),
        ("evidence", pa.string()),  # JSON list; null: not read
    ]
)


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), str(Path(root).resolve())


class FeatureLogWriter:
    """Buffers rows and writes a Parquet file every `roll_rows` rows or `roll_s` seconds."""

    def __init__(
        self, root: str, worker_id: str, *, roll_rows: int = 2000, roll_s: float = 10.0
    ) -> None:
        self.fs, base = _filesystem(root)
        self.folder = f"{base}/worker={worker_id}"
        self.fs.create_dir(self.folder, recursive=True)
        self.roll_rows, self.roll_s = roll_rows, roll_s
        self._rows: dict[str, list] = {name: [] for name in SCHEMA.names}
        self._opened = time.monotonic()

    def append(
        self,
        ids: list[str],
        urls: list[str],
        encoder: str,
        embeddings: np.ndarray,
        scores: np.ndarray,
        head_version: str,
        *,
        features: str = "embedding",
        evidence: list[str | None] | None = None,
    ) -> None:
        now = time.time()
        self._rows["id"] += ids
        self._rows["url"] += urls
        self._rows["ts"] += [now] * len(ids)
        self._rows["encoder"] += [encoder] * len(ids)
        self._rows["embedding"] += [e for e in np.asarray(embeddings, np.float32)]
        self._rows["score"] += [float(s) for s in scores]
        self._rows["head_version"] += [head_version] * len(ids)
        self._rows["features"] += [features] * len(ids)
        self._rows["evidence"] += evidence if evidence is not None else [None] * len(ids)
        self.flush_if_due()

    def flush_if_due(self) -> None:
        """Write the buffer when it is big enough or old enough (called on append and by the loop)."""
        old = time.monotonic() - self._opened >= self.roll_s
        if len(self._rows["id"]) >= self.roll_rows or (old and self._rows["id"]):
            self.flush()

    def flush(self) -> None:
        if not self._rows["id"]:
            return
        columns = dict(self._rows)
        columns["embedding"] = pa.array(
            [e.tolist() for e in columns["embedding"]], type=pa.list_(pa.float32())
        )
        table = pa.table(columns, schema=SCHEMA)
        name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = f"{self.folder}/.{name}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(table, out)
        self.fs.move(tmp, f"{self.folder}/{name}")
        self._rows = {n: [] for n in SCHEMA.names}
        self._opened = time.monotonic()


def read_feature_log(root: str) -> pa.Table:
    """Every row written so far (an empty table when there is none)."""
    filesystem, base = _filesystem(root)
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return SCHEMA.empty_table()
    dataset = ds.dataset(
        base,
        filesystem=filesystem,
        format="parquet",
        schema=SCHEMA,
        exclude_invalid_files=True,
        ignore_prefixes=[".", "_"],
    )
    return dataset.to_table()
