"""The hand-made tag file: it parses, uses the vocabulary, names each origin once, and
covers exactly the images the pinned sources list (checked offline, from the lists)."""

from __future__ import annotations

import csv
import re

import pytest

from training.data.datasets import comfyui, generated, photos
from training.data.datasets.tags import (
    CONTENTS,
    STYLES,
    TAGS_FILE,
    TagError,
    load_tags,
    write_tags,
)

ORIGIN = re.compile(r"^(@?[\w.-]+(/[\w.-]+)?)(==|@)[\w.:+~-]+:[^:#]+(#r\d+c\d+)?$")
# crates.io and Maven Central: "crate:NAME==VERSION:member", "maven:G:A:V[:classifier]:member"
# (Maven's test corpora name files with spaces, "+" and "'").
REGISTRY_ORIGIN = re.compile(
    r"^(crate:[\w-]+==[\w.+-]+|maven:[\w.-]+:[\w.-]+:[\w.-]+(:\w+)?):[^:#]+$"
)


@pytest.fixture(scope="module")
def tags() -> dict[str, tuple[str, str]]:
    return load_tags()


def test_the_tag_file_parses_with_the_vocabulary_and_no_origin_twice(tags):
    with TAGS_FILE.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["origin", "content", "style"]
    origins = [r["origin"] for r in rows]
    assert len(origins) == len(set(origins)) == len(tags) > 600
    assert {r["content"] for r in rows} <= set(CONTENTS)
    assert {r["style"] for r in rows} <= set(STYLES)
    bad = [o for o in origins if not (ORIGIN.match(o) or REGISTRY_ORIGIN.match(o))]
    assert not bad, f"not 'package==version:member' (or name@version:member): {bad[:5]}"
    assert origins == sorted(origins)  # write_tags' order: a diff shows what changed


def test_people_are_tagged_in_both_classes(tags):
    """The point of the tags: people, photographic, on both sides."""
    real = [o for o, (c, s) in tags.items() if c == "people" and s == "photo" and _is_real(o)]
    fake = [o for o, (c, s) in tags.items() if c == "people" and s == "photo" and not _is_real(o)]
    assert len(real) >= 250 and len(fake) >= 150


def _is_real(origin: str) -> bool:
    generated_packages = ("comfyui-workflow-templates", "openpeople", "invokeai")
    return not origin.startswith(generated_packages)


def test_every_listed_image_has_a_tag_and_every_tag_a_listed_image(tags):
    """The source lists in code and the tag file name the same images (the build's
    'untagged' count is then 0 for the pinned sources)."""
    expected: set[str] = set()
    for requirement, (_, members) in {
        **photos.PYPI_PHOTOS,
        **photos.PYPI_SDIST_PHOTOS,
        **photos.NPM_PHOTOS,
    }.items():
        expected |= {f"{requirement}:{m}" for m in members}
    for name, (version, _, members) in photos.CRATES_PHOTOS.items():
        expected |= {f"crate:{name}=={version}:{m}" for m in members}
    for coordinates, (_, members) in photos.MAVEN_PHOTOS.items():
        expected |= {f"maven:{coordinates}:{m}" for m in members}
    for package, patterns in photos.DEBIAN_PHOTOS.items():
        pinned = f"{package}=={photos.DEBIAN_VERSIONS[package]}:"
        for pattern in patterns:
            if "*" in pattern:  # a glob: at least one tag under its folder
                folder = pattern.rsplit("/", 1)[0]
                assert any(o.startswith(pinned + folder) for o in tags), pattern
            else:
                expected.add(pinned + pattern)
    for requirement, stems in comfyui.OLD_PICKS.items():
        expected |= {f"{requirement}:comfyui_workflow_templates/templates/{s}.webp" for s in stems}
    missing = expected - set(tags)
    assert not missing, sorted(missing)[:10]

    # the current thumbnails sit in one of the media wheels: match on the file name
    media = {}
    for origin in tags:
        requirement, _, member = origin.partition(":")
        if requirement in comfyui.TEMPLATE_MEDIA:
            media[member.rsplit("/", 1)[-1].removesuffix(".webp")] = origin
    assert set(media) == set(comfyui.PICKS)

    people = {o for o in tags if o.startswith(generated.OPENPEOPLE)}
    cells = sum(min(shape) for shape in generated.OPENPEOPLE_SHEETS.values())
    assert len(people) == 10 * (len(generated.OPENPEOPLE_SINGLES) + cells)
    assert len({o for o in tags if o.startswith(generated.INVOKEAI)}) == 18

    debian = tuple(f"{p}=={v}:" for p, v in photos.DEBIAN_VERSIONS.items())
    listed = expected | set(media.values()) | people
    stray = {o for o in tags if o not in listed and not o.startswith((*debian, generated.INVOKEAI))}
    assert not stray, sorted(stray)[:10]


def test_no_thumbnail_is_picked_twice_and_no_pick_is_an_edit_input():
    assert len(comfyui.PICKS) == len(set(comfyui.PICKS))
    names = [p.rsplit("-", 1)[0] for p in comfyui.PICKS]
    assert len(names) == len(set(names))  # one image per template: never its before AND after
    # the 400 px copy of the picture taken at 1024 px from the old wheel is not taken again
    assert "flux_depth_lora_example-1" not in comfyui.PICKS
    assert "flux_depth_lora_example-1" in comfyui.OLD_PICKS[comfyui.OLD_TEMPLATES]


@pytest.mark.parametrize(
    "text, message",
    [
        ("origin,content\nx==1:a.jpg,people\n", "header"),
        ("origin,content,style\nx==1:a.jpg,person,photo\n", "content 'person'"),
        ("origin,content,style\nx==1:a.jpg,people,painting\n", "style 'painting'"),
        ("origin,content,style\nx==1:a.jpg,people,photo\nx==1:a.jpg,animal,photo\n", "twice"),
        ("origin,content,style\n,people,photo\n", "empty origin"),
    ],
)
def test_a_malformed_tag_file_is_refused_with_its_line(tmp_path, text, message):
    path = tmp_path / "tags.csv"
    path.write_text(text)
    with pytest.raises(TagError, match=message):
        load_tags(path)


def test_write_then_load_round_trips(tmp_path):
    tags = {"b==1:x.png": ("animal", "art"), "a==2:y.jpg#r0c0": ("people", "photo")}
    write_tags(tags, tmp_path / "t.csv")
    assert load_tags(tmp_path / "t.csv") == tags
    assert (tmp_path / "t.csv").read_text().splitlines()[1].startswith("a==2:")
