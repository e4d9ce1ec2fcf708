import json
import os
import pickle
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from tests.conftest import TINY
from training.errors import EncoderMismatchError, RegistryError
from training.model.head import HeadConfig, MLPHead
from training.model.registry import VERSION_RE, Registry, check_version


def test_head_architecture_matches_the_paper():
    head = MLPHead(HeadConfig(input_dim=16))
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "LeakyReLU", "Dropout"] * 3 + ["Linear"]
    assert head.net[2].negative_slope == 0.01 and head.net[3].p == 0.335
    assert head(torch.randn(5, 16)).shape == (5,)


def test_save_load_round_trip_and_meta(tmp_path):
    reg = Registry(tmp_path)
    torch.manual_seed(1)
    head = MLPHead(HeadConfig(input_dim=8))
    meta = reg.save(head, encoder=TINY, threshold=0.3, metrics={"auc": 0.9})
    assert meta.version == "v1" and reg.current() is None  # saving does not promote
    reg.promote("v1")
    loaded, m = reg.load()
    x = torch.randn(4, 8)
    assert torch.allclose(head.eval()(x), loaded(x))
    on_disk = json.loads((tmp_path / "heads" / "v1" / "meta.json").read_text())
    for field in (
        "version",
        "encoder",
        "input_dim",
        "uses_text",
        "threshold",
        "metrics",
        "trained_on",
        "created_at",
        "parent",
    ):
        assert field in on_disk
    assert m.threshold == 0.3 and m.metrics == {"auc": 0.9}


def test_loading_under_another_encoder_is_a_clear_error(tmp_path):
    reg = Registry(tmp_path)
    reg.promote(reg.save(MLPHead(HeadConfig(input_dim=8)), encoder=TINY).version)
    with pytest.raises(EncoderMismatchError, match="trained on encoder"):
        reg.load(encoder="onnx:/elsewhere.onnx")
    assert reg.load(encoder=TINY)[1].version == "v1"


def test_empty_registry_says_how_to_get_a_head(tmp_path):
    with pytest.raises(RegistryError, match="dmguard train"):
        Registry(tmp_path).load()
    with pytest.raises(RegistryError, match="no head"):
        Registry(tmp_path).meta("v9")


def test_versions_are_unique_under_concurrent_saves(tmp_path):
    reg = Registry(tmp_path)
    out = []

    def save():
        out.append(reg.save(MLPHead(HeadConfig(input_dim=4)), encoder=TINY).version)

    threads = [threading.Thread(target=save) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 9)]
    assert reg.versions() == [f"v{i}" for i in range(1, 9)]


def test_current_is_replaced_atomically(tmp_path):
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.save(MLPHead(HeadConfig(input_dim=4)), encoder=TINY)
    reg.promote("v1")
    reg.promote("v2")
    assert reg.current() == "v2"
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".CURRENT")
    ] == []  # no temp files left
    with pytest.raises(RegistryError):
        reg.promote("v7")
    assert reg.current() == "v2"


# --- hardening: names, CURRENT, meta.json, head.pt, promotion record -------------------------


def _tiny_head(seed: int = 0, input_dim: int = 8) -> MLPHead:
    torch.manual_seed(seed)
    return MLPHead(HeadConfig(input_dim=input_dim))


def _two_promoted(tmp_path) -> Registry:
    """v1 and v2, both promoted in turn; CURRENT = v2."""
    reg = Registry(tmp_path)
    for seed in (1, 2):
        reg.promote(reg.save(_tiny_head(seed), encoder=TINY).version)
    return reg


def _current(data: bytes) -> Callable[[Registry], None]:
    return lambda reg: (reg.root / "CURRENT").write_bytes(data)


def _current_dir(reg: Registry) -> None:
    (reg.root / "CURRENT").unlink()
    (reg.root / "CURRENT").mkdir()


def _current_fifo(reg: Registry) -> None:
    (reg.root / "CURRENT").unlink()
    os.mkfifo(reg.root / "CURRENT")


def _no_current(reg: Registry) -> None:
    (reg.root / "CURRENT").unlink()


