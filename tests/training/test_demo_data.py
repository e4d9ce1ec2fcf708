"""The demo-set builder on a small slice: one treatment for both classes, no image in
two splits, labels kept; the Qt resource reader on a file written here."""

from __future__ import annotations

import csv
import io
import struct
import zlib

from PIL import Image, JpegImagePlugin

from tests.images import encode, generated_like, jpeg, real_like
from training.demo_data import SIDE, RawImage, build_demo_set, generator_family
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


# ITU-T T.81 Annex K tables (K.1 luminance, K.2 chrominance), in natural (row-major)
# order, and libjpeg's jpeg_quality_scaling: quality q scales them by 5000/q % below 50,
# by (200 - 2q) % from 50 up, rounding, clamped to 1..255 (baseline).
ANNEX_K_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61,  12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,  14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,  24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,  72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
ANNEX_K_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99,  18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,  47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32  # fmt: skip
README_QUALITY = 90  # README, "the demo": "re-encoded as JPEG quality 90 without metadata"


def _libjpeg_table(base: tuple[int, ...], quality: int) -> list[int]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (q * scale + 50) // 100)) for q in base]


def _estimated_quality(image: Image.Image) -> int:
    """The libjpeg quality whose scaled Annex K tables are exactly the file's."""
    tables = image.quantization
    assert sorted(tables) == [0, 1], tables  # one luma and one chroma table
    # Pillow (8.3 and later) gives the DQT tables in natural order, like Annex K
    found = [q for q in range(1, 101)
             if list(tables[0]) == _libjpeg_table(ANNEX_K_LUMA, q)
             and list(tables[1]) == _libjpeg_table(ANNEX_K_CHROMA, q)]  # fmt: skip
    assert len(found) == 1, f"tables match qualities {found}"
    return found[0]


def test_the_quality_estimator_on_files_of_known_quality():
    """The estimator itself, on files Pillow (libjpeg) writes at known qualities."""
    for quality in (50, 75, 85, 90, 95):
        data = encode(real_like(0).resize((SIDE, SIDE)), "JPEG", quality=quality)
        assert _estimated_quality(Image.open(io.BytesIO(data))) == quality


def test_normalised_images_are_jpeg_quality_90_with_4_2_0_chroma(tmp_path):
    build_demo_set(_slice()[:2] + _slice()[12:14], tmp_path)
    for row in _rows(tmp_path / "manifest.csv"):
        image = Image.open(tmp_path / row["path"])
        assert _estimated_quality(image) == README_QUALITY, row
        assert JpegImagePlugin.get_sampling(image) == 2  # 4:2:0, for every image alike


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
