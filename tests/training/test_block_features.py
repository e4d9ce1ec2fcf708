"""The class tokens of every transformer block (training.model.features "blocks"), from both
backends, checked against references computed another way, and the head that reads them."""

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from training.model.encoders import load_encoder
from training.model.features import image_features, width
from training.model.head import HeadConfig, MLPHead, score
from training.model.registry import Registry


def test_open_clip_hooks_match_a_manual_pass_through_the_blocks():
    enc = load_encoder(TINY, device="cpu", threads=1)
    size = enc.preprocess.image_size
    x = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    got = enc.encode_features(x)
    visual = enc._model.visual
    with torch.inference_mode():  # the reference: the same tower, walked block by block
        h = visual._embeds(torch.from_numpy(x))
        expected = []
        for block in visual.transformer.resblocks:
            h = block(h)
            expected.append(h[:, 0].numpy())
    assert got.blocks.shape == (3, len(expected), visual.transformer.width)
    np.testing.assert_allclose(got.blocks, np.stack(expected, axis=1), atol=1e-5)
    np.testing.assert_allclose(got.embeddings, enc.encode_images(x), atol=1e-6)
    assert enc.block_shape == got.blocks.shape[1:]


@pytest.mark.weights
def test_onnx_last_block_is_the_towers_own_last_hidden_state(onnx_weights):
    """The original graph outputs the last block's hidden state (all tokens); our added
    output for block 11 must be its token 0, and the embedding must not change."""
    import onnxruntime as ort

    enc = load_encoder(f"onnx:{onnx_weights}", device="cpu", threads=2)
    plain = ort.InferenceSession(str(onnx_weights), providers=["CPUExecutionProvider"])
    names = [o.name for o in plain.get_outputs()]
    hidden = next(n for n in names if n != "image_embeds")
    x = np.random.default_rng(1).normal(size=(1, 3, 224, 224)).astype(np.float32)
    embeds, last_hidden = plain.run(["image_embeds", hidden], {"pixel_values": x})
    got = enc.encode_features(x)
    assert enc.block_shape == (12, 768)
    np.testing.assert_allclose(got.blocks[:, -1], last_hidden[:, 0], atol=1e-5)
    np.testing.assert_allclose(
        got.embeddings, embeds / np.linalg.norm(embeds, axis=1, keepdims=True), atol=1e-6
    )


def test_blocks_features_are_each_block_normalised_in_order():
    from training.model.encoders import ImageFeatures

    rng = np.random.default_rng(2)
    blocks = rng.normal(size=(4, 3, 5)) * np.array([1.0, 10.0, 100.0])[None, :, None]
    out = image_features(ImageFeatures(np.zeros((4, 2)), blocks.astype(np.float32)), "blocks")
    assert out.shape == (4, 15)
    for b in range(3):
        part = out[:, 5 * b : 5 * (b + 1)]
        np.testing.assert_allclose(np.linalg.norm(part, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(
            part, blocks[:, b] / np.linalg.norm(blocks[:, b], axis=1, keepdims=True), atol=1e-6
        )
    with pytest.raises(ValueError, match="one of"):
        image_features(ImageFeatures(np.zeros((1, 2)), blocks[:1]), "pixels")


def test_width_of_each_kind():
    enc = load_encoder(TINY, device="cpu", threads=1)
    assert width(enc, "embedding") == enc.dim
    assert width(enc, "blocks") == enc.block_shape[0] * enc.block_shape[1]


def test_block_head_pools_with_learned_block_weights():
    torch.manual_seed(0)
    head = MLPHead(HeadConfig(input_dim=3 * 8, tower_blocks=3, pool_dim=4)).eval()
    with torch.no_grad():
        head.block_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    x = torch.randn(5, 24)
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    pooled = sum(w[b] * head.project(x[:, 8 * b : 8 * (b + 1)]) for b in range(3))
    with torch.no_grad():
        np.testing.assert_allclose(head(x), head.net(pooled).squeeze(-1), atol=1e-6)
    np.testing.assert_allclose(head.block_weights().detach(), w, atol=1e-7)
    with pytest.raises(ValueError, match="blocks of one width"):
        MLPHead(HeadConfig(input_dim=25, tower_blocks=3))


def test_block_head_round_trips_through_the_registry(tmp_path):
    torch.manual_seed(0)
    head = MLPHead(HeadConfig(input_dim=2 * 64, tower_blocks=2, pool_dim=16))
    reg = Registry(tmp_path)
    meta = reg.save(head, encoder=TINY, threshold=0.5, features="blocks")
    loaded, loaded_meta = reg.load(meta.version)
    x = np.random.default_rng(3).normal(size=(6, 128)).astype(np.float32)
    np.testing.assert_allclose(score(loaded, x), score(head, x), atol=1e-6)
    assert loaded.config.tower_blocks == 2 and loaded_meta.features == "blocks"


@pytest.mark.parametrize(
    "kind, blocks",
    [("blocks", range(0, 12)), ("blocks:8", range(8, 9)), ("blocks:7-10", range(7, 11))],
)
def test_block_ranges(kind, blocks):
    from training.model.features import block_range

    assert block_range(kind, 12) == blocks


@pytest.mark.parametrize("kind", ["blocks:12", "blocks:9-3", "blocks:x", "emb", "blocks:-1"])
def test_bad_block_ranges_are_refused(kind):
    from training.model.features import block_range

    with pytest.raises(ValueError):
        block_range(kind, 12)


def test_a_head_is_served_the_features_it_was_trained_on(tmp_path):
    """The detector computes the kind in the head's meta: its scores equal the head's on
    features computed independently here (a detector that fed the final embedding to a
    block head would fail on width; one that fed another block would differ)."""
    from training.model.detector import Detector

    enc = load_encoder(TINY, device="cpu", threads=1)
    torch.manual_seed(0)
    head = MLPHead(HeadConfig(input_dim=enc.block_shape[1]))
    reg = Registry(tmp_path)
    meta = reg.save(head, encoder=TINY, threshold=0.5, features="blocks:1")
    det = Detector.from_registry(reg, meta.version, device="cpu", threads=1)
    size = enc.preprocess.image_size
    x = np.random.default_rng(4).normal(size=(3, 3, size, size)).astype(np.float32)
    feats, scores = det(x)
    block1 = enc.encode_features(x).blocks[:, 1]
    expected = block1 / np.linalg.norm(block1, axis=1, keepdims=True)
    np.testing.assert_allclose(feats, expected, atol=1e-5)
    np.testing.assert_allclose(scores, score(head, expected), atol=1e-5)
