"""C2PA manifests through services.provenance: signed in the test by a certificate
authority the test makes with `openssl` (and one by a CA nobody trusts), validated by
c2pa-python (the `provenance` extra). Skipped without c2pa-python or openssl, except
under CI, where that fails."""

from __future__ import annotations

import pytest

from services.provenance import (
    AI_GENERATED,
    CAPTURE,
    UNREADABLE,
    Limits,
    ProvenanceSettings,
    c2pa_manifest,
    read_provenance,
)
from tests import markers
from tests.certificates import openssl_available
from tests.conftest import _skip_or_fail
from tests.images import encode, jpeg, photo


@pytest.fixture(autouse=True, scope="module")
def _c2pa_and_openssl():
    """`make install` installs the provenance extra: under CI its absence fails."""
    if not c2pa_manifest.available():
        _skip_or_fail("c2pa-python is not installed (the `provenance` extra)")
    if not openssl_available():
        _skip_or_fail("no openssl to make the test's certificates")


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    root = tmp_path_factory.mktemp("c2pa")
    return {
        "trusted": markers.make_ca(root / "trusted", "dmguard test"),
        "stranger": markers.make_ca(root / "stranger", "nobody we know"),
    }


@pytest.fixture(scope="module")
def trusted(cas):
    return ProvenanceSettings(trust_anchors=cas["trusted"]["ca"].read_text())


@pytest.mark.parametrize("fmt, mime", [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_a_manifest_from_a_trusted_ca_is_verified_and_decides(cas, trusted, fmt, mime):
    data = markers.c2pa_signed(encode(photo(96, 96), fmt), mime, cas["trusted"])
    report = read_provenance(data, trusted)
    (found,) = report.findings
    assert found.kind == "c2pa" and found.claim == AI_GENERATED and found.verified
    assert found.detail["validation"] == "Trusted"
    assert found.detail["source_type"] == "trainedAlgorithmicMedia"
    assert found.detail["signer"] == "dmguard test signer (dmguard test)"
    assert found.detail["generator"] == "dmguard-test-generator 1.0"
    assert report.decisive is found


def test_without_trust_anchors_a_sound_signature_is_not_verified(cas):
    data = markers.c2pa_signed(jpeg(), "image/jpeg", cas["trusted"])
    (found,) = read_provenance(data).findings
    assert found.detail["validation"] == "Valid" and not found.verified
    assert found.claim == AI_GENERATED  # still a declared AI marker: it decides, unverified


def test_a_manifest_signed_by_an_untrusted_key_is_reported_unverified(cas, trusted):
    data = markers.c2pa_signed(jpeg(), "image/jpeg", cas["stranger"])
    (found,) = read_provenance(data, trusted).findings
    assert not found.verified and found.detail["validation"] == "Valid"
    assert found.detail["problem"] == "signingCredential.untrusted"
    assert found.detail["signer"] == "nobody we know signer (nobody we know)"


def test_a_validated_capture_manifest_is_evidence_of_a_capture(cas, trusted):
    data = markers.c2pa_signed(jpeg(), "image/jpeg", cas["trusted"], source_type="digitalCapture")
    report = read_provenance(data, trusted)
    (found,) = report.findings
    assert found.claim == CAPTURE and found.verified
    assert report.decisive is None  # a capture never lowers a score or changes a verdict


def test_pixels_changed_after_signing_make_the_manifest_invalid(cas, trusted):
    data = bytearray(markers.c2pa_signed(jpeg(), "image/jpeg", cas["trusted"]))
    data[-200] ^= 0xFF  # in the scan data, after the manifest
    (found,) = read_provenance(bytes(data), trusted).findings
    assert found.detail["validation"] == "Invalid" and not found.verified
    assert found.detail["problem"]


def test_broken_and_oversized_manifest_stores_are_unreadable_not_raised(cas, trusted):
    data = markers.c2pa_signed(jpeg(), "image/jpeg", cas["trusted"])
    start = data.find(b"\xff\xeb")  # the first APP11 (JUMBF) segment
    garbled = bytearray(data)
    garbled[start + 40 : start + 400] = bytes(360)  # the manifest store's boxes zeroed
    (found,) = read_provenance(bytes(garbled), trusted).findings
    assert found.kind == "c2pa" and found.claim == UNREADABLE and not found.verified
    assert found.detail["problem"].startswith("_C2paVerify")
    cut = read_provenance(data[: start + 300], trusted)  # the store cut mid-segment
    assert cut.findings == [] and "runs past the end" in cut.notes[0]
    capped = ProvenanceSettings(limits=Limits(max_c2pa_bytes=1000))
    (found,) = read_provenance(data, capped).findings
    assert found.claim == UNREADABLE and "over the 1000-byte cap" in found.detail["problem"]


def test_without_c2pa_python_a_manifest_is_reported_not_checked(cas, monkeypatch):
    import builtins

    data = markers.c2pa_signed(jpeg(), "image/jpeg", cas["trusted"])
    real_import = builtins.__import__

    def no_c2pa(name, *args, **kw):
        if name == "c2pa":
            raise ImportError("no c2pa")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_c2pa)
    (found,) = read_provenance(data).findings
    assert found.kind == "c2pa" and not found.verified
    assert "not installed" in found.detail["validation"]
