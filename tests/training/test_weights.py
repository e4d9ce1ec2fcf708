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
