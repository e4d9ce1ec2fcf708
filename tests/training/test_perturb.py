"""training/evaluation/perturb.py: each laundering perturbation against PIL applied here, the spec
parser, and an eval run whose metrics must move under them."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from services.errors import ConfigError
from tests.images import encode, generated_like, photo, real_like
from training.evaluation.perturb import parse_perturbations


def png(img: Image.Image) -> bytes:
    return encode(img, "PNG")


def pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"  # every perturbation re-encodes as PNG
    return np.asarray(img.convert("RGB")).astype(np.int32)


def high_frequency_energy(a: np.ndarray) -> float:
    grey = a.mean(axis=2)
    return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())


@pytest.fixture
def noisy() -> Image.Image:
    return generated_like(3, size=64)  # per-pixel noise: every perturbation changes it


@pytest.mark.parametrize("quality", [10, 75, 95])
def test_jpeg_is_pils_jpeg_at_that_quality(noisy, quality):
    [(name, fn)] = parse_perturbations(f"jpeg:{quality}").items()
    assert name == f"jpeg:{quality}"
    out = pixels(fn(png(noisy)))
    expected = np.asarray(
        Image.open(io.BytesIO(encode(noisy, "JPEG", quality=quality))).convert("RGB")
    )
    assert np.array_equal(out, expected.astype(np.int32))
    other = 40 if quality != 40 else 50
    wrong = np.asarray(Image.open(io.BytesIO(encode(noisy, "JPEG", quality=other))).convert("RGB"))
    assert not np.array_equal(out, wrong.astype(np.int32))  # the quality is really used


def test_lower_jpeg_quality_loses_more(noisy):
    fns = parse_perturbations("jpeg:95,jpeg:10")
    orig = np.asarray(noisy).astype(np.int32)
    err = {k: np.abs(pixels(f(png(noisy))) - orig).mean() for k, f in fns.items()}
    assert 0 < err["jpeg:95"] < err["jpeg:10"]


@pytest.mark.parametrize(
    ("factor", "size"),
    [(0.5, (32, 24)), (0.25, (16, 12)), (2, (128, 96)), (0.3, (19, 14)), (0.001, (1, 1))],
)
def test_resize_scales_both_sides_with_bicubic(factor, size):
    img = photo(64, 48, seed=2)
    out = parse_perturbations(f"resize:{factor}")[f"resize:{factor}"](png(img))
    got = Image.open(io.BytesIO(out))
    assert got.size == size
    assert np.array_equal(pixels(out), np.asarray(img.resize(size, Image.BICUBIC)).astype(np.int32))


@pytest.mark.parametrize("radius", [1, 2.5])
def test_blur_is_pils_gaussian_blur_and_removes_high_frequencies(noisy, radius):
    out = pixels(parse_perturbations(f"blur:{radius}")[f"blur:{radius}"](png(noisy)))
    expected = np.asarray(noisy.filter(ImageFilter.GaussianBlur(radius))).astype(np.int32)
    assert np.array_equal(out, expected)
    assert out.shape == np.asarray(noisy).shape
    assert high_frequency_energy(out) < 0.5 * high_frequency_energy(
        np.asarray(noisy).astype(np.int32)
    )


def test_more_blur_removes_more():
    img = generated_like(4, size=64)
    fns = parse_perturbations("blur:0.5,blur:1,blur:3")
    energy = [
        high_frequency_energy(pixels(fns[k](png(img)))) for k in ("blur:0.5", "blur:1", "blur:3")
    ]
    assert energy[0] > energy[1] > energy[2]


def test_non_rgb_inputs_come_out_as_rgb_png():
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 128))
    for name, fn in parse_perturbations("jpeg:75,resize:0.5,blur:1").items():
        out = Image.open(io.BytesIO(fn(png(rgba))))
        assert out.format == "PNG" and out.mode == "RGB", name


def test_the_parser_keeps_each_item_in_order():
    fns = parse_perturbations(" jpeg:75 , resize:0.5,blur:1,,")
    assert list(fns) == ["jpeg:75", "resize:0.5", "blur:1"]
    assert parse_perturbations("") == {}
    img = png(real_like(1, size=48))
    assert Image.open(io.BytesIO(fns["resize:0.5"](img))).size == (24, 24)
    # each item keeps its own change (no late binding of the loop variable)
    assert Image.open(io.BytesIO(fns["jpeg:75"](img))).size == (48, 48)


@pytest.mark.parametrize("spec", ["gauss:1", "jpeg", "jpeg:", "resize", "JPEG:75", "blur 1"])
def test_unknown_or_incomplete_specs_are_config_errors(spec):
    with pytest.raises(ConfigError, match="use jpeg:Q, resize:F or blur:R"):
        parse_perturbations(spec)


def test_a_non_numeric_value_is_a_config_error():
    with pytest.raises(ConfigError):
        parse_perturbations("jpeg:high")


# ----------------------------------------------------------- an eval run must move
@pytest.mark.slow
@pytest.mark.ray
def test_eval_metrics_change_under_each_perturbation(tmp_path, tiny_registry):
    from dmguard.train import run_eval

    data = tmp_path / "data"
    for label, make in (("real", real_like), ("fake", generated_like)):
        (data / label).mkdir(parents=True)
        for i in range(6):
            (data / label / f"{i}.png").write_bytes(png(make(i, size=64)))
    from dmguard import build_parser

    args = build_parser().parse_args(
        [
            "eval",
            "--data",
            str(data),
            "--registry",
            str(tiny_registry.root),
            "--cache",
            str(tmp_path / "cache"),
            "--perturb",
            "jpeg:10,resize:0.25,blur:3",
        ]
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_eval(args) == 0
    metrics = json.loads(out.getvalue())
    assert set(metrics["perturbations"]) == {"jpeg:10", "resize:0.25", "blur:3"}
    for name, perturbed in metrics["perturbations"].items():
        assert perturbed["n_generated"] == metrics["n_generated"] == 6, name
        # ECE is a continuous function of every score: it moves when any image's score does
        assert perturbed["ece"] != pytest.approx(metrics["ece"], abs=1e-9), name
        for source in ("real", "fake"):
            assert perturbed["per_source"][source]["ece"] != pytest.approx(
                metrics["per_source"][source]["ece"], abs=1e-9
            ), (name, source)
