"""services.provenance: the markers each tool writes, the policy, and hostile files (every
one a clear result, never an exception, within a bounded time). C2PA: test_provenance_c2pa."""

from __future__ import annotations

import csv
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from services.provenance import (
    AI_COMPOSITE,
    AI_GENERATED,
    CAPTURE,
    OTHER,
    UNREADABLE,
    Finding,
    Limits,
    ProvenanceSettings,
    decides,
    read_provenance,
)
from services.provenance.containers import scan
from tests import markers
from tests.images import _png_chunk, encode, jpeg, photo


def evidence(data: bytes, **kw) -> list[dict]:
    return read_provenance(data, ProvenanceSettings(**kw)).evidence


def png() -> bytes:
    return encode(photo(96, 96), "PNG")


# ------------------------------------------------------------------ XMP
@pytest.mark.parametrize(
    "source_type, claim",
    [
        ("trainedAlgorithmicMedia", AI_GENERATED),
        ("compositeWithTrainedAlgorithmicMedia", AI_COMPOSITE),
        ("digitalCapture", CAPTURE),
        ("algorithmicMedia", OTHER),  # made by an algorithm without training data: not AI
        ("compositeSynthetic", OTHER),
        ("humanEdits", OTHER),
    ],
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "AVIF"])
def test_each_digital_source_type_in_each_container(fmt, source_type, claim):
    data = markers.image_with_xmp(fmt, markers.xmp(source_type))
    (found,) = evidence(data)
    assert found["kind"] == "iptc_source_type" and found["claim"] == claim
    assert found["detail"]["value"] == source_type and found["verified"] is False
    assert found["after_end"] is False and "XMP in" in found["detail"]["where"]
    report = read_provenance(data)
    assert (report.decisive is not None) == (claim in (AI_GENERATED, AI_COMPOSITE))


@pytest.mark.parametrize("form", ["attribute", "element", "resource"])
def test_digital_source_type_in_every_rdf_form(form):
    data = markers.image_with_xmp("JPEG", markers.xmp("trainedAlgorithmicMedia", form=form))
    assert [f["claim"] for f in evidence(data)] == [AI_GENERATED]


def test_a_generator_named_as_creator_tool_in_xmp():
    data = markers.image_with_xmp("PNG", markers.xmp(tool="Adobe Firefly 3"))
    (found,) = evidence(data)
    assert found["kind"] == "generator_software" and found["detail"]["generator"] == "Adobe Firefly"


# ------------------------------------------------------- EXIF, PNG text
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF", "PNG"])
def test_exif_software_of_a_generator(fmt):
    (found,) = evidence(markers.exif_image(fmt, software="NovelAI"))
    assert found["kind"] == "generator_software" and found["claim"] == AI_GENERATED
    assert found["detail"]["generator"] == "NovelAI" and "Software" in found["detail"]["where"]


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_automatic1111_parameters_in_exif_user_comment(fmt):
    (found,) = evidence(markers.exif_image(fmt, user_comment=markers.A1111))
    assert (
        found["kind"] == "generator_parameters" and found["detail"]["generator"] == "AUTOMATIC1111"
    )


@pytest.mark.parametrize(
    "make, generator",
    [
        (markers.a1111_png, "AUTOMATIC1111"),
        (markers.comfyui_png, "ComfyUI"),
        (markers.invokeai_png, "InvokeAI"),
        (markers.novelai_png, "NovelAI"),
    ],
)
def test_png_text_chunks_as_each_tool_writes_them(make, generator):
    found = evidence(make())
    assert found and {f["detail"]["generator"] for f in found} == {generator}
    assert all(f["claim"] == AI_GENERATED and not f["verified"] for f in found)


def test_compressed_text_chunks_are_read():
    data = markers.png_with_text({"parameters": markers.A1111}, compressed={"parameters"})
    assert [f["detail"]["where"] for f in evidence(data)] == ["PNG zTXt 'parameters'"]


