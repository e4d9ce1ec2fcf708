from collections import Counter

import pytest

from training.errors import EncoderError
from training.model.weights import KNOWN, fetch_weights, sha256_of, verify, weights_path


def test_a_corrupt_cached_file_is_refused_not_used(tmp_path):
    path = weights_path("clip-vit-b16-int8", tmp_path)
    path.write_bytes(b"not the weights")
    with pytest.raises(EncoderError, match="checksum mismatch"):
        fetch_weights("clip-vit-b16-int8", tmp_path)
    with pytest.raises(EncoderError, match="missing"):
        verify(tmp_path / "absent.onnx", KNOWN["clip-vit-b16-int8"].sha256)


@pytest.mark.parametrize(
    "ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_weights_fail_under_ci_and_skip_elsewhere(monkeypatch, tmp_path, ci, outcome):
    """`make test` fetches the weights, so CI must not pass by skipping the tests that need them."""
    import tests.conftest

    monkeypatch.setattr(tests.conftest, "ONNX_WEIGHTS", tmp_path / "absent.onnx")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="make models"):
        tests.conftest.require_onnx_weights()


@pytest.mark.weights
def test_the_fetched_file_matches_the_registered_checksum(onnx_weights):
    assert sha256_of(onnx_weights) == KNOWN["clip-vit-b16-int8"].sha256
    assert (
        fetch_weights("clip-vit-b16-int8", onnx_weights.parent) == onnx_weights
    )  # cached: no download


def _pixels(encoder, n: int):
    import numpy as np

    from tests.images import photo

    return np.stack([encoder.preprocess(photo(200 + 8 * i, 160, seed=i)) for i in range(n)])


@pytest.mark.weights
def test_onnx_embeddings_do_not_depend_on_batch_size(onnx_weights):
    """The INT8 tower quantises activations per input tensor; run batched, an image's
    embedding moved with its batch-mates (cosine 0.95). The encoder runs it per image."""
    import numpy as np

    from training.model.encoders import is_dynamically_quantised, load_encoder

    assert is_dynamically_quantised(onnx_weights)
    encoder = load_encoder(f"onnx:{onnx_weights}", device="cpu", threads=2)
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
def _op_counts(path) -> Counter:
    """Node op types of the ONNX graph at `path` (the main graph: the tower has no subgraphs)."""
    import onnx

    graph = onnx.load(str(path)).graph
    assert not any(a.g.node or a.graphs for n in graph.node for a in n.attribute)
    return Counter(n.op_type for n in graph.node)


def _quantised_matmuls(path) -> int:
    """MatMulInteger nodes whose activation input comes from a DynamicQuantizeLinear:
    the pattern onnxruntime's quantize_dynamic writes for each MatMul, counted here
    from the graph itself rather than from what the rewriter reports."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    integer = [n for n in graph.node if n.op_type == "MatMulInteger"]
    fed = [n for n in integer if producer.get(n.input[0]) == "DynamicQuantizeLinear"]
    assert len(fed) == len(integer), "a MatMulInteger not fed by DynamicQuantizeLinear"
    return len(fed)


def test_float32_copy_has_no_int8_ops_and_agrees_with_the_int8_tower(tmp_path, onnx_weights):
    import numpy as np

    from training.model.encoders import is_dynamically_quantised, load_encoder
    from training.model.onnx_float import dequantize_model

    quantised = _quantised_matmuls(onnx_weights)
    before = _op_counts(onnx_weights)
    assert quantised > 0 and before["DynamicQuantizeLinear"] > 0

    target = tmp_path / "f32.onnx"
    counts = dequantize_model(onnx_weights, target)
    assert counts == {"matmuls_rewritten": quantised, "int8_ops_left": []}
    after = _op_counts(target)
    # read back from the written file: no integer op left, each quantised MatMul a float one
    assert after["MatMulInteger"] == after["DynamicQuantizeLinear"] == 0
    assert after["MatMul"] == before["MatMul"] + quantised
    assert not is_dynamically_quantised(target)
    f32 = load_encoder(f"onnx:{target}", device="cpu", threads=2)
    int8 = load_encoder(f"onnx:{onnx_weights}", device="cpu", threads=2)
    x = _pixels(f32, 4)
    a, b = f32.encode_images(x), int8.encode_images(x)
    cos = (a * b).sum(1)
    assert cos.min() > 0.9  # same weights up to activation rounding (0.95 seen on demo images)
    np.testing.assert_allclose(f32.encode_images(x[:1]), a[:1], atol=1e-5)
