import pytest

from tests.conftest import ONNX_WEIGHTS
from training.errors import EncoderError
from training.weights import KNOWN, fetch_weights, sha256_of, verify, weights_path


def test_a_corrupt_cached_file_is_refused_not_used(tmp_path):
    path = weights_path("clip-vit-b16-int8", tmp_path)
    path.write_bytes(b"not the weights")
    with pytest.raises(EncoderError, match="checksum mismatch"):
        fetch_weights("clip-vit-b16-int8", tmp_path)
    with pytest.raises(EncoderError, match="missing"):
        verify(tmp_path / "absent.onnx", KNOWN["clip-vit-b16-int8"].sha256)


@pytest.mark.weights
@pytest.mark.skipif(
    not ONNX_WEIGHTS.exists(), reason="offline CLIP weights not fetched (make models)"
)
def test_the_fetched_file_matches_the_registered_checksum():
    assert sha256_of(ONNX_WEIGHTS) == KNOWN["clip-vit-b16-int8"].sha256
    assert (
        fetch_weights("clip-vit-b16-int8", ONNX_WEIGHTS.parent) == ONNX_WEIGHTS
    )  # cached: no download


def _pixels(encoder, n: int):
    import numpy as np

    from tests.images import photo

    return np.stack([encoder.preprocess(photo(200 + 8 * i, 160, seed=i)) for i in range(n)])


@pytest.mark.weights
@pytest.mark.skipif(
    not ONNX_WEIGHTS.exists(), reason="offline CLIP weights not fetched (make models)"
)
def test_onnx_embeddings_do_not_depend_on_batch_size():
    """The INT8 tower quantises activations per input tensor; run batched, an image's
    embedding moved with its batch-mates (cosine 0.95). The encoder runs it per image."""
    import numpy as np

    from training.encoders import is_dynamically_quantised, load_encoder

    assert is_dynamically_quantised(ONNX_WEIGHTS)
    encoder = load_encoder(f"onnx:{ONNX_WEIGHTS}", device="cpu", threads=2)
    assert encoder.per_image
    x = _pixels(encoder, 8)
    alone = np.concatenate([encoder.encode_images(x[i : i + 1]) for i in range(8)])
    for batch in (2, 3, 8):
        together = np.concatenate(
            [encoder.encode_images(x[i : i + batch]) for i in range(0, 8, batch)]
        )
        np.testing.assert_allclose(together, alone, atol=1e-5)
    # and the images differ from each other: the check above is not comparing constants
    assert float((alone[0] * alone[1]).sum()) < 0.999


@pytest.mark.weights
@pytest.mark.slow
@pytest.mark.skipif(
    not ONNX_WEIGHTS.exists(), reason="offline CLIP weights not fetched (make models)"
)
def test_float32_copy_has_no_int8_ops_and_agrees_with_the_int8_tower(tmp_path):
    import numpy as np

    from training.encoders import is_dynamically_quantised, load_encoder
    from training.onnx_float import dequantize_model

    target = tmp_path / "f32.onnx"
    counts = dequantize_model(ONNX_WEIGHTS, target)
    assert counts == {"matmuls_rewritten": 73, "int8_ops_left": []}
    assert not is_dynamically_quantised(target)
    f32 = load_encoder(f"onnx:{target}", device="cpu", threads=2)
    int8 = load_encoder(f"onnx:{ONNX_WEIGHTS}", device="cpu", threads=2)
    x = _pixels(f32, 4)
    a, b = f32.encode_images(x), int8.encode_images(x)
    cos = (a * b).sum(1)
    assert cos.min() > 0.9  # same weights up to activation rounding (0.95 seen on demo images)
    np.testing.assert_allclose(f32.encode_images(x[:1]), a[:1], atol=1e-5)