def test_ordinary_software_and_text_are_no_evidence():
    assert evidence(markers.exif_image("JPEG", software="Adobe Photoshop 25.0 (Windows)")) == []
    assert evidence(markers.exif_image("JPEG", software="GIMP 2.10.34")) == []
    # A `parameters` chunk without their shape (some other program's) is not AUTOMATIC1111's.
    assert evidence(markers.png_with_text({"parameters": "gamma=2.2", "Comment": "hi"})) == []
    assert evidence(jpeg()) == [] and evidence(png()) == []


def test_a_camera_photo_is_capture_evidence_and_decides_nothing():
    report = read_provenance(markers.camera_jpeg())
    assert [f.claim for f in report.findings] == [CAPTURE]
    assert report.decisive is None


# --------------------------------------------------------------- policy
def test_policy_modes():
    ai = markers.a1111_png()
    assert read_provenance(ai, ProvenanceSettings("on")).decisive is not None
    evidence_only = read_provenance(ai, ProvenanceSettings("evidence"))
    assert evidence_only.findings and evidence_only.decisive is None
    off = read_provenance(ai, ProvenanceSettings("off"))
    assert off.findings == [] and off.decisive is None and off.evidence == []
    with pytest.raises(ValueError, match="provenance mode"):
        ProvenanceSettings("sometimes")


def test_decides_prefers_a_verified_marker_and_ignores_markers_after_the_end():
    plain = Finding("iptc_source_type", AI_GENERATED)
    signed = Finding("c2pa", AI_COMPOSITE, verified=True)
    after = Finding("generator_parameters", AI_GENERATED, after_end=True)
    capture = Finding("c2pa", CAPTURE, verified=True)
    assert decides([plain, signed], "on") is signed
    assert decides([plain], "on") is plain
    assert decides([after, capture], "on") is None  # neither says "generated"
    assert decides([plain, signed], "evidence") is None


def test_a_marker_after_the_image_end_is_reported_unverified_and_decides_nothing():
    report = read_provenance(markers.after_iend(png()))
    (found,) = report.findings
    assert found.after_end and not found.verified and found.claim == AI_GENERATED
    assert "after the PNG's IEND" in found.detail["where"]
    assert report.decisive is None
    # The example: a real photo with a 13-byte fake tEXt chunk appended.
    fake = read_provenance(markers.tiny_fake_text(png()))
    assert fake.decisive is None and all(f.after_end for f in fake.findings)
    # After a JPEG's end: XMP appended to a real photo.
    tail = read_provenance(jpeg() + markers.xmp("trainedAlgorithmicMedia"))
    assert [f.after_end for f in tail.findings] == [True] and tail.decisive is None


# --------------------------------------------------------------- hostile
def assert_quick_and_clear(data: bytes, seconds: float = 0.5) -> list[dict]:
    t0 = time.perf_counter()
    report = read_provenance(data)
    assert time.perf_counter() - t0 < seconds
    json.dumps(report.evidence, allow_nan=False).encode("utf-8")  # always writable
    return report.evidence


@pytest.mark.timeout(60)  # a walk that loops fails here, not after the suite's 600 s
def test_an_xml_bomb_in_xmp_is_refused_unread():
    bomb = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i else b"&lol;") * 10)
            for i in range(1, 10)
        )
        + b']><rdf:RDF><rdf:Description Iptc4xmpExt:DigitalSourceType="&lol9;"/></rdf:RDF></x:xmpmeta>'
    )
    (found,) = assert_quick_and_clear(markers.image_with_xmp("JPEG", bomb))
    assert found["claim"] == UNREADABLE and "DTD" in found["detail"]["problem"]


