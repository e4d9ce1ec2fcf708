"""Test-time views (training/model/views.py): what each view is, and that serving, `dmguard score`
and the benchmark score one upload's views the same way."""

import numpy as np
import pytest
from PIL import Image

from actors.fetching import fetch_pixels
from services.fetch import FetchPolicy
from services.images import decode
from tests.conftest import TINY
from tests.images import encode, photo
from training.model.detector import Detector
from training.model.encoders import load_encoder
from training.model.features import encode as encode_features
from training.model.head import HeadConfig, MLPHead, score
from training.model.registry import Registry
from training.model.views import VIEWS, as_bytes, check_views, combine, view, view_pixels

TOL = 1e-6


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(TINY, device="cpu", threads=1)


def test_each_view_is_the_picture_it_names():
    image = photo(300, 200, seed=1)
    pixels = np.asarray(image)
    np.testing.assert_array_equal(np.asarray(view(image, "flip")), pixels[:, ::-1])
    whole = view(image, "whole")
    assert whole.size == (200, 200)  # nothing cropped: the short side, aspect squashed
    np.testing.assert_array_equal(
        np.asarray(whole), np.asarray(image.resize((200, 200), Image.Resampling.BICUBIC))
    )
    zoom = view(image, "zoom")  # the centre half of each side
    np.testing.assert_array_equal(np.asarray(zoom), pixels[50:150, 75:225])


def test_views_are_checked():
    assert check_views(["zoom", "flip"]) == ("zoom", "flip")
    with pytest.raises(ValueError, match="unknown view"):
        check_views(["flip", "rotate"])
    with pytest.raises(ValueError, match="twice"):
        check_views(["flip", "flip"])
    with pytest.raises(ValueError, match="unknown view"):
        view(photo(10, 10), "rotate")


def test_combine_is_the_mean_of_the_views():
    scores = np.array([[0.2, 0.4, 0.9], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(combine(scores), [0.5, 0.5])


def test_view_pixels_stack_the_centre_crop_first(encoder):
    image = photo(320, 240, seed=2)
    pre = encoder.preprocess
    np.testing.assert_array_equal(view_pixels(image, pre, ()), pre(image))
    stacked = view_pixels(image, pre, VIEWS)
    assert stacked.shape == (1 + len(VIEWS), 3, pre.image_size, pre.image_size)
    np.testing.assert_array_equal(stacked[0], pre(image))
    for i, name in enumerate(VIEWS, start=1):
        np.testing.assert_array_equal(stacked[i], pre(view(image, name)))


def head_with_views(tmp_path, encoder, views):
    """A random head (BatchNorm statistics set so that scores spread) saved with `views`."""
    import torch

    torch.manual_seed(0)
    head = MLPHead(HeadConfig(input_dim=encoder.dim))
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.05)
                m.running_var.uniform_(0.005, 0.03)
    registry = Registry(tmp_path / "registry")
    meta = registry.save(head, encoder=TINY, views=views)
    return Detector(encoder, *registry.load(meta.version))


def test_a_head_with_views_serves_the_mean_of_its_views_scores(tmp_path, encoder, image_server):
    """Serving (fetch_pixels + Detector, as the worker and `dmguard score` call them) gives
    each image the mean of its views' scores, computed here view by view through the
    benchmark's path (each view's bytes, decoded and encoded alone)."""
    detector = head_with_views(tmp_path, encoder, ["flip", "whole", "zoom"])
    assert detector.views == ("flip", "whole", "zoom")
    blobs = [encode(photo(360 + 40 * i, 240, seed=10 + i), "JPEG") for i in range(4)]
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",))
    pixels = []
    for i, blob in enumerate(blobs):
        image_server.routes[f"/v{i}.jpg"] = blob
        got, _ = fetch_pixels(
            image_server.url(f"/v{i}.jpg"), policy, encoder.preprocess, views=detector.views
        )
        assert got.shape == detector.pixel_shape
        pixels.append(got)
    features, served = detector(np.stack(pixels))
    assert served.shape == (4,) and features.shape == (4, encoder.dim)

    size = encoder.preprocess.image_size
    per_view = []
    for name in (None, *detector.views):
        transform = (lambda b: b) if name is None else as_bytes(name, size)
        views_pixels = np.stack(
            [encoder.preprocess(decode(transform(b), target_size=size)) for b in blobs]
        )
        per_view.append(score(detector.head, encode_features(encoder, views_pixels, "embedding")))
        if name is None:  # the features a head with views logs are the centre crop's
            np.testing.assert_allclose(
                features, encoder.encode_images(views_pixels), atol=1e-5, rtol=0
            )
    per_view = np.stack(per_view, axis=1)
    assert np.ptp(per_view, axis=1).max() > 1e-4  # the views score differently: a real test
    np.testing.assert_allclose(served, per_view.mean(axis=1), atol=TOL, rtol=0)


def test_a_registry_refuses_unknown_views(tmp_path, encoder):
    from training.errors import RegistryError

    with pytest.raises(RegistryError, match="views"):
        head = MLPHead(HeadConfig(input_dim=encoder.dim))
        Registry(tmp_path / "r").save(head, encoder=TINY, views=["rotate"])
