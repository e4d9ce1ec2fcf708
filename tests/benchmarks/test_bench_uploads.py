"""The upload mix of `dmguard bench --mix uploads` (benchmarks/bench_uploads.py): seeded
and cached, the stated shares, every kind decoding (or failing) as intended through the
service's own decode, and the image server's latency and bandwidth (a lower bound on the
time of a fetch; speed is never asserted)."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from benchmarks import bench_uploads
from benchmarks.bench_uploads import (
    KINDS,
    MIX,
    UploadServer,
    file_counts,
    generate,
    load_mix,
    mix_folder,
)
from benchmarks.harness import vm_rss_mib
from services.errors import InputError
from services.images import decode, sniff

SCALE = 0.05  # 12 MP -> 202x151: the whole mix in about a second


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    return load_mix(tmp_path_factory.mktemp("bench"), scale=SCALE, log=lambda _: None)


def test_the_shares_are_one_table_summing_to_one_with_three_percent_broken():
    assert sum(k.share for k in MIX) == pytest.approx(1.0)
    assert sum(k.share for k in MIX if k.dead_letter) == pytest.approx(0.03)
    assert {k.dead_letter for k in MIX if k.dead_letter} == {"decode_failed", "not_an_image"}
    assert file_counts(100) == {k.name: round(100 * k.share) for k in MIX}


@pytest.mark.parametrize("files", [len(MIX), 37, 100, 250, 1000])
def test_file_counts_add_up_with_every_kind_and_follow_the_shares(files):
    counts = file_counts(files)
    assert sum(counts.values()) == files and min(counts.values()) >= 1
    if files >= 100:  # large enough that no kind needs its minimum of one
        assert all(abs(counts[k.name] - k.share * files) < 1 for k in MIX)


def test_a_mix_smaller_than_the_kinds_is_refused():
    with pytest.raises(ValueError, match="at least"):
        file_counts(len(MIX) - 1)


def test_the_manifest_lists_the_files_in_the_stated_shares(mix):
    assert len(mix.entries) == 100 and sorted(mix.order) == list(range(100))
    summary = mix.summary()
    for k in MIX:
        files = [e for e in mix.entries if e.kind == k.name]
        assert summary[k.name]["share"] == pytest.approx(k.share)
        assert summary[k.name]["files"] == len(files) == round(100 * k.share)
        assert summary[k.name]["mean_bytes"] == round(sum(e.bytes for e in files) / len(files))
        assert summary[k.name]["outcome"] == (k.dead_letter or "verdict")
    for e in mix.entries:
        data = (mix.folder / e.file).read_bytes()
        assert len(data) == e.bytes and mix.data(e.file) == data
        assert e.content_type == KINDS[e.kind].content_type
    manifest = json.loads((mix.folder / "manifest.json").read_text())
    assert manifest["version"] == bench_uploads.GENERATOR_VERSION and manifest["scale"] == SCALE
    # records cycle over the files in the seeded order
    assert [mix.entry(i) for i in range(100)] == [mix.entries[j] for j in mix.order]
    assert mix.entry(100) == mix.entry(0)


def test_generation_is_deterministic_and_seeded(tmp_path, mix):
    again = generate(tmp_path / "again", scale=SCALE)
    assert again["entries"] == [asdict(e) for e in mix.entries]
    assert again["order"] == mix.order
    other = generate(tmp_path / "other", scale=SCALE, seed=1)
    same = [
        a["sha256"] == b["sha256"] for a, b in zip(other["entries"], again["entries"], strict=True)
    ]
    assert sum(same) == 1  # only the zero-byte file


def test_every_kind_decodes_or_fails_as_intended(mix):
    for e in mix.entries:
        kind = KINDS[e.kind]
        data = mix.data(e.file)
        if kind.dead_letter:
            with pytest.raises(InputError) as err:
                decode(data, target_size=None)
            assert err.value.code == kind.dead_letter, e.file
            continue
        assert sniff(data) == kind.fmt, e.file
        image = decode(data, target_size=None)
        assert image.mode == "RGB" and image.size == (e.width, e.height), e.file
        assert min(decode(data, target_size=32).size) >= min(32, e.width, e.height), e.file
    gifs = [e for e in mix.entries if e.kind == "animated_gif"]
    assert all(Image.open(io.BytesIO(mix.data(e.file))).n_frames > 1 for e in gifs)


def test_camera_jpegs_carry_exif_rotations_and_come_out_upright(mix):
    cameras = [e for e in mix.entries if e.kind.startswith("camera") and e.kind.endswith("jpeg")]
    assert {e.orientation for e in cameras} == {1, 3, 6, 8}
    for e in cameras:
        stored = Image.open(io.BytesIO(mix.data(e.file)))
        assert stored.getexif().get(0x0112) == e.orientation
        assert stored.width > stored.height  # the sensor's landscape pixels
        upright = decode(mix.data(e.file), target_size=None).size
        if e.orientation in (6, 8):  # a portrait photo stored sideways
            assert upright == (stored.height, stored.width) == (e.width, e.height)
        else:
            assert upright == stored.size == (e.width, e.height)


def test_the_cache_is_reused_and_rebuilt_when_its_version_changes(tmp_path):
    generated = []
    load_mix(tmp_path, scale=0.02, files=len(MIX), log=generated.append)
    assert len(generated) == 2  # "generating", "generated in"
    load_mix(tmp_path, scale=0.02, files=len(MIX), log=generated.append)
    assert len(generated) == 2  # from the cache
    folder = mix_folder(tmp_path, scale=0.02, files=len(MIX))
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 0}))
    load_mix(tmp_path, scale=0.02, files=len(MIX), log=generated.append)
    assert len(generated) == 4  # another generator's files: made again
    (folder / manifest["entries"][0]["file"]).write_bytes(b"changed")
    load_mix(tmp_path, scale=0.02, files=len(MIX), log=generated.append)
    assert len(generated) == 6  # a file that is not the manifest's: made again
    kinds = [{**k, "share": 0.5} if i == 0 else k for i, k in enumerate(manifest["kinds"])]
    (folder / "manifest.json").write_text(json.dumps({**manifest, "kinds": kinds}))
    load_mix(tmp_path, scale=0.02, files=len(MIX), log=generated.append)
    assert len(generated) == 8  # made from another table of kinds: made again
    assert not list(tmp_path.glob("*.partial"))


def _get(url: str) -> tuple[bytes, str, float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
        content_type = r.headers["Content-Type"]
    return body, content_type, time.perf_counter() - t0


def test_the_server_gives_each_format_its_content_type(mix):
    with UploadServer(mix.lookup, latency_ms=0, bandwidth_mbps=0) as server:
        for kind in MIX:
            e = next(e for e in mix.entries if e.kind == kind.name)
            body, content_type, _ = _get(f"{server.url}/{e.file}?r=1")
            assert body == mix.data(e.file) and content_type == kind.content_type
        types = {KINDS[e.kind].fmt: KINDS[e.kind].content_type for e in mix.entries}
        assert types["PNG"] == "image/png" and types["AVIF"] == "image/avif"
        assert types["WEBP"] == "image/webp" and types["GIF"] == "image/gif"
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{server.url}/missing.jpg")
        assert err.value.code == 404


def test_the_server_waits_its_latency_and_keeps_to_its_bandwidth():
    body = np.random.default_rng(0).bytes(300_000)
    latency_ms, mbps = 150.0, 8.0  # 300 kB at 1 MB/s: at least 0.3 s on top of the latency
    with UploadServer(
        lambda p: (body, "image/jpeg"), latency_ms=latency_ms, bandwidth_mbps=mbps
    ) as server:
        got, _, elapsed = _get(f"{server.url}/x.jpg")
        assert got == body and server.bytes_sent == len(body)
        assert elapsed >= latency_ms / 1000 + len(body) * 8 / (mbps * 1e6)
    with UploadServer(
        lambda p: (body, "image/jpeg"), latency_ms=latency_ms, bandwidth_mbps=0
    ) as server:
        got, _, elapsed = _get(f"{server.url}/x.jpg")
        assert got == body and elapsed >= latency_ms / 1000


def test_peak_rss_is_the_high_water_mark():
    before = vm_rss_mib()
    block = np.ones(200 * 2**20, np.uint8)  # 200 MiB, touched
    during = vm_rss_mib()
    del block
    after, peak = vm_rss_mib(), vm_rss_mib(peak=True)
    assert during >= before + 150
    assert peak >= during - 1 and peak >= after + 150  # freed, but the peak stays
