"""The demo-set builder on a small slice: one treatment for both classes, no image in
two splits, labels kept; the Qt resource reader on a file written here."""

from __future__ import annotations

import csv
import io
import struct
import zlib

from PIL import Image

from tests.images import encode, generated_like, jpeg, real_like
from training.demo_data import JPEG_QUALITY, SIDE, RawImage, build_demo_set, generator_family
from training.qt_resources import rcc_files


def _slice() -> list[RawImage]:
    items = []
    for i in range(12):  # real photos: big JPEG/PNG from three collections
        img = real_like(i, size=64).resize((1200 + 40 * i, 800))
        fmt = "PNG" if i % 2 else "JPEG"
        items.append(RawImage(f"real-{i}", encode(img, fmt), 0, f"photos-{i % 3}"))
    for i in range(9):  # generated: 400x400 WebP, some with alpha, three generators
        img = generated_like(i, size=400)
        if i % 3 == 0:
            img = img.convert("RGBA")
        items.append(RawImage(f"gen-{i}", encode(img, "WEBP"), 1, f"gen{i % 3}", f"Model {i % 3}"))
    items.append(RawImage("dup-of-real-0", items[0].data, 0, "photos-0"))
    items.append(RawImage("broken", b"\xff\xd8 not a jpeg", 0, "photos-1"))
    return items


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_both_classes_get_the_same_treatment_and_no_image_is_in_two_splits(tmp_path):
    items = _slice()
    summary = build_demo_set(items, tmp_path, seed=1)
    rows = _rows(tmp_path / "manifest.csv")
    assert len(rows) == 21  # 12 real + 9 generated; the duplicate kept once, the broken one not
    assert summary["bad"] and summary["bad"][0][0] == "broken"
    assert summary["split"] == "by_source"

    quant = set()
    for row in rows:
        image = Image.open(tmp_path / row["path"])
        assert image.format == "JPEG" and image.size == (SIDE, SIDE) and image.mode == "RGB"
        assert "exif" not in image.info and "icc_profile" not in image.info
        quant.add(repr(image.quantization))
    assert len(quant) == 1  # one quality, one table set: the encoding cannot give the label away

    labels = {it.origin: it.label for it in items}
    assert all(int(r["label"]) == labels[r["origin"]] for r in rows)

    train, held = _rows(tmp_path / "train.csv"), _rows(tmp_path / "heldout.csv")
    assert len(train) + len(held) == len(rows)
    assert not {r["path"] for r in train} & {r["path"] for r in held}
    assert not {r["source"] for r in train} & {r["source"] for r in held}
    for split in (train, held):
        assert {r["label"] for r in split} == {"0", "1"}


def test_normalised_quality_matches_the_constant(tmp_path):
    build_demo_set(_slice()[:2] + _slice()[12:14], tmp_path)
    row = _rows(tmp_path / "manifest.csv")[0]
    reference = Image.open(io.BytesIO(encode(real_like(0).resize((SIDE, SIDE)), "JPEG",
                                             quality=JPEG_QUALITY)))  # fmt: skip
    assert Image.open(tmp_path / row["path"]).quantization == reference.quantization


def test_generator_family_keeps_versions_together():
    assert generator_family("FLUX.1") == generator_family("FLUX 3 Image") == "flux"
    assert generator_family("GPT-Image-1") == generator_family("GPT Image 2.5") == "gpt"
    assert generator_family("SDXL") != generator_family("SD3.5")


def _rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A version-2 Qt resource with one directory level: {"dir/name": (content, compress)}."""
    names, data, nodes = b"", b"", []

    def add_name(name: str) -> int:
        nonlocal names
        offset = len(names)
        encoded = name.encode("utf-16-be")
        names += struct.pack(">HI", len(name), 0) + encoded
        return offset

    dirs = sorted({p.split("/")[0] for p in files})
    nodes.append(struct.pack(">IHII", 0, 2, len(dirs), 1) + b"\0" * 8)  # root
    children = []
    first = 1 + len(dirs)
    for d in dirs:
        entries = [p for p in files if p.startswith(d + "/")]
        nodes.append(struct.pack(">IHII", add_name(d), 2, len(entries), first) + b"\0" * 8)
        first += len(entries)
        children += entries
    for p in children:
        content, compress = files[p]
        stored = struct.pack(">I", len(content)) + zlib.compress(content) if compress else content
        nodes.append(struct.pack(">IHHHI", add_name(p.split("/")[1]), int(compress), 0, 0,
                                 len(data)) + b"\0" * 8)  # fmt: skip
        data += struct.pack(">I", len(stored)) + stored
    tree = b"".join(nodes)
    header_len = 20
    return (b"qres" + struct.pack(">IIII", 2, header_len, header_len + len(tree),
                                  header_len + len(tree) + len(data)) + tree + data + names)  # fmt: skip


def test_qt_resource_reader_returns_plain_and_compressed_files():
    photo = jpeg(64, 48)
    blob = _rcc({"res/a.jpg": (photo, False), "res/b.qml": (b"Item {}" * 50, True),
                 "more/c.webp": (b"RIFF....WEBP", False)})  # fmt: skip
    got = dict(rcc_files(blob))
    assert got == {"res/a.jpg": photo, "res/b.qml": b"Item {}" * 50, "more/c.webp": b"RIFF....WEBP"}