def test_a_decompression_bomb_in_a_ztxt_chunk_is_not_inflated_past_the_cap(monkeypatch):
    bomb = zlib.compress(b"Steps: 1, Seed: 1 " + b"\x00" * (64 << 20), 9)  # 64 MiB from ~64 KiB
    data = markers.png_with_raw_chunk(png(), b"zTXt", b"parameters\x00\x00" + bomb)
    inflated: list[int] = []
    real = zlib.decompressobj

    class Counting:  # zlib's inflater, counting what it hands back
        def __init__(self):
            self.inner = real()

        def decompress(self, *args):
            out = self.inner.decompress(*args)
            inflated.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    assert assert_quick_and_clear(data) == []
    assert any("inflates past" in p for p in scan(data).problems)
    assert inflated and max(inflated) <= Limits().max_block_bytes + 1


@pytest.mark.timeout(60)  # a walk that loops fails here, not after the suite's 600 s
@pytest.mark.parametrize(
    "make",
    [
        # declared lengths far past the end
        lambda: markers.png_with_raw_chunk(png(), b"tEXt", b"parameters\x00x", length=0xFFFFFFF0),
        lambda: jpeg()[:2] + b"\xff\xe1\xff\xff" + markers.xmp("trainedAlgorithmicMedia")[:50],
        lambda: b"RIFF\xff\xff\xff\xffWEBPXMP \xff\xff\xff\x7f" + b"<x:xmpmeta" * 10,
        lambda: b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00avifmif1\xff\xff\xff\xffmeta",
        # truncated chunks and segments
        lambda: markers.a1111_png()[:60],
        lambda: markers.image_with_xmp("JPEG", markers.xmp("trainedAlgorithmicMedia"))[:120],
        lambda: markers.png_with_raw_chunk(png(), b"iTXt", b"XML:com.adobe.xmp\x00\x01"),
        lambda: markers.png_with_raw_chunk(png(), b"zTXt", b"parameters\x00\x00not zlib"),
        lambda: markers.png_with_raw_chunk(png(), b"tEXt", b"\x00no keyword"),
        # non-UTF-8 text, deeply nested JSON, an XMP packet with no end
        lambda: (
            markers.png_with_text({"parameters": "x"})[:-12]
            + _png_chunk(b"tEXt", b"parameters\x00\xff\xfe\x80Steps: 1, Seed: \xc3\x28")
        ),
        lambda: markers.png_with_text({"prompt": "[" * 200_000 + '"class_type"'}),
        lambda: markers.image_with_xmp("WEBP", b"<x:xmpmeta " + b"a" * 100_000),
        # nothing an image
        lambda: b"",
        lambda: b"\xff\xd8\xff",
        lambda: bytes(range(256)) * 100,
    ],
)
def test_hostile_containers_give_a_clear_result(make):
    for found in assert_quick_and_clear(make()):
        assert set(found) == {"kind", "claim", "verified", "after_end", "detail"}


def test_non_utf8_parameters_are_read_with_replacement():
    data = png()[:-12] + _png_chunk(b"tEXt", b"parameters\x00\xff\xfe Steps: 1, Seed: 2\xc3\x28")
    data += png()[-12:]
    (found,) = assert_quick_and_clear(data)
    assert found["detail"]["generator"] == "AUTOMATIC1111"


@pytest.mark.timeout(60)  # a walk that loops fails here, not after the suite's 600 s
def test_an_exif_ifd_that_loops_or_lies_is_unreadable_not_endless():
    looped = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", 1)
    looped += struct.pack(">HHII", 0x8769, 4, 1, 8) + b"\x00\x00\x00\x00"  # Exif IFD -> itself
    lying = b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", 60000)  # 60000 entries
    pointing = b"II*\x00\x08\x00\x00\x00" + struct.pack("<HHHII", 1, 0x0131, 2, 500, 1 << 30)
    for block in (looped, lying, pointing):
        data = (
            jpeg()[:2] + b"\xff\xe1" + struct.pack(">H", len(block) + 8) + b"Exif\x00\x00" + block
        )
        data += jpeg()[2:]
        for found in assert_quick_and_clear(data):
            assert found["claim"] == UNREADABLE and "EXIF" in found["detail"]["problem"]


