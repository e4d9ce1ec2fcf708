"""Hand-made content and style tags of the benchmark's images (training/data/content_tags.csv).

One row per image: `origin` (exactly RawImage.origin), `content` (what the main
subject is) and `style` (the look, whatever the provenance). "people" means a
person or a face is the main subject; "art" is illustration, anime, painting, 3D
render or an obviously stylised or typeset picture, "photo" a photographic look,
real or generated. They were set by looking at every image; they let an
evaluation report per content (are people caught as well as landscapes?) and
compare like with like across the two classes.
"""

from __future__ import annotations

import csv
from pathlib import Path

CONTENTS = ("people", "animal", "food", "indoor", "street", "landscape", "object", "other")
STYLES = ("photo", "art")
UNTAGGED = ("other", "photo")  # what an image without a row gets (and is counted as untagged)
TAGS_FILE = Path(__file__).resolve().parent.parent / "content_tags.csv"
COLUMNS = ["origin", "content", "style"]


class TagError(ValueError):
    """The tag file is malformed; the message names the line."""


def load_tags(path: Path = TAGS_FILE) -> dict[str, tuple[str, str]]:
    """origin -> (content, style), checked: the header, the vocabulary, no origin twice."""
    tags: dict[str, tuple[str, str]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise TagError(
                f"{path}: the header must be {','.join(COLUMNS)}, not {reader.fieldnames}"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            origin, content, style = row["origin"], row["content"], row["style"]
            if not origin:
                raise TagError(f"{where}: empty origin")
            if content not in CONTENTS:
                raise TagError(f"{where}: content {content!r} is not one of {CONTENTS}")
            if style not in STYLES:
                raise TagError(f"{where}: style {style!r} is not one of {STYLES}")
            if origin in tags:
                raise TagError(f"{where}: {origin} is tagged twice")
            tags[origin] = (content, style)
    return tags


def write_tags(tags: dict[str, tuple[str, str]], path: Path = TAGS_FILE) -> None:
    """The tag file, sorted by origin (so that a diff shows what changed)."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for origin in sorted(tags):
            writer.writerow([origin, *tags[origin]])
