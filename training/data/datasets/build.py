"""Building the labelled set: one treatment for every image, tags joined, split by source.

See training.data.demo_data for the sources and the rules.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from PIL import Image, ImageOps

from training.data.datasets import comfyui, generated, photos
from training.data.datasets.common import RawImage
from training.data.datasets.tags import CONTENTS, STYLES, UNTAGGED, load_tags
from training.data.packages import PackageError, apt_available
from training.learning.split import split_indices

SIDE = 384
JPEG_QUALITY = 90
# Bumped when the set's files change shape; a cached set of another format is rebuilt.
# 2: content and style columns, tags from training/data/content_tags.csv, more sources.
# 3: the untouched originals beside the normalised images (originals.csv); more real people.
FORMAT = 3
FIELDS = ["path", "label", "source", "generator", "content", "style", "split", "origin"]
LABELS = {0: "real", 1: "generated"}


def collect(
    downloads: Path, *, use_apt: bool | None = None, log=print, skipped: list | None = None
) -> Iterator[RawImage]:
    """Every image of every source. A group of sources that cannot be fetched (no apt-get,
    no npm, a registry down) is logged, named in `skipped`, and the rest still come."""
    downloads = Path(downloads)
    if use_apt is None:
        use_apt = apt_available()
    groups: list[tuple[str, Callable[[Path], Iterable[RawImage]]]] = [
        ("ComfyUI thumbnails (PyPI)", comfyui.generated_images),
        ("OpenPeople and InvokeAI (PyPI)", generated.generated_images),
        ("photos in PyPI packages", photos.pypi_photos),
        ("photos in npm packages", photos.npm_photos),
        ("photos in crates.io crates", photos.crates_photos),
        ("photos in Maven Central jars", photos.maven_photos),
    ]
    if use_apt:
        groups.append(("photos in Debian packages", photos.debian_photos))
    else:
        log("apt-get is not available: no photographs from Debian packages (few real images)")
        if skipped is not None:
            skipped.append("photos in Debian packages: apt-get is not available")
    for name, source in groups:
        try:
            yield from source(downloads)
        except PackageError as e:
            log(f"{name} unavailable ({e}); building without them")
            if skipped is not None:
                skipped.append(f"{name}: {e}")


def normalise(data: bytes, side: int = SIDE) -> bytes:
    """The one treatment every image gets, whatever its class (see training.data.demo_data).
    An animated image (a video thumbnail) gives its first frame."""
    image = Image.open(io.BytesIO(data))
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, "white")
        image.paste(rgba, mask=rgba.getchannel("A"))
    image = ImageOps.fit(image.convert("RGB"), (side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)
    return out.getvalue()


def build_demo_set(
    items: Iterable[RawImage],
    out: Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.3,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
    tags: Mapping[str, tuple[str, str]] | None = None,
) -> dict:
    """Normalise, de-duplicate, tag, split by source; write images/, train.csv, heldout.csv
    and manifest.csv (all rows, with `split` and `origin`). Returns the summary (also
    summary.json). `tags` maps origin -> (content, style); None reads the repo's file.
    An image without a tag gets content "other", style "photo" and is counted."""
    import numpy as np

    if tags is None:
        tags = load_tags()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "originals").mkdir(exist_ok=True)
    rows, seen, bad, duplicates, untagged = [], set(), [], 0, []
    for item in progress(items):
        try:
            data = normalise(item.data)
        except Exception as e:  # noqa: BLE001 — a bad file is reported, not fatal
            bad.append((item.origin, f"{type(e).__name__}: {e}"))
            continue
        digest = hashlib.sha256(data).hexdigest()[:20]
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        path = out / "images" / f"{digest}.jpg"
        if not path.exists():
            path.write_bytes(data)
        original = f"originals/{digest}.{original_suffix(item.data)}"
        if not (out / original).exists():
            (out / original).write_bytes(item.data)
        if item.origin not in tags:
            untagged.append(item.origin)
        content, style = tags.get(item.origin, UNTAGGED)
        rows.append(
            {
                "path": f"images/{digest}.jpg",
                "label": item.label,
                "source": item.source,
                "generator": item.generator,
                "content": content,
                "style": style,
                "origin": item.origin,
                "original": original,
            }
        )
    labels = np.array([r["label"] for r in rows])
    if len(set(labels.tolist())) < 2:
        raise ValueError("the demo set needs both real and generated images")
    train_idx, held_idx, how = split_indices(
        labels, [r["source"] for r in rows], val_fraction=val_fraction, seed=seed
    )
    for i in train_idx:
        rows[i]["split"] = "train"
    for i in held_idx:
        rows[i]["split"] = "heldout"
    for name, keep in (("manifest", None), ("train", "train"), ("heldout", "heldout")):
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(r for r in rows if keep is None or r["split"] == keep)
    # The same rows as their sources ship them (format, size, metadata untouched): what a
    # detector meets in an upload stream, where format and size differ by class.
    with (out / "originals.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "path": r["original"]} for r in rows)
    summary = {
        "format": FORMAT,
        "images": len(rows),
        "split": how,
        "side": SIDE,
        "jpeg_quality": JPEG_QUALITY,
        "bad": bad,
        "duplicates": duplicates,
        "untagged": len(untagged),
        "untagged_origins": untagged[:50],
        "content": content_counts(rows),
        "sources": source_counts(rows),
        **{
            split: {
                "real": sum(1 for r in rows if r["split"] == split and r["label"] == 0),
                "generated": sum(1 for r in rows if r["split"] == split and r["label"] == 1),
                "sources": dict(Counter(r["source"] for r in rows if r["split"] == split)),
            }
            for split in ("train", "heldout")
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def original_suffix(data: bytes) -> str:
    """The file suffix of an original's format as Pillow reads it ("jpg", "png", "webp")."""
    with Image.open(io.BytesIO(data)) as image:
        fmt = (image.format or "bin").lower()
    return {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt)


