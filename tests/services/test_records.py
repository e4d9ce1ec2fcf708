import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.errors import RecordError
from services.records import (
    MAX_DEAD_LETTER_RECORD_BYTES,
    MAX_OUTPUT_BYTES,
    DeadLetter,
    ImageRecord,
    LabelRecord,
    Source,
    Verdict,
    best_effort_id,
)


@pytest.mark.parametrize(
    "record",
    [
        ImageRecord(id="a", url="https://example.com/x.jpg"),
        ImageRecord(
            id="é" * 256, url="http://h/p?q=1", text="a cat", meta={"user": 7, "tags": ["x"]}
        ),
    ],
)
def test_image_record_round_trip(record):
    assert ImageRecord.from_bytes(record.to_bytes()) == record


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "null"),
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"url": "http://h/x"}', "'id'"),
        (b'{"id": 5, "url": "http://h/x"}', "'id'"),
        (b'{"id": "", "url": "http://h/x"}', "1..256"),
        (json.dumps({"id": "x" * 257, "url": "http://h/x"}).encode(), "1..256"),
        (b'{"id": "a"}', "'url'"),
        (b'{"id": "a", "url": ["http://h"]}', "'url'"),
        (json.dumps({"id": "a", "url": "http://h/" + "x" * 9000}).encode(), "more than"),
        (b'{"id": "a", "url": "http://h", "text": 3}', "'text'"),
        (b'{"id": "a", "url": "http://h", "meta": "m"}', "'meta'"),
        (json.dumps({"id": "a", "url": "http://h", "meta": {"k": "v" * 20000}}).encode(), "'meta'"),
        (b"[" * 100000, "not JSON"),
        # Python's parser accepts these; strict JSON (and every output) does not
        (b'{"id": "a", "url": "http://h", "meta": {"x": NaN}}', "NaN is not JSON"),
        (b'{"id": "a", "url": "http://h", "meta": {"x": -Infinity}}', "-Infinity is not JSON"),
        (b'{"id": "a", "url": "http://h", "n": Infinity}', "Infinity is not JSON"),
        # lone surrogates: valid JSON escapes that no UTF-8 encoder can write back
        (b'{"id":"\\ud800","url":5}', "'id' holds a lone surrogate"),
        (b'{"id": "a\\udfff", "url": "http://h"}', "'id' holds a lone surrogate"),
        (b'{"id": "a", "url": "http://h/\\ud83d"}', "'url' holds a lone surrogate"),
        (b'{"id": "a", "url": "http://h", "text": "\\udc00"}', "'text' holds a lone surrogate"),
        (b'{"id": "a", "url": "http://h", "meta": {"k": "\\ud800"}}', "'meta' holds a lone"),
        (b'{"id": "a", "url": "http://h", "meta": {"\\ud800": 1}}', "'meta' holds a lone"),
        (b'{"id": "a", "url": "http://h", "meta": {"k": ["\\udbff"]}}', "'meta' holds a lone"),
    ],
)
def test_bad_records_are_refused_with_a_reason(value, reason):
    with pytest.raises(RecordError) as err:
        ImageRecord.from_bytes(value)
    assert reason in str(err.value)
    assert err.value.code == "bad_record"


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parser_never_raises_anything_but_record_error_on_bytes(value):
    try:
        rec = ImageRecord.from_bytes(value)
    except RecordError:
        return
    assert isinstance(rec.id, str) and 1 <= len(rec.id) <= 256


json_values = st.recursive(
    # NaN, infinities and lone surrogates included: they must come out as bad_record
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "x\udfffy", "\udbff\udbff"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "url", "text", "meta", "other", "\udc80"]), json_values, max_size=5
    )
)
def test_parser_on_json_objects_returns_a_record_or_bad_record(obj):
    """Exactly one outcome, and an accepted record always makes a strict-JSON verdict."""
    value = json.dumps(obj).encode()  # ensure_ascii: surrogates travel as \\udXXX escapes
    try:
        rec = ImageRecord.from_bytes(value)
    except RecordError as exc:
        assert exc.code == "bad_record"
        letter = DeadLetter("bad_record", str(exc), value, Source("t", 0, 0), best_effort_id(value))
        strict_json(letter.to_bytes())
        return
    assert rec.id == obj["id"] and rec.url == obj["url"]
    verdict = Verdict.build(
        rec, score=0.5, threshold=0.5, encoder="e", head_version="v1", record_ts_ms=None
    )
    assert strict_json(verdict.to_bytes()).get("meta") == obj.get("meta")  # "meta"?: optional


def strict_json(value: bytes) -> dict:
    """Parse as a strict consumer would: UTF-8, no NaN/Infinity."""

    def refuse(name):
        raise AssertionError(f"{name} in an output")

    return json.loads(value.decode("utf-8"), parse_constant=refuse)


def test_verdict_fields_and_clamping():
    rec = ImageRecord(id="i", url="http://h/x", meta={"m": 1})
    v = Verdict.build(
        rec, score=1.2, threshold=0.7, encoder="e", head_version="v3", record_ts_ms=None
    )
    d = json.loads(v.to_bytes())
    assert set(d) == {
        "id",
        "url",
        "score",
        "verdict",
        "threshold",
        "encoder",
        "head_version",
        "latency_ms",
        "meta",
        "ts",
        "probability",
        "uncertain_from",
        "evidence",
        "decided_by",
    }
    assert d["evidence"] == [] and d["decided_by"] == "model"  # written when nothing was found
    assert d["score"] == 1.0 and d["verdict"] == "generated" and d["head_version"] == "v3"
    assert d["probability"] is None and d["uncertain_from"] is None  # written, as null
    low = Verdict.build(
        rec, score=0.69, threshold=0.7, encoder="e", head_version="v3", record_ts_ms=None
    )
    assert low.verdict == "real"
    with pytest.raises(ValueError):
        Verdict.build(
            rec, score=float("nan"), threshold=0.5, encoder="e", head_version="v", record_ts_ms=None
        )


