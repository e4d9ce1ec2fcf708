import json

import numpy as np
import pytest

from services.errors import ConfigError
from tests.images import jpeg
from training.data.samples import load_samples, parse_label
from training.learning.split import split_indices


def test_folder_layouts(tmp_path):
    for rel in [
        "real/a.jpg",
        "fake/sdxl/b.png",
        "fake/flux/c.webp",
        "GEN/train/ai/d.jpg",
        "GEN/train/nature/e.jpg",
        "notes/readme.txt",
        "other/x.jpg",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg(32, 32))
    got = {
        s.location.removeprefix(str(tmp_path) + "/"): (s.label, s.source)
        for s in load_samples(tmp_path)
    }
    assert got == {
        "real/a.jpg": (0, "real"),
        "fake/sdxl/b.png": (1, "sdxl"),
        "fake/flux/c.webp": (1, "flux"),
        "GEN/train/ai/d.jpg": (1, "GEN"),
        "GEN/train/nature/e.jpg": (0, "GEN"),
    }


def test_manifests(tmp_path):
    (tmp_path / "img.jpg").write_bytes(jpeg(32, 32))
    (tmp_path / "m.csv").write_text(
        "path,label,text,source\nimg.jpg,generated,a cat,flux\nimg.jpg,0,,cam\n"
    )
    (tmp_path / "m.jsonl").write_text(json.dumps({"url": "http://h/x.jpg", "label": 1}) + "\n")
    csv_samples = load_samples(tmp_path / "m.csv")
    assert [(s.label, s.source, s.text) for s in csv_samples] == [
        (1, "flux", "a cat"),
        (0, "cam", None),
    ]
    assert csv_samples[0].location == str(tmp_path / "img.jpg")
    assert load_samples(tmp_path / "m.jsonl")[0].location == "http://h/x.jpg"
    (tmp_path / "bad.csv").write_text("path\nimg.jpg\n")
    with pytest.raises(ConfigError, match="label"):
        load_samples(tmp_path / "bad.csv")
    with pytest.raises(ConfigError):
        parse_label("maybe")


def test_split_keeps_sources_apart_when_there_are_enough():
    labels = np.array([0] * 30 + [1] * 30)
    sources = (
        ["cam1"] * 10 + ["cam2"] * 10 + ["cam3"] * 10 + ["sd"] * 10 + ["flux"] * 10 + ["mj"] * 10
    )
    train, val, how = split_indices(labels, sources, seed=1)
    assert how == "by_source"
    train_src = {sources[i] for i in train}
    val_src = {sources[i] for i in val}
    assert not train_src & val_src
    assert set(labels[val]) == {0, 1} and set(labels[train]) == {0, 1}


def test_split_falls_back_to_stratified():
    labels = np.array([0] * 20 + [1] * 10)
    train, val, how = split_indices(labels, ["a"] * 30, seed=0)
    assert how == "stratified"
    assert sorted(np.r_[train, val].tolist()) == list(range(30))
    assert labels[val].sum() == 2 and (labels[val] == 0).sum() == 4
