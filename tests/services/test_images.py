import io

import numpy as np
import pytest
from PIL import Image

from services.errors import DecodeError, NotAnImageError, TooLargeError
from services.images import decode, sniff
from tests.images import encode, jpeg, photo, png_bomb


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_sniff_knows_formats_by_magic_bytes(fmt):
    assert sniff(encode(photo(64, 48), fmt)) == fmt


@pytest.mark.parametrize(
    "data", [b"", b"hello", b"<html><body>", b"%PDF-1.7", b"\x00" * 64, b"RIFF\x00\x00\x00\x00WAVE"]
)
def test_sniff_refuses_non_images(data):
    with pytest.raises(NotAnImageError):
        sniff(data)


def test_decode_modes_become_rgb():
    base = photo(80, 60)
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    cases = {
        "rgba": encode(rgba, "PNG"),
        "la": encode(base.convert("LA"), "PNG"),
        "palette": encode(base.convert("P"), "PNG"),
        "palette-transparent": encode(base.convert("P"), "PNG", transparency=0),
        "cmyk": encode(base.convert("CMYK"), "JPEG"),
        "grey": encode(base.convert("L"), "JPEG"),
        "i16": encode(
            Image.fromarray((np.arange(80 * 60).reshape(60, 80) * 10).astype(np.uint16)), "PNG"
        ),
        "bilevel": encode(base.convert("1"), "PNG"),
    }
    for name, data in cases.items():
        img = decode(data, target_size=None)
        assert img.mode == "RGB", name
        assert img.size == (80, 60), name
    white = np.asarray(decode(cases["rgba"], target_size=None))
    assert white.min() == 255  # transparent pixels composited on white, not black


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = decode(buf.getvalue(), target_size=None)
    r, g, b = np.asarray(img)[16, 16]
    assert r > 200 and g < 50 and b < 50


def test_exif_orientation_is_applied():
    img = photo(120, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(img, "JPEG", exif=exif.tobytes())
    assert decode(data, target_size=None).size == (60, 120)


def test_jpeg_draft_decodes_large_photos_small_but_not_below_target():
    data = jpeg(2000, 1500)
    img = decode(data, target_size=224)
    assert min(img.size) >= 224
    assert img.size[0] <= 500  # decoded at 1/4 or 1/8 scale, not 2000 px wide
    assert decode(data, target_size=None).size == (2000, 1500)


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(TooLargeError, match="decompression bomb"):
        decode(png_bomb())
    with pytest.raises(TooLargeError):
        decode(jpeg(400, 300), max_pixels=400 * 300 - 1)


def test_truncated_and_corrupt_images():
    data = jpeg(400, 300)
    with pytest.raises(DecodeError):
        decode(data[: len(data) // 2])
    with pytest.raises((DecodeError, NotAnImageError)):
        decode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