def test_verdict_with_calibration_and_abstain_band():
    rec = ImageRecord(id="i", url="http://h/x")
    common = dict(threshold=0.7, encoder="e", head_version="v3", record_ts_ms=None)
    v = Verdict.build(
        rec, score=0.6, verdict="uncertain", probability=0.41234567, uncertain_from=0.5, **common
    )
    d = strict_json(v.to_bytes())
    assert "meta" not in d  # still omitted when the record has none
    assert d["verdict"] == "uncertain"
    assert d["score"] == 0.6 and d["threshold"] == 0.7  # raw score, the generated cut
    assert d["probability"] == 0.412346 and d["uncertain_from"] == 0.5
    for verdict in ("real", "generated"):
        d = strict_json(
            Verdict.build(
                rec, score=0.6, verdict=verdict, probability=0.5, uncertain_from=0.5, **common
            ).to_bytes()
        )
        assert d["verdict"] == verdict
    bad = [
        (dict(verdict="maybe"), "verdict must be one of"),
        (dict(verdict="uncertain"), "needs the head's uncertain_from"),
        (dict(probability=float("nan")), "probability"),
        (dict(probability=1.5), "probability"),
        (dict(probability=-0.1), "probability"),
        (dict(decided_by="oracle"), "decided_by must be one of"),
        (dict(verdict="real", decided_by="provenance"), "provenance decides only"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            Verdict.build(rec, score=0.6, **common, **kwargs)


@pytest.mark.parametrize(
    "value, expect_record, expect_encoding",
    [
        (b'{"id": "x"}', '{"id": "x"}', None),
        (b"\xff\x00binary", base64.b64encode(b"\xff\x00binary").decode(), "base64"),
        (None, None, None),
    ],
)
def test_dead_letter_preserves_the_original_value(value, expect_record, expect_encoding):
    letter = DeadLetter(
        code="bad_record",
        message="m",
        value=value,
        source=Source("t", 2, 41),
        id=best_effort_id(value),
    )
    d = json.loads(letter.to_bytes())
    assert d["record"] == expect_record
    assert d.get("record_encoding") == expect_encoding
    assert d["error"] == {"code": "bad_record", "message": "m"}
    assert d["source"] == {"topic": "t", "partition": 2, "offset": 41}
    assert d.get("id") == ("x" if value == b'{"id": "x"}' else None)
    if expect_encoding:
        assert base64.b64decode(d["record"]) == value


@pytest.mark.parametrize(
    "value",
    [
        b"\x01" * (2 << 20),  # each byte a six-byte JSON escape
        b'"' * (2 << 20),
        bytes(range(256)) * 8192,  # not UTF-8: base64
        ("é" * (1 << 20)).encode(),  # cut inside a two-byte character
        b"{" + b"\\ud800" * 300000,
    ],
)
def test_a_dead_letter_always_fits_the_producer_and_names_the_whole_value(value):
    letter = DeadLetter("too_large", "m" * 10000, value, Source("t", 0, 5), "\ud800")
    out = letter.to_bytes()
    assert len(out) <= MAX_OUTPUT_BYTES
    d = strict_json(out)
    assert d["record_bytes"] == len(value)
    assert d["record_sha256"] == hashlib.sha256(value).hexdigest()
    assert d["record_truncated"] is True
    kept = base64.b64decode(d["record"]) if d.get("record_encoding") else d["record"].encode()
    assert value.startswith(kept) and 0 < len(kept) <= MAX_DEAD_LETTER_RECORD_BYTES
    assert "id" not in d  # a lone surrogate cannot be written: left out, not a crash
    assert len(d["error"]["message"]) == 2000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.text(max_size=300))
def test_dead_letters_are_strict_json_whatever_the_value_and_message(value, message):
    d = strict_json(DeadLetter("internal", message, value, Source("t", 1, 2)).to_bytes())
    kept = base64.b64decode(d["record"]) if d.get("record_encoding") else d["record"].encode()
    assert kept == value and d["record_truncated"] is False


@pytest.mark.parametrize(
    "raw, label", [(1, "generated"), ("real", "real"), (0, "real"), ("generated", "generated")]
)
def test_label_records(raw, label):
    assert LabelRecord.from_bytes(json.dumps({"id": "a", "label": raw}).encode()).label == label
    with pytest.raises(RecordError):
        LabelRecord.from_bytes(b'{"id": "a", "label": "maybe"}')


def test_message_key_is_the_id_of_a_json_object_else_none():
    from services.records import message_key

    assert message_key(b'{"id": "a1", "url": "u"}') == b"a1"
    assert message_key('{"id": "a1"}') == b"a1"
    for value in (
        b"{not json",
        b'["id"]',
        b'{"id": 7}',
        b"\xff\xfe",
        '{"id": "\\ud800"}',
        b"[" * 100_000,
    ):
        assert message_key(value) is None
