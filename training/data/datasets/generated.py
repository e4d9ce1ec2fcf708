"""Generated images from PyPI beyond ComfyUI: OpenPeople (Gemini people) and InvokeAI.

`openpeople` (MIT) holds ten synthetic people, each in six pictures made with
Gemini 3 Pro Image (its metadata.json says which model): four single scenes
(studio portrait, studio full body, casual selfie, casual full body) and two
reference sheets, a grid of labelled white frames on grey (4x4 expressions, 2x4
angles). The singles are kept whole; of each sheet the cells on the diagonal are
cut out (inside the frame, without the label), so that ten faces do not fill the
class. `invokeai` ships 18 preview images of its style presets (256 px), made with
an image model the package does not name; they are labelled "invokeai".
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.datasets.common import RawImage, generator_family
from training.data.packages import pip_download

OPENPEOPLE = "openpeople==0.1.2"
OPENPEOPLE_SINGLES = ("studio_portrait", "studio_posture", "amateur_selfie", "amateur_posture")
OPENPEOPLE_SHEETS = {"emotions_sheet": (4, 4), "character_sheet": (2, 4)}  # rows, columns
INVOKEAI = "invokeai==6.14.2"
INVOKEAI_PRESETS = "invokeai/app/services/style_preset_images/default_style_preset_images/"


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def grid_cells(image: Image.Image, *, white: int = 200, margin: int = 6) -> list[list[tuple]]:
    """The insides of the white frames of a reference sheet, as rows of (left, top,
    right, bottom) boxes, top to bottom and left to right.

    A frame's sides are columns that are white over the height of every frame in
    that column of the grid (more than a third of the sheet); between two sides, its
    top and bottom are rows white across the whole width. A white shirt touching
    the frame only moves the bottom edge up.
    """
    mask = np.asarray(image.convert("L")) >= white
    sides = _runs(mask.mean(axis=0) > 1 / 3)
    rows: dict[int, list[tuple]] = {}
    for (_, left), (right, _) in zip(sides[::2], sides[1::2], strict=False):
        edges = _runs(mask[:, left:right].mean(axis=1) > 0.9)
        for (_, top), (bottom, _) in zip(edges[::2], edges[1::2], strict=False):
            box = (left + margin, top + margin, right - margin, bottom - margin)
            key = next((k for k in rows if abs(k - top) < margin * 4), top)
            rows.setdefault(key, []).append(box)
    return [sorted(rows[k]) for k in sorted(rows)]


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def openpeople_images(downloads: Path) -> Iterator[RawImage]:
    requirement = OPENPEOPLE
    with zipfile.ZipFile(pip_download(requirement, downloads)) as z:
        people = sorted(
            {n.split("/")[3] for n in z.namelist() if n.startswith("openpeople/data/curated/P")}
        )
        for person in people:
            folder = f"openpeople/data/curated/{person}"
            model = json.loads(z.read(f"{folder}/metadata.json"))["generated_with"]
            source = generator_family(model)
            for name in OPENPEOPLE_SINGLES:
                member = f"{folder}/assets/{name}.jpg"
                yield RawImage(f"{requirement}:{member}", z.read(member), 1, source, model)
            for name, shape in OPENPEOPLE_SHEETS.items():
                member = f"{folder}/assets/{name}.jpg"
                sheet = Image.open(io.BytesIO(z.read(member)))
                cells = grid_cells(sheet)
                if [len(r) for r in cells] != [shape[1]] * shape[0]:
                    raise ValueError(
                        f"{member}: expected a {shape} grid of frames, found "
                        f"{[len(r) for r in cells]}"
                    )
                for i in range(min(shape)):
                    crop = _png(sheet.crop(cells[i][i]))
                    yield RawImage(f"{requirement}:{member}#r{i}c{i}", crop, 1, source, model)


def invokeai_images(downloads: Path) -> Iterator[RawImage]:
    with zipfile.ZipFile(pip_download(INVOKEAI, downloads)) as z:
        for member in sorted(z.namelist()):
            if member.startswith(INVOKEAI_PRESETS) and member.endswith(".png"):
                yield RawImage(
                    f"{INVOKEAI}:{member}",
                    z.read(member),
                    1,
                    "invokeai",
                    "InvokeAI style preset (model not named)",
                )


def generated_images(downloads: Path) -> Iterator[RawImage]:
    yield from openpeople_images(downloads)
    yield from invokeai_images(downloads)
