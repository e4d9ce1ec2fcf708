"""embed_samples caches by image content (sha256 of the bytes) per encoder spec, and
captions by text: renaming a file never recomputes, a changed byte or another encoder does."""

import numpy as np
import pytest

from tests.conftest import TINY
from tests.images import encode, generated_like, real_like
from training.data.embeddings import embed_samples
from training.data.samples import Sample

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def write_images(folder, n: int = 3):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        make = real_like if i % 2 else generated_like
        path = folder / f"img{i}.png"
        path.write_bytes(encode(make(i, size=48), "PNG"))
        paths.append(path)
    return paths


def samples_of(paths, texts=None):
    texts = texts or [None] * len(paths)
    return [
        Sample(str(p), i % 2, "src", t) for i, (p, t) in enumerate(zip(paths, texts, strict=True))
    ]


def embed(samples, cache, spec=TINY, **kw):
    return embed_samples(samples, spec, cache_dir=cache, workers=1, progress=False, **kw)


def test_a_renamed_copy_comes_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    paths = write_images(tmp_path / "a")
    first = embed(samples_of(paths), cache)
    assert first.computed == 3 and first.X.shape[0] == 3
    copies = tmp_path / "elsewhere"
    copies.mkdir()
    renamed = []
    for k, p in enumerate(reversed(paths)):  # new names, new folder, another order
        q = copies / f"renamed-{k}.png"
        q.write_bytes(p.read_bytes())
        renamed.append(q)
    second = embed(samples_of(renamed), cache)
    assert second.computed == 0
    assert np.array_equal(second.X, first.X[::-1])
    assert second.hashes == first.hashes[::-1]
    # one distinct image listed twice is encoded once
    dup_cache = tmp_path / "dup-cache"
    twice = embed(samples_of([paths[0], renamed[-1]]), dup_cache)
    assert twice.computed == 1 and np.array_equal(twice.X[0], twice.X[1])


def test_a_changed_byte_is_recomputed(tmp_path):
    cache = tmp_path / "cache"
    paths = write_images(tmp_path / "a")
    first = embed(samples_of(paths), cache)
    assert first.computed == 3
    img = real_like(1, size=48)
    img.putpixel((0, 0), tuple(255 - c for c in img.getpixel((0, 0))))  # one pixel differs
    paths[1].write_bytes(encode(img, "PNG"))  # same name, new content
    second = embed(samples_of(paths), cache)
    assert second.computed == 1
    assert second.hashes[0] == first.hashes[0] and second.hashes[1] != first.hashes[1]
    assert np.array_equal(second.X[[0, 2]], first.X[[0, 2]])
    assert not np.array_equal(second.X[1], first.X[1])


def test_another_encoder_spec_is_recomputed(tmp_path):
    cache = tmp_path / "cache"
    paths = write_images(tmp_path / "a")
    assert embed(samples_of(paths), cache).computed == 3
    assert embed(samples_of(paths), cache).computed == 0
    # the same random-init model under another spec: still its own cache
    other = embed(samples_of(paths), cache, spec=f"{TINY}/")
    assert other.computed == 3
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2


def test_captions_are_cached_by_text(tmp_path):
    cache = tmp_path / "cache"
    paths = write_images(tmp_path / "a")
    texts = ["a red square", None, "a red square"]
    first = embed(samples_of(paths, texts), cache)
    assert first.T is not None and first.T.shape[0] == 3
    assert np.array_equal(first.T[0], first.T[2]) and not first.T[1].any()  # no caption: zeros
    text_parts = lambda: sorted(cache.rglob("text-*.parquet"))  # noqa: E731
    assert len(text_parts()) == 1
    again = embed(samples_of(paths, texts), cache)
    assert again.computed == 0 and len(text_parts()) == 1  # nothing new written
    assert np.array_equal(again.T, first.T)
    changed = embed(samples_of(paths, ["a red square", None, "a blue circle"]), cache)
    assert changed.computed == 0 and len(text_parts()) == 2  # only the new caption
    assert np.array_equal(changed.T[0], first.T[0]) and not np.array_equal(changed.T[2], first.T[2])
