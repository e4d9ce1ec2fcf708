import json
import threading

import pytest
import torch

from tests.conftest import TINY
from training.errors import EncoderMismatchError, RegistryError
from training.head import HeadConfig, MLPHead
from training.registry import Registry


def test_head_architecture_matches_the_paper():
    head = MLPHead(HeadConfig(input_dim=16))
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "LeakyReLU", "Dropout"] * 3 + ["Linear"]
    assert head.net[2].negative_slope == 0.01 and head.net[3].p == 0.335
    assert head(torch.randn(5, 16)).shape == (5,)


def test_save_load_round_trip_and_meta(tmp_path):
    reg = Registry(tmp_path)
    torch.manual_seed(1)
    head = MLPHead(HeadConfig(input_dim=8))
    meta = reg.save(head, encoder=TINY, threshold=0.3, metrics={"auc": 0.9})
    assert meta.version == "v1" and reg.current() is None  # saving does not promote
    reg.promote("v1")
    loaded, m = reg.load()
    x = torch.randn(4, 8)
    assert torch.allclose(head.eval()(x), loaded(x))
    on_disk = json.loads((tmp_path / "heads" / "v1" / "meta.json").read_text())
    for field in (
        "version",
        "encoder",
        "input_dim",
        "uses_text",
        "threshold",
        "metrics",
        "trained_on",
        "created_at",
        "parent",
    ):
        assert field in on_disk
    assert m.threshold == 0.3 and m.metrics == {"auc": 0.9}


def test_loading_under_another_encoder_is_a_clear_error(tmp_path):
    reg = Registry(tmp_path)
    reg.promote(reg.save(MLPHead(HeadConfig(input_dim=8)), encoder=TINY).version)
    with pytest.raises(EncoderMismatchError, match="trained on encoder"):
        reg.load(encoder="onnx:/elsewhere.onnx")
    assert reg.load(encoder=TINY)[1].version == "v1"


def test_empty_registry_says_how_to_get_a_head(tmp_path):
    with pytest.raises(RegistryError, match="dmguard train"):
        Registry(tmp_path).load()
    with pytest.raises(RegistryError, match="no head"):
        Registry(tmp_path).meta("v9")


def test_versions_are_unique_under_concurrent_saves(tmp_path):
    reg = Registry(tmp_path)
    out = []

    def save():
        out.append(reg.save(MLPHead(HeadConfig(input_dim=4)), encoder=TINY).version)

    threads = [threading.Thread(target=save) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 9)]
    assert reg.versions() == [f"v{i}" for i in range(1, 9)]


def test_current_is_replaced_atomically(tmp_path):
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.save(MLPHead(HeadConfig(input_dim=4)), encoder=TINY)
    reg.promote("v1")
    reg.promote("v2")
    assert reg.current() == "v2"
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".CURRENT")
    ] == []  # no temp files left
    with pytest.raises(RegistryError):
        reg.promote("v7")
    assert reg.current() == "v2"