def content_counts(rows: list[dict]) -> dict:
    """{"real"|"generated": {content: {"photo": n, "art": n}}}, every content listed."""
    counts = Counter((LABELS[int(r["label"])], r["content"], r["style"]) for r in rows)
    return {
        label: {c: {s: counts[label, c, s] for s in STYLES} for c in CONTENTS}
        for label in LABELS.values()
    }


def source_counts(rows: list[dict]) -> dict:
    """{source: {"label": "real"|"generated"|"mixed", "images": n, "split": ...}}."""
    out: dict[str, dict] = {}
    for r in rows:
        entry = out.setdefault(
            r["source"],
            {"label": LABELS[int(r["label"])], "images": 0, "split": r.get("split", "")},
        )
        entry["images"] += 1
        if entry["label"] != LABELS[int(r["label"])]:
            entry["label"] = "mixed"
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["label"], -kv[1]["images"], kv[0])))


def read_summary(out: Path) -> dict | None:
    """The summary of the set in `out`, or None when there is none of this FORMAT."""
    path = Path(out) / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("format") == FORMAT else None


def ensure_demo_set(
    out: Path, downloads: Path, *, seed: int = 0, log=print, force: bool = False
) -> dict:
    """The cached set, built on first use, when its format is older than FORMAT, or when
    `force` (downloads are cached too)."""
    out = Path(out)
    if not force and (summary := read_summary(out)) is not None:
        return summary
    from tqdm import tqdm

    log(f"building the demo set in {out} (downloads cached in {downloads})")
    skipped: list[str] = []
    items = collect(Path(downloads), log=log, skipped=skipped)
    summary = build_demo_set(
        items,
        out,
        seed=seed,
        progress=lambda it: tqdm(it, desc="normalising", unit="img", file=sys.stderr),
    )
    summary["skipped"] = skipped
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