@pytest.mark.timeout(60)  # a walk that loops fails here, not after the suite's 600 s
def test_too_many_chunks_and_blocks_stop_at_the_caps():
    many = png()[:33] + _png_chunk(b"tEXt", b"Comment\x00hi") * 30_000 + png()[33:]
    assert_quick_and_clear(many, seconds=2.0)
    assert any("more than 20000 chunks" in p for p in scan(many).problems)
    blocks = png()[:33] + _png_chunk(b"tEXt", b"parameters\x00Steps: 1, Seed: 1") * 200 + png()[33:]
    report = read_provenance(blocks)
    assert len(report.findings) == 1  # 64 kept, the same finding, reported once
    assert any("more than 64 metadata blocks" in n for n in report.notes)


def test_a_block_over_its_cap_is_skipped_with_a_note():
    big = markers.png_with_text({"parameters": "Steps: 1, Seed: 1 " + "x" * (2 << 20)})
    report = read_provenance(big)
    assert report.findings == [] and any("over the" in n for n in report.notes)
    small = read_provenance(big, ProvenanceSettings(limits=Limits(max_block_bytes=4 << 20)))
    assert len(small.findings) == 1


@pytest.mark.timeout(60)  # a walk that loops fails here, not after the suite's 600 s
def test_every_truncation_and_random_mutations_of_marker_files_never_raise():
    files = [
        markers.a1111_png(),
        markers.comfyui_png(),
        markers.image_with_xmp("JPEG", markers.xmp("trainedAlgorithmicMedia")),
        markers.image_with_xmp("WEBP", markers.xmp("digitalCapture")),
        markers.exif_image("JPEG", software="NovelAI", user_comment=markers.A1111),
    ]
    rng = np.random.default_rng(0)
    for data in files:
        for cut in range(0, len(data), max(1, len(data) // 300)):
            read_provenance(data[:cut])
        for _ in range(100):
            mutated = bytearray(data)
            for i in rng.integers(0, len(data), size=8):
                mutated[i] = int(rng.integers(0, 256))
            report = read_provenance(bytes(mutated))
            json.dumps(report.evidence, allow_nan=False).encode("utf-8")


def test_evidence_details_are_short_and_printable():
    tool = "Stable Diffusion \x00\x1b[31m" + "y" * 5000
    data = markers.png_with_text({"Software": tool})
    (found,) = evidence(data)
    assert all(len(v) <= 200 and v.isprintable() for v in found["detail"].values())


def test_a_large_photo_costs_little():
    """Camera-sized JPEG and PNG: the walk skips image data by its lengths (the best of 5
    runs, so that another process on the machine does not decide it)."""
    big_jpeg = encode(photo(2400, 1600), "JPEG", quality=90, xmp=markers.xmp("digitalCapture"))
    big_png = encode(photo(1200, 1200), "PNG")
    for data in (big_jpeg, big_png):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            read_provenance(data)
            best = min(best, time.perf_counter() - t0)
        assert best < 0.01, (len(data), best)


DEMO = Path(".cache/demo/set")


@pytest.mark.skipif(not (DEMO / "originals.csv").exists(), reason="no demo set (make demo)")
def test_untouched_real_photos_of_the_demo_set_carry_no_ai_evidence():
    """The demo set's originals, as their packages ship them (681 real: camera JPEGs with
    EXIF and XMP from Photoshop, GIMP, Bibble...): not one AI claim among the real ones."""
    rows = list(csv.DictReader((DEMO / "originals.csv").open()))
    real = [r for r in rows if r["label"] == "0"]
    assert len(real) > 600
    with_metadata = 0
    for row in real:
        data = (DEMO / row["path"]).read_bytes()
        report = read_provenance(data)
        assert report.decisive is None, row["path"]
        assert all(f.claim not in (AI_GENERATED, AI_COMPOSITE) for f in report.findings), row
        with_metadata += bool(scan(data).kept)
    assert with_metadata > 200  # the check read real metadata, not bare pixels
