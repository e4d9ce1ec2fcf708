import numpy as np
import pytest

from tests.conftest import TINY
from tests.images import photo
from training.errors import EncoderError
from training.model.detector import Detector, register_untrained_head
from training.model.encoders import EncoderSpec, load_encoder
from training.model.registry import Registry


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("open_clip:ViT-L-14/openai", EncoderSpec("open_clip", "ViT-L-14", "openai")),
        ("open_clip:ViT-B-16@/w/b16.pt", EncoderSpec("open_clip", "ViT-B-16", "/w/b16.pt")),
        ("open_clip:dmguard-tiny", EncoderSpec("open_clip", "dmguard-tiny", None)),
        ("onnx:/m/tower.onnx", EncoderSpec("onnx", path="/m/tower.onnx")),
    ],
)
def test_spec_parsing(spec, parsed):
    assert EncoderSpec.parse(spec) == parsed


@pytest.mark.parametrize("spec", ["", "clip", "tf:model", "onnx:", "open_clip:"])
def test_bad_specs(spec):
    with pytest.raises(EncoderError):
        EncoderSpec.parse(spec)


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="make models"):
        load_encoder(f"onnx:{tmp_path}/nope.onnx")
    with pytest.raises(EncoderError, match="cannot build"):
        load_encoder("open_clip:no-such-arch")


def test_preprocessing_matches_open_clip_transform():
    enc = load_encoder(TINY, device="cpu", threads=1)
    for w, h in [(320, 240), (100, 300), (64, 64)]:
        img = photo(w, h, seed=w)
        ours = enc.preprocess(img)
        theirs = enc.torch_transform(img).numpy()
        assert ours.shape == theirs.shape == (3, 64, 64)
        assert np.abs(ours - theirs).max() < 1e-4


def test_random_init_is_seeded_and_embeddings_normalised():
    a = load_encoder(TINY, device="cpu", threads=1)
    b = load_encoder(TINY, device="cpu", threads=1)
    x = np.stack([a.preprocess(photo(seed=i)) for i in range(3)])
    ea, eb = a.encode_images(x), b.encode_images(x)
    assert np.allclose(ea, eb, atol=1e-5)
    assert np.allclose(np.linalg.norm(ea, axis=1), 1.0, atol=1e-5)
    assert a.encode_texts(["a photo", "a drawing"]).shape == (2, a.text_dim)


def test_detector_scores_in_unit_interval_and_reuses_the_encoder(tiny_registry):
    det = Detector.from_registry(tiny_registry, device="cpu", threads=1)
    pixels = np.stack([det.encoder.preprocess(photo(seed=i)) for i in range(4)])
    emb, scores = det(pixels)
    assert emb.shape == (4, det.encoder.dim) and scores.shape == (4,)
    assert ((scores >= 0) & (scores <= 1)).all()
    v2 = register_untrained_head(tiny_registry, TINY, seed=1)
    swapped = Detector.from_registry(tiny_registry, device="cpu", reuse=det)
    assert swapped.version == v2.version and swapped.encoder is det.encoder
    assert not np.allclose(swapped(pixels)[1], scores)  # another head, other scores


@pytest.mark.weights
def test_real_clip_onnx_encoder(tmp_path, onnx_weights):
    """The real CLIP ViT-B/16 image tower: related images embed closer than unrelated ones."""
    enc = load_encoder(f"onnx:{onnx_weights}", device="cpu", threads=2)
    assert enc.dim == 512 and enc.preprocess.image_size == 224
    base = photo(320, 240, seed=3)
    other = photo(320, 240, seed=4)
    x = np.stack([enc.preprocess(im) for im in (base, base.resize((300, 225)), other)])
    e = enc.encode_images(x)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2]
    reg = Registry(tmp_path)
    register_untrained_head(reg, f"onnx:{onnx_weights}")
    det = Detector.from_registry(reg, device="cpu", threads=2)
    assert det(x)[1].shape == (3,)