def _meta_v2(edit: Callable[[dict], Any]) -> Callable[[Registry], None]:
    def setup(reg: Registry) -> None:
        path = reg.heads / "v2" / "meta.json"
        d = json.loads(path.read_text())
        path.write_text(json.dumps(edit(d)))

    return setup


def _meta_v2_bytes(data: bytes) -> Callable[[Registry], None]:
    return lambda reg: (reg.heads / "v2" / "meta.json").write_bytes(data)


def _set(d: dict, **kw) -> dict:
    return {**d, **kw}


def _drop(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def _pt_v2_bytes(make: Callable[[bytes], bytes]) -> Callable[[Registry], None]:
    def setup(reg: Registry) -> None:
        path = reg.heads / "v2" / "head.pt"
        path.write_bytes(make(path.read_bytes()))

    return setup


def _pt_v2_blob(edit: Callable[[dict], Any]) -> Callable[[Registry], None]:
    def setup(reg: Registry) -> None:
        path = reg.heads / "v2" / "head.pt"
        torch.save(edit(torch.load(path, weights_only=True)), path)

    return setup


def _nan_weight(blob: dict) -> dict:
    blob["state_dict"]["net.0.weight"][0, 0] = float("nan")
    return blob


def _neg_var(blob: dict) -> dict:
    blob["state_dict"]["net.1.running_var"][0] = -1.0
    return blob


def _shapes_of_4(blob: dict) -> dict:  # config says 8, tensors are a width-4 head's
    return {"config": blob["config"], "state_dict": _tiny_head(0, input_dim=4).state_dict()}


def _drop_key(blob: dict) -> dict:
    del blob["state_dict"]["net.12.bias"]
    return blob


def _head_of_4(blob: dict) -> dict:  # a consistent head, but meta.json says input_dim 8
    h = _tiny_head(0, input_dim=4)
    return {"config": h.config.to_dict(), "state_dict": h.state_dict()}


def _huge_config(blob: dict) -> dict:
    return {**blob, "config": {**blob["config"], "blocks": 10**9}}


def _pt_v2_missing(reg: Registry) -> None:
    (reg.heads / "v2" / "head.pt").unlink()


def _pt_v2_dir(reg: Registry) -> None:
    (reg.heads / "v2" / "head.pt").unlink()
    (reg.heads / "v2" / "head.pt").mkdir()


def _corrupt_current_and_v2(reg: Registry) -> None:
    (reg.root / "CURRENT").write_bytes(b"\xff\xfe garbage")
    (reg.heads / "v2" / "head.pt").write_bytes(b"PK\x03\x04 not really a zip")


def _refused_v3(reg: Registry) -> None:  # saved, lost its promotion, never promoted
    reg.save(_tiny_head(3), encoder=TINY, extra={"promotion": {"promoted": False}})
    (reg.root / "CURRENT").write_bytes(b"../../x")


def _legacy_promoted(reg: Registry) -> None:
    """Heads promoted before the PROMOTED marker existed: only job.py's decision records it."""
    for v in ("v1", "v2"):
        (reg.heads / v / "PROMOTED").unlink()
    _meta_v2(lambda d: _set(d, promotion={"promoted": True}))(reg)
    (reg.root / "CURRENT").write_bytes(b"")


def _legacy_unmarked(reg: Registry) -> None:
    for v in ("v1", "v2"):
        (reg.heads / v / "PROMOTED").unlink()
    (reg.root / "CURRENT").write_bytes(b"v1/../v2")


@dataclass(frozen=True)
class State:
    """A damaged registry (`setup` applied to `_two_promoted`), what `call` gives (an error
    whose message matches `error`, else `value`) and which head a worker that must keep
    running serves: `load()`, and on RegistryError `last_good()` (None: nothing)."""

    setup: Callable[[Registry], None]
    call: str  # "current", "load", or "method:arg"
    error: str | None
    value: Any = None
    served: str | None = "v2"


def _do(reg: Registry, call: str):
    name, _, arg = call.partition(":")
    if name == "last_good":
        got = reg.last_good()
        return None if got is None else got[1].version
    result = getattr(reg, name)(arg) if arg else getattr(reg, name)()
    return result[1].version if name == "load" else result


def _serve(reg: Registry) -> str | None:
    try:
        return reg.load()[1].version
    except RegistryError:
        got = reg.last_good()
        return None if got is None else got[1].version


NOT_A_NAME = "not a version name"
BAD_NAME = "invalid head version"
STATES = {
    # CURRENT
    "current-dotdot": State(_current(b"../../x"), "current", NOT_A_NAME),
    "current-absolute": State(_current(b"/etc/passwd"), "current", NOT_A_NAME),
    "current-inner-dotdot": State(_current(b"v1/../v2"), "current", NOT_A_NAME),
    "current-empty": State(_current(b""), "current", "is empty"),
    "current-blank": State(_current(b"   \n"), "current", "is empty"),
    "current-not-utf8": State(_current(b"v\xff\xfe1"), "current", "not UTF-8"),
    "current-directory": State(_current_dir, "current", "is a directory"),
    "current-fifo": State(_current_fifo, "current", "not a regular file"),
    "current-missing-head": State(_current(b"v99\n"), "current", "no such head"),
    "current-leading-zero": State(_current(b"v01"), "current", NOT_A_NAME),
    "current-nul": State(_current(b"v1\x00"), "current", NOT_A_NAME),
    "current-two-lines": State(_current(b"v1\nv2\n"), "current", NOT_A_NAME),
    "current-huge": State(_current(b"v1" * 1000), "current", "longer than"),
    "current-padded-ok": State(_current(b"  v1 \n"), "current", None, "v1", "v1"),
    "current-absent": State(_no_current, "current", None, None, "v2"),
    "current-absent-load": State(_no_current, "load", "no head registered"),
    # meta.json of the serving head (v2): the worker falls back to v1
    "meta-not-json": State(_meta_v2_bytes(b"{not json"), "load", "corrupt", served="v1"),
    "meta-not-utf8": State(_meta_v2_bytes(b'{"a": "\xff"}'), "load", "corrupt", served="v1"),
    "meta-deep": State(_meta_v2_bytes(b"[" * 100_000), "load", "corrupt", served="v1"),
    "meta-list": State(_meta_v2(lambda d: [d]), "load", "not a JSON object", served="v1"),
    "meta-wrong-version": State(
        _meta_v2(lambda d: _set(d, version="v1")), "load", "not its folder", served="v1"
    ),
    "meta-threshold-nan": State(
        _meta_v2(lambda d: _set(d, threshold=float("nan"))), "load", "threshold", served="v1"
    ),
    "meta-threshold-big": State(
        _meta_v2(lambda d: _set(d, threshold=2.0)), "load", "threshold", served="v1"
    ),
    "meta-no-encoder": State(
        _meta_v2(lambda d: _drop(d, "encoder")), "load", "missing field", served="v1"
    ),
    "meta-input-dim-str": State(
        _meta_v2(lambda d: _set(d, input_dim="8")), "load", "input_dim", served="v1"
    ),
    "meta-input-dim-bool": State(
        _meta_v2(lambda d: _set(d, input_dim=True)), "load", "input_dim", served="v1"
    ),
    "meta-encoder-int": State(
        _meta_v2(lambda d: _set(d, encoder=7)), "load", "encoder", served="v1"
    ),
    "meta-calibration-list": State(
        _meta_v2(lambda d: _set(d, calibration=[1.0, 0.0])), "load", "calibration", served="v1"
    ),
    "meta-calibration-method": State(
        _meta_v2(lambda d: _set(d, calibration={"method": "magic", "a": 1.0, "b": 0.0})),
        "load",
        "unknown calibration method",
        served="v1",
    ),
    "meta-calibration-reverses-order": State(
        _meta_v2(lambda d: _set(d, calibration={"method": "platt", "a": -2.0, "b": 0.0})),
        "load",
        "order of scores",
        served="v1",
    ),
    "meta-calibration-nan": State(
        _meta_v2(lambda d: _set(d, calibration={"method": "platt", "a": 1.0, "b": float("nan")})),
        "load",
        "calibration",
        served="v1",
    ),
    "meta-uncertain-above-threshold": State(
        _meta_v2(lambda d: _set(d, threshold=0.5, uncertain_from=0.6)),
        "load",
        "uncertain_from",
        served="v1",
    ),
    "meta-uncertain-str": State(
        _meta_v2(lambda d: _set(d, uncertain_from="0.3")), "load", "uncertain_from", served="v1"
    ),
    "meta-uncertain-negative": State(
        _meta_v2(lambda d: _set(d, uncertain_from=-0.1)), "load", "uncertain_from", served="v1"
    ),
    "meta-legacy-no-calibration-fields": State(
        _meta_v2(lambda d: _drop(_drop(d, "calibration"), "uncertain_from")), "load", None, "v2"
    ),
    # head.pt of the serving head (v2): the worker falls back to v1
    "pt-truncated": State(_pt_v2_bytes(lambda b: b[: len(b) // 2]), "load", "corrupt", served="v1"),
    "pt-zero-bytes": State(_pt_v2_bytes(lambda b: b""), "load", "corrupt", served="v1"),
    "pt-random": State(
        _pt_v2_bytes(lambda b: random.Random(0).randbytes(len(b))), "load", "corrupt", served="v1"
    ),
    "pt-evil-pickle": State(
        _pt_v2_bytes(lambda b: pickle.dumps(os.system, protocol=2)), "load", "corrupt", served="v1"
    ),
    "pt-wrong-thing": State(_pt_v2_blob(lambda b: [1, 2, 3]), "load", "does not hold", served="v1"),
    "pt-shape-mismatch": State(_pt_v2_blob(_shapes_of_4), "load", "has shape", served="v1"),
    "pt-missing-key": State(_pt_v2_blob(_drop_key), "load", "keys do not match", served="v1"),
    "pt-nan-weights": State(_pt_v2_blob(_nan_weight), "load", "NaN", served="v1"),
    "pt-negative-var": State(_pt_v2_blob(_neg_var), "load", "negative variances", served="v1"),
    "pt-other-width": State(_pt_v2_blob(_head_of_4), "load", "disagree on input_dim", served="v1"),
    "pt-hostile-config": State(_pt_v2_blob(_huge_config), "load", "blocks", served="v1"),
    "pt-missing": State(_pt_v2_missing, "load", "no weights", served="v1"),
    "pt-directory": State(_pt_v2_dir, "load", "corrupt", served="v1"),
    # names given by callers
    "meta-dotdot": State(lambda reg: None, "meta:../heads/v1", BAD_NAME),
    "load-inner-dotdot": State(lambda reg: None, "load:v1/../v2", BAD_NAME),
    "promote-absolute": State(lambda reg: None, "promote:/etc/passwd", BAD_NAME),
    "promote-newline": State(lambda reg: None, "promote:v1\n", BAD_NAME),
    "promote-zero": State(lambda reg: None, "promote:v0", BAD_NAME),
    # the record of promotion, when CURRENT is broken
    "fallback-v2-corrupt": State(_corrupt_current_and_v2, "last_good", None, "v1", "v1"),
    "fallback-newest": State(_current(b"/etc/passwd"), "last_good", None, "v2", "v2"),
    "fallback-skips-refused": State(_refused_v3, "last_good", None, "v2", "v2"),
    "fallback-legacy-decision": State(_legacy_promoted, "last_good", None, "v2", "v2"),
    "fallback-legacy-unmarked": State(_legacy_unmarked, "last_good", None, None, None),
}


@pytest.mark.parametrize("case", STATES.values(), ids=STATES.keys())
def test_registry_states(tmp_path, case: State):
    reg = _two_promoted(tmp_path)
    case.setup(reg)
    if case.error is None:
        assert _do(reg, case.call) == case.value
    else:
        with pytest.raises(RegistryError, match=case.error) as info:
            _do(reg, case.call)
        assert type(info.value) is RegistryError  # not a subclass, not an OSError etc.
    assert _serve(reg) == case.served


def test_corpus_is_large_enough():
    assert len(STATES) >= 15


@pytest.mark.parametrize("name", ["v1", "v9", "v10", "v999999999"], ids=lambda n: n)
def test_valid_version_names(name):
    assert check_version(name) == name and VERSION_RE.fullmatch(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "v",
        "v0",
        "v01",
        "V1",
        "1",
        "v1\n",
        "v1 ",
        "v1\x00",
        "v1/x",
        "../v1",
        "/v1",
        "v1000000000",
        "v١",
        None,
        1,
    ],
    ids=repr,
)
def test_invalid_version_names(name):
    with pytest.raises(RegistryError, match=BAD_NAME):
        check_version(name)


def test_error_for_a_broken_current_says_how_to_fix_it(tmp_path):
    reg = _two_promoted(tmp_path)
    (tmp_path / "CURRENT").write_bytes(b"../../x")
    with pytest.raises(RegistryError) as info:
        reg.current()
    msg = str(info.value)
    assert "write a valid version into CURRENT" in msg and "retrain" in msg
    assert "v1, v2" in msg and str(tmp_path / "CURRENT") in msg


def test_promote_marks_before_pointing_and_refuses_a_broken_head(tmp_path):
    reg = Registry(tmp_path)
    for seed in (1, 2):
        reg.save(_tiny_head(seed), encoder=TINY)
    assert reg.promoted() == [] and not reg.is_promoted("v1")
    reg.promote("v1")
    assert (reg.heads / "v1" / "PROMOTED").is_file() and reg.promoted() == ["v1"]
    (reg.heads / "v2" / "head.pt").write_bytes(b"")
    with pytest.raises(RegistryError, match="corrupt"):
        reg.promote("v2")
    assert reg.current() == "v1" and not reg.is_promoted("v2")
    assert not (reg.heads / "v2" / "PROMOTED").exists()


def test_last_good_exclude_and_encoder(tmp_path):
    reg = _two_promoted(tmp_path)
    assert reg.last_good()[1].version == "v2"
    assert reg.last_good("v2")[1].version == "v1"
    assert reg.last_good(encoder="onnx:/elsewhere.onnx") is None
    assert Registry(tmp_path / "empty").last_good() is None


def test_save_refuses_what_it_could_not_load_back(tmp_path):
    reg = Registry(tmp_path)
    nan_head = _tiny_head()
    with torch.no_grad():
        nan_head.net[0].weight[0, 0] = float("inf")
    bad = [
        (dict(head=nan_head, encoder=TINY), "NaN or infinite"),
        (dict(head=_tiny_head(), encoder=TINY, threshold=float("nan")), "threshold"),
        (dict(head=_tiny_head(), encoder=TINY, threshold=1.5), "threshold"),
        (dict(head=_tiny_head(), encoder=""), "encoder"),
        (dict(head=_tiny_head(), encoder=TINY, extra={"version": "v7"}), "override"),
        (dict(head=_tiny_head(), encoder=TINY, metrics={"x": object()}), "not JSON"),
    ]
    for kwargs, match in bad:
        with pytest.raises(RegistryError, match=match):
            reg.save(**kwargs)
    assert not reg.heads.exists() or list(reg.heads.iterdir()) == []  # no version taken
    # the float just above 1.0 ("flag nothing") is what threshold_for_fpr gives on saturation
    edge = reg.save(
        _tiny_head(),
        encoder=TINY,
        threshold=float(
            torch.nextafter(
                torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
            )
        ),
    )
    assert reg.meta(edge.version).threshold > 1.0


def test_calibration_and_abstain_band_round_trip(tmp_path):
    from training.model.calibration import Calibration

    reg = Registry(tmp_path)
    cal = Calibration(a=0.8, b=-0.25)
    saved = reg.save(_tiny_head(), encoder=TINY, threshold=0.6, calibration=cal, uncertain_from=0.4)
    on_disk = json.loads((reg.heads / saved.version / "meta.json").read_text())
    assert on_disk["calibration"] == {"method": "platt", "a": 0.8, "b": -0.25}
    assert on_disk["uncertain_from"] == 0.4
    reg.promote(saved.version)
    _, meta = reg.load()
    assert meta.calibration == cal.to_dict() and meta.uncertain_from == 0.4
    assert Calibration.from_dict(meta.calibration) == cal
    assert meta.extra == {}  # real fields, not leftovers in extra
    # a dict works as well as a Calibration; without them both are None
    assert reg.save(_tiny_head(), encoder=TINY, calibration=cal.to_dict()).calibration == (
        cal.to_dict()
    )
    plain = reg.meta(reg.save(_tiny_head(), encoder=TINY).version)
    assert plain.calibration is None and plain.uncertain_from is None


def test_a_meta_json_from_before_calibration_loads(tmp_path):
    """Every head saved before these fields existed still loads, with both None."""
    reg = Registry(tmp_path)
    reg.promote(reg.save(_tiny_head(), encoder=TINY, threshold=0.3).version)
    path = reg.heads / "v1" / "meta.json"
    d = json.loads(path.read_text())
    old = {k: v for k, v in d.items() if k not in ("calibration", "uncertain_from")}
    path.write_text(json.dumps(old))
    _, meta = reg.load()
    assert meta.calibration is None and meta.uncertain_from is None and meta.threshold == 0.3
    assert "calibration" not in meta.extra and "uncertain_from" not in meta.extra


def test_save_refuses_a_malformed_calibration_or_band(tmp_path):
    reg = Registry(tmp_path)
    bad = [
        (dict(calibration={"method": "platt", "a": 0.0, "b": 0.0}), "order of scores"),
        (dict(calibration={"method": "platt", "a": 1.0}), "missing b"),
        (dict(calibration="platt"), "calibration"),
        (dict(threshold=0.5, uncertain_from=0.7), "uncertain_from"),
        (dict(uncertain_from=float("nan")), "uncertain_from"),
        (dict(uncertain_from="0.2"), "uncertain_from"),
        (dict(extra={"calibration": None}), "override"),
    ]
    for kwargs, match in bad:
        with pytest.raises(RegistryError, match=match):
            reg.save(_tiny_head(), encoder=TINY, **kwargs)
    assert not reg.heads.exists() or list(reg.heads.iterdir()) == []  # no version taken
    # the edge: a band up to the threshold itself (empty) and from 0 are valid
    assert reg.save(_tiny_head(), encoder=TINY, threshold=0.5, uncertain_from=0.5)
    assert reg.save(_tiny_head(), encoder=TINY, threshold=0.5, uncertain_from=0)


def test_versions_and_allocation_ignore_invalid_names(tmp_path):
    reg = Registry(tmp_path)
    reg.save(_tiny_head(), encoder=TINY)
    for junk in ("v01", "v0", "v0099", "v1 ", "x9"):
        (reg.heads / junk).mkdir()
        (reg.heads / junk / "meta.json").write_text("{}")
    assert reg.versions() == ["v1"]
    assert reg.save(_tiny_head(), encoder=TINY).version == "v2"


def test_a_reader_never_sees_a_partial_current(tmp_path):
    reg = Registry(tmp_path)
    for seed in (1, 2):
        reg.save(_tiny_head(seed), encoder=TINY)
    reg.promote("v1")
    stop = threading.Event()
    seen: dict[Any, int] = {}
    errors: list[BaseException] = []

    def poll():
        reader = Registry(tmp_path)
        while not stop.is_set():
            try:
                v = reader.current()
            except BaseException as exc:  # any failure is the bug
                errors.append(exc)
                return
            seen[v] = seen.get(v, 0) + 1

    t = threading.Thread(target=poll)
    t.start()
    try:
        for i in range(200):
            reg.promote("v2" if i % 2 == 0 else "v1")
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert set(seen) <= {"v1", "v2"} and sum(seen.values()) > 0
    assert reg.current() == "v1"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".CURRENT")] == []
