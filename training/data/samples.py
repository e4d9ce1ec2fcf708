"""Labelled image sources for training and evaluation (docs/architecture.md, "Data sources").

* a folder with `real/` and `fake/` subfolders, or GenImage's `nature/` and
  `ai/`, at any depth: `GEN/train/ai/x.png` is generated, source `GEN`;
  `fake/sdxl/x.png` is generated, source `sdxl`;
* a CSV or JSONL manifest with `url` or `path`, `label` (`real`/`generated`,
  or 0/1) and optional `text`, `source` and `content` (what the image shows:
  people, animal, ...; evaluation reports per content) columns. Relative paths
  resolve against the manifest's folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from services.errors import ConfigError

REAL_DIRS = {"real", "nature", "0_real"}
FAKE_DIRS = {"fake", "ai", "generated", "1_fake"}
SPLIT_DIRS = {"train", "val", "test", "valid", "validation"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}


@dataclass(frozen=True)
class Sample:
    location: str  # a local path or an http(s)/file URL
    label: int  # 1 = generated
    source: str  # generator or photo collection; splits keep sources apart
    text: str | None = None
    content: str = ""  # what the image shows (people, animal, ...); "" when not tagged


def parse_label(value: object) -> int:
    text = str(value).strip().lower()
    if text in ("1", "generated", "fake", "ai"):
        return 1
    if text in ("0", "real", "nature"):
        return 0
    raise ConfigError(f"label must be real/generated or 0/1, got {value!r}")


def load_samples(src: str | Path) -> list[Sample]:
    path = Path(src)
    if path.is_dir():
        samples = _from_folder(path)
    elif path.suffix.lower() == ".csv":
        samples = _from_rows(csv.DictReader(path.open(newline="", encoding="utf-8")), path.parent)
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = (json.loads(line) for line in path.open(encoding="utf-8") if line.strip())
        samples = _from_rows(rows, path.parent)
    else:
        raise ConfigError(f"{src}: expected a folder, a .csv or a .jsonl manifest")
    if not samples:
        raise ConfigError(f"{src}: no labelled images found (real/ and fake/, or nature/ and ai/)")
    return samples


def _from_folder(root: Path) -> list[Sample]:
    out = []
    for file in sorted(root.rglob("*")):
        if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
            continue
        parts = file.relative_to(root).parts[:-1]
        label_at = [i for i, p in enumerate(parts) if p.lower() in REAL_DIRS | FAKE_DIRS]
        if not label_at:
            continue
        i = label_at[-1]
        label = 1 if parts[i].lower() in FAKE_DIRS else 0
        rest = [p for p in parts[:i] + parts[i + 1 :] if p.lower() not in SPLIT_DIRS]
        out.append(Sample(str(file), label, "/".join(rest) or parts[i].lower()))
    return out


def _from_rows(rows, base: Path) -> list[Sample]:
    out = []
    for n, row in enumerate(rows, start=1):
        where = row.get("url") or row.get("path")
        if not where or "label" not in row:
            raise ConfigError(f"manifest row {n}: needs 'url' or 'path', and 'label'")
        if "://" not in where and not Path(where).is_absolute():
            where = str(base / where)
        text = row.get("text") or None
        out.append(
            Sample(
                where,
                parse_label(row["label"]),
                str(row.get("source") or "manifest"),
                text,
                str(row.get("content") or ""),
            )
        )
    return out
