"""benchmarks/bench_decode.py: the decode benchmark's methods make the encoder's input,
and its agreement measure tells a broken decoder from a right one (times not asserted)."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks import bench_decode
from benchmarks.bench_decode import PASS_COSINE, compare_decoders, format_table
from benchmarks.decode_methods import METHODS, Method
from services.errors import InputError
from services.images import decode, to_rgb
from tests.conftest import TINY
from tests.images import animation, encode, exif_jpeg, jpeg, jpeg_with_size, photo, png_bomb
from training.model.encoders import Preprocess

REFERENCE = METHODS[0]
AVAILABLE = [m for m in METHODS if m.unavailable() is None]
DECODERS = [m for m in AVAILABLE if m.name != "noise_floor"]  # the calibration row is noisy


def stripes(w: int = 480, h: int = 320, period: int = 30) -> Image.Image:
    """Yellow and blue horizontal bands: turned a quarter, a different picture even to
    the tiny random encoder (which hardly tells two smooth photos apart)."""
    rows = (np.arange(h) // period) % 2 == 0
    arr = np.where(rows[:, None, None], np.uint8([240, 200, 40]), np.uint8([30, 40, 160]))
    return Image.fromarray(np.broadcast_to(arr, (h, w, 3)).copy())


def transparent_png() -> bytes:
    img = photo(300, 200, 5).convert("RGBA")
    img.putalpha(Image.new("L", img.size, 0))  # nothing shows: alpha on white is all white
    return encode(img, "PNG")


def upload_mix() -> list[tuple[str, bytes]]:
    return [
        ("rotated.jpg", exif_jpeg(stripes(), 6)),
        ("camera.jpg", jpeg(640, 480, 1)),
        ("screen.png", encode(photo(500, 300, 2), "PNG")),
        ("alpha.png", encode(photo(400, 300, 3).convert("RGBA"), "PNG")),
        ("photo.webp", encode(photo(500, 400, 4), "WEBP", quality=90)),
        ("photo.avif", encode(photo(480, 360, 6), "AVIF", quality=80, speed=8)),
        ("anim.gif", animation("GIF", [(200, 30, 30), (30, 200, 30)], 300)),
    ]


# Deliberately wrong decoders: what the agreement measure must catch.
def _no_exif(data: bytes, preprocess) -> np.ndarray:
    """Pillow, full size, without turning the picture upright."""
    return preprocess(to_rgb(Image.open(io.BytesIO(data))))


def _bgr(data: bytes, preprocess) -> np.ndarray:
    """The channels the wrong way round (PyTurboJPEG's default pixel format is BGR)."""
    return np.ascontiguousarray(REFERENCE.run(data, preprocess)[::-1])


def _lenient(data: bytes, preprocess) -> np.ndarray:
    """Grey pixels for whatever bytes: decodes what the reference refuses."""
    return preprocess(Image.new("RGB", (300, 200), (128, 128, 128)))


def _fails_on_png(data: bytes, preprocess) -> np.ndarray:
    if data.startswith(b"\x89PNG"):
        raise RuntimeError("cannot")
    return REFERENCE.run(data, preprocess)


@pytest.mark.parametrize("method", AVAILABLE, ids=lambda m: m.name)
def test_every_available_method_makes_a_224_input(method: Method):
    for name, data in upload_mix():
        kind = bench_decode._kind(data)
        if method.formats is not None and kind not in method.formats:
            continue
        out = method.run(data, Preprocess())
        assert out.shape == (3, 224, 224) and out.dtype == np.float32, name
        assert np.isfinite(out).all(), name


@pytest.mark.parametrize("method", DECODERS, ids=lambda m: m.name)
def test_every_available_method_keeps_the_guards(method: Method):
    """Alpha on white, and a header over the caps refused before any pixel."""
    pre = Preprocess(image_size=32)
    takes = method.formats is None or "PNG" in method.formats
    if takes:
        white = pre(Image.new("RGB", (3, 3), "white"))
        assert np.allclose(method.run(transparent_png(), pre), white)
    huge = jpeg_with_size(12_000, 9_000)  # 108 MP declared, 16 x 16 in the file
    if method.formats is None or "JPEG" in method.formats:
        with pytest.raises(InputError):
            method.run(huge, pre)
    if takes:
        with pytest.raises(InputError):
            method.run(png_bomb(), pre)


def test_every_available_method_agrees_and_refuses_what_the_reference_refuses():
    images = upload_mix() + [("cut.jpg", jpeg(640, 480, 7)[:2500]), ("page.html", b"<html>")]
    result = compare_decoders(images, TINY, repeats=1)
    kinds = result["kinds"]
    assert set(kinds) == {"JPEG", "PNG", "WEBP", "AVIF", "GIF", "not_an_image"}
    assert kinds["JPEG"]["images"] == 3 and kinds["JPEG"]["decoded_by_reference"] == 2
    for kind, info in kinds.items():
        for name, entry in info["methods"].items():
            if name not in {m.name for m in AVAILABLE}:  # e.g. turbojpeg without libturbojpeg
                assert entry == {"status": "unavailable", "reason": entry["reason"]}
                assert entry["reason"], (kind, name)
                continue
            assert entry["status"] == "ran", (kind, name)
            assert entry["accepted_refused"] == 0, (kind, name)  # the cut JPEG, the HTML page
            assert entry["errors"] == 0, (kind, name, entry["error_examples"])
            assert entry["passes"], (kind, name, entry)
            if info["decoded_by_reference"]:
                assert entry["ms"] > 0 and entry["speedup"] > 0
                assert entry["cos_min"] >= PASS_COSINE
    for method in AVAILABLE:  # every method ran on every format it takes
        for kind in ("JPEG", "PNG", "WEBP", "AVIF", "GIF"):
            if method.formats is None or kind in method.formats:
                assert method.name in kinds[kind]["methods"]
    json.dumps(result)  # JSON-able


def test_reference_agrees_with_itself():
    again = Method("again", "the reference once more", REFERENCE.run)
    result = compare_decoders(upload_mix(), TINY, repeats=1, methods=(REFERENCE, again))
    for info in result["kinds"].values():
        for name in ("reference", "again"):
            entry = info["methods"][name]
            assert entry["cos_min"] == pytest.approx(1.0, abs=1e-5), name
            assert entry["pixel_mae"] == 0.0 and entry["passes"]
        assert info["methods"]["reference"]["speedup"] == 1.0


def test_the_noise_floor_is_invisible_noise():
    """The calibration row differs from the reference by +-0.5 of a pixel level (mean 0.25)."""
    floor = next(m for m in METHODS if m.name == "noise_floor")
    result = compare_decoders(upload_mix()[:3], TINY, repeats=1, methods=(REFERENCE, floor))
    for info in result["kinds"].values():
        assert info["methods"]["noise_floor"]["pixel_mae"] == pytest.approx(0.25, abs=0.01)
    out = floor.run(jpeg(320, 240), Preprocess())
    assert out.dtype == np.float32 and out.shape == (3, 224, 224)


def test_a_broken_decoder_is_caught():
    broken = (
        Method("no_exif", "skips EXIF orientation", _no_exif),
        Method("bgr", "channels swapped", _bgr),
        Method("lenient", "decodes anything", _lenient),
        Method("fails_on_png", "raises on PNGs", _fails_on_png),
    )
    images = [
        ("rotated.jpg", exif_jpeg(stripes(period=40), 6)),
        ("upright.jpg", exif_jpeg(stripes(period=20), 1)),
        ("screen.png", encode(photo(500, 300, 2), "PNG")),
        ("cut.png", encode(photo(500, 300, 3), "PNG")[:3000]),
    ]
    result = compare_decoders(images, TINY, repeats=1, methods=(REFERENCE, *broken))
    jpg, png = result["kinds"]["JPEG"]["methods"], result["kinds"]["PNG"]["methods"]
    assert jpg["reference"]["passes"] and png["reference"]["passes"]
    assert jpg["no_exif"]["cos_min"] < PASS_COSINE and not jpg["no_exif"]["passes"]
    assert jpg["no_exif"]["cos_mean"] < 1.0 - 1e-4  # the upright one agrees, the rotated not
    assert jpg["bgr"]["cos_min"] < PASS_COSINE and not jpg["bgr"]["passes"]
    assert png["lenient"]["accepted_refused"] == 1 and not png["lenient"]["passes"]
    assert png["fails_on_png"]["errors"] == 1 and not png["fails_on_png"]["passes"]
    assert png["fails_on_png"]["error_examples"] == ["RuntimeError: cannot"]
    assert jpg["fails_on_png"]["passes"]
    table = format_table(result)
    assert "| JPEG | 2/2 | no_exif |" in table and "| PNG | 1/2 | lenient |" in table


def test_unavailable_libraries_are_reported_not_raised(monkeypatch):
    for module in ("pyvips", "simplejpeg", "turbojpeg"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    missing_lib = Method("missing_lib", "no shared library", REFERENCE.run, check=lambda: "no lib")
    images = [("camera.jpg", jpeg(320, 240, 1)), ("screen.png", encode(photo(300, 200), "PNG"))]
    result = compare_decoders(images, TINY, repeats=1, methods=(*METHODS, missing_lib))
    gone = {"simplejpeg", "turbojpeg", "vips_shrink", "vips_thumbnail", "missing_lib"}
    for name in gone:
        assert result["methods"][name]["available"] is False, name
        assert result["methods"][name]["reason"], name
        assert result["kinds"]["JPEG"]["methods"][name]["status"] == "unavailable", name
    assert "simplejpeg" not in result["kinds"]["PNG"]["methods"]  # JPEG only: not listed
    assert result["kinds"]["PNG"]["methods"]["vips_shrink"]["status"] == "unavailable"
    assert result["kinds"]["JPEG"]["methods"]["pillow_draft"]["passes"]
    table = format_table(result)
    assert "| JPEG | 1/1 | simplejpeg | unavailable |" in table
    assert "- `missing_lib`: unavailable: no lib" in table


def test_main_reads_a_folder_and_prints_json(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(exif_jpeg(photo(300, 200, 1), 8))
    (tmp_path / "b.webp").write_bytes(encode(photo(300, 200, 2), "WEBP"))
    args = ["--images", str(tmp_path), "--encoder", TINY, "--repeats", "1", "--json"]
    assert bench_decode.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["kinds"]) == {"JPEG", "WEBP"} and result["encoder"] == TINY
    reference = result["kinds"]["JPEG"]["methods"]["reference"]
    assert reference["cos_min"] == pytest.approx(1.0, abs=1e-5)


def test_reference_is_the_full_decode():
    data = exif_jpeg(photo(640, 480, 9), 6)
    pre = Preprocess()
    assert np.array_equal(REFERENCE.run(data, pre), pre(decode(data, target_size=None)))
