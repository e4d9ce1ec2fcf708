"""What every source yields, and reading files out of the archives they come in."""

from __future__ import annotations

import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

# Families known under two names: Nano Banana is Google's Gemini image model, HY Image
# is Tencent's Hunyuan, P-Video is Pruna's.
FAMILY_ALIASES = {"nano": "gemini", "hy": "hunyuan", "p": "pruna"}


@dataclass(frozen=True)
class RawImage:
    origin: str  # where it came from: "package==version:member" (+ "#r0c1" for a grid cell)
    data: bytes
    label: int  # 1 = generated
    source: str  # generator family or photo collection; the split keeps sources whole
    generator: str = ""


def generator_family(model: str) -> str:
    """'FLUX.1' and 'FLUX 3 Image' -> 'flux', 'GPT-Image-1' -> 'gpt', 'Nano Banana 2' ->
    'gemini': versions of one family stay on one side of the split."""
    match = re.match(r"[a-z]+", model.lower())
    family = match.group(0) if match else "unknown"
    return FAMILY_ALIASES.get(family, family)


def zip_read(path: Path, members: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """(member, bytes) for each named member of a zip file (a wheel), in the order given."""
    with zipfile.ZipFile(path) as z:
        for member in members:
            yield member, z.read(member)


def tar_read(path: Path, members: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """(member, bytes) for each named member of a (gzipped) tar file, in the order given."""
    with tarfile.open(path) as t:
        for member in members:
            file = t.extractfile(member)
            if file is None:
                raise KeyError(f"{member} is not a regular file in {Path(path).name}")
            yield member, file.read()
