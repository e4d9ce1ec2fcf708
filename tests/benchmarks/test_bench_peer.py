"""`dmguard bench --peer` (benchmarks/bench_peer.py): the subprocess protocol with a
fake peer interpreter, the missing-venv error, the ratio arithmetic, the timing
script's own arithmetic; then real runs: dmguard's runners on the tiny encoder, and a
short real comparison against sahu65 when `make peer` has built its venv."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_peer
from benchmarks.bench_peer import PeerError, peer_comparison, ratios, time_dmguard, time_peer
from tests.conftest import TINY, require_onnx_weights
from tests.images import photo

# A stand-in interpreter: records how it was started, then answers as a runner would.
# RESULTS maps a runner to what it prints; "fail" exits 3, "garbage" prints no JSON.
FAKE = """#!{python}
import json, os, sys
argv = sys.argv[1:]
with open({record!r}, "a") as f:
    f.write(json.dumps({{"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}}) + "\\n")
runner = argv[argv.index("--runner") + 1]
threads = int(argv[argv.index("--threads") + 1])
answer = {results!r}[runner]
if answer == "fail":
    sys.stderr.write("Traceback ...\\nImportError: boom\\n")
    sys.exit(3)
if answer == "garbage":
    print("loading... done")
    sys.exit(0)
print("some log line")
print(json.dumps({{"threads": threads, **answer}}))
"""

PEER = {"ips": 4.0, "ms_p50": 250.0, "load_s": 6.0, "version": "1.1.0"}
ONE = {"ips": 10.0, "ms_p50": 100.0, "load_s": 2.0, "version": "0.1.0"}
BATCHED = {"ips": 12.0, "ms_p50": 80.0, "load_s": 2.0, "best_batch": 4}


def fake_python(tmp_path: Path, **results) -> tuple[Path, Path]:
    """(the fake interpreter, the file where each start is recorded)."""
    record = tmp_path / "starts.jsonl"
    answers = {"sahu65": PEER, "dmguard-one": ONE, "dmguard-batched": BATCHED, **results}
    exe = tmp_path / "bin" / "python"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(FAKE.format(python=sys.executable, record=str(record), results=answers))
    exe.chmod(0o755)
    return exe, record


def starts(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.fixture
def images(tmp_path) -> list[Path]:
    out = []
    for i in range(3):
        path = tmp_path / f"img{i}.jpg"
        photo(160, 120, seed=i).save(path, "JPEG", quality=90)
        out.append(path)
    return out


# ------------------------------------------------------------------ the protocol (fakes)
def test_time_peer_runs_the_script_in_the_peer_interpreter_isolated(tmp_path, images, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", "/somewhere/else")  # a sahu65 setting: must not leak in
    monkeypatch.setenv("DMGUARD_REGISTRY", "/elsewhere")
    exe, record = fake_python(tmp_path)
    result = time_peer(exe, images, threads=2, repeats=1)
    assert result == {"threads": 2, **PEER}
    (start,) = starts(record)
    assert start["argv"] == [
        "-I",
        str(bench_peer.TIMING_SCRIPT),
        "--runner",
        "sahu65",
        "--threads",
        "2",
        "--repeats",
        "1",
        *(str(p.resolve()) for p in images),
    ]
    env = start["env"]
    assert env["ORT_INTRA_THREADS"] == "2" and env["OMP_NUM_THREADS"] == "2"
    assert "MODEL_DIR" not in env and "DMGUARD_REGISTRY" not in env
    cwd = Path(start["cwd"])  # a fresh folder (sahu65 reads .env from its working directory)
    assert cwd != Path.cwd() and not cwd.exists()
    assert env["HOME"] == str(cwd)


def test_a_missing_peer_venv_says_run_make_peer(tmp_path, images):
    missing = tmp_path / ".cache" / "peer" / "venv" / "bin" / "python"
    with pytest.raises(PeerError, match=r"run `make peer`"):
        time_peer(missing, images)
    dm, record = fake_python(tmp_path)
    with pytest.raises(PeerError, match=r"run `make peer`"):
        peer_comparison(images, missing, "onnx:x.onnx", dmguard_python=dm)
    assert not record.exists()  # nothing timed before the peer is found missing


@pytest.mark.parametrize(
    "answer, message",
    [
        ("fail", r"(?s)exit 3.*ImportError: boom"),
        ("garbage", r"no JSON object.*loading\.\.\. done"),
    ],
)
def test_a_failed_or_unreadable_run_is_a_peer_error(tmp_path, images, answer, message):
    exe, _ = fake_python(tmp_path, sahu65=answer)
    with pytest.raises(PeerError, match=message):
        time_peer(exe, images, threads=2)


def test_a_run_on_other_threads_than_asked_is_a_peer_error(tmp_path, images):
    exe, _ = fake_python(tmp_path)
    exe.write_text(exe.read_text().replace('{"threads": threads,', '{"threads": threads + 1,'))
    with pytest.raises(PeerError, match=r"reports 3 threads, not the 2 asked"):
        time_peer(exe, images, threads=2)


def test_missing_images_are_refused_before_any_run(tmp_path, images):
    exe, record = fake_python(tmp_path)
    with pytest.raises(PeerError, match="not found"):
        time_peer(exe, [*images, tmp_path / "nope.jpg"])
    with pytest.raises(PeerError, match="no image files"):
        time_peer(exe, [])
    assert not record.exists()


def test_dmguard_runs_get_the_encoder_with_an_absolute_path_and_this_checkout(tmp_path, images):
    exe, record = fake_python(tmp_path)
    time_dmguard(images, "onnx:models/w.onnx", python=exe, threads=2)
    time_dmguard(images, TINY, python=exe, threads=2, batched=True, batches=(1, 4))
    one, batched = starts(record)
    a = one["argv"]
    assert a[a.index("--runner") + 1] == "dmguard-one"
    assert a[a.index("--encoder") + 1] == f"onnx:{(Path.cwd() / 'models/w.onnx').resolve()}"
    assert a[a.index("--import-root") + 1] == str(bench_peer.REPO)
    assert "--batches" not in a
    b = batched["argv"]
    assert b[b.index("--runner") + 1] == "dmguard-batched"
    assert b[b.index("--encoder") + 1] == TINY  # not a path: unchanged
    assert b[b.index("--batches") + 1] == "1,4"
    assert one["env"] == {**batched["env"], "HOME": one["env"]["HOME"]}  # the same environment


def test_peer_comparison_runs_all_three_on_the_same_files_and_threads(tmp_path, images):
    exe, record = fake_python(tmp_path)
    result = peer_comparison(images, exe, TINY, threads=2, repeats=1, dmguard_python=exe)
    runs = starts(record)
    assert [r["argv"][r["argv"].index("--runner") + 1] for r in runs] == [
        "sahu65",
        "dmguard-one",
        "dmguard-batched",
    ]
    for r in runs:
        a = r["argv"]
        assert a[-3:] == [str(p.resolve()) for p in images]
        assert a[a.index("--threads") + 1] == "2" and a[a.index("--repeats") + 1] == "1"
        assert r["env"]["ORT_INTRA_THREADS"] == "2"
    assert result["threads"] == 2 and result["images"] == 3 and result["device"] == "cpu"
    assert result["peer"]["version"] == "1.1.0" and result["dmguard_batched"]["best_batch"] == 4
    assert result["ratios"] == ratios(PEER, ONE, BATCHED)
    assert result["ratios"]["one_vs_peer_ips"] == 2.5


def test_ratio_arithmetic():
    r = ratios(PEER, ONE, BATCHED)
    assert r == {
        "one_vs_peer_ips": 2.5,  # 10 / 4 images/s: dmguard one at a time 2.5x the peer
        "batched_vs_peer_ips": 3.0,  # 12 / 4
        "batched_vs_one_ips": 1.2,  # 12 / 10
        "peer_vs_one_ms_p50": 2.5,  # 250 ms / 100 ms
        "peer_vs_batched_ms_p50": 3.125,  # 250 / 80
        "peer_vs_dmguard_load": 3.0,  # 6 s / 2 s
    }
    slow = ratios({**PEER, "ips": 3.0}, ONE, BATCHED)
    assert slow["one_vs_peer_ips"] == 3.333  # rounded to 3 decimals
    assert ratios({**PEER, "ips": 0.0}, ONE, BATCHED)["one_vs_peer_ips"] is None


# ------------------------------------------------------------------ the timing script's arithmetic
def _timing_module():
    spec = importlib.util.spec_from_file_location("peer_timing", bench_peer.TIMING_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_timing_script_percentile_matches_numpy():
    pt = _timing_module()
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 10, 31):
        xs = list(rng.random(n) * 100)
        for q in (0.5, 0.9):
            assert pt._percentile(xs, q) == pytest.approx(np.percentile(xs, 100 * q))


def test_the_timing_loop_counts_images_per_call_and_skips_the_warm_up():
    pt = _timing_module()
    called: list[str] = []

    def call(name: str, seconds: float):
        return lambda: (called.append(name), time.sleep(seconds))

    out = pt._timed([("a", 1, call("a", 0.01)), ("b", 4, call("b", 0.04))], repeats=2)
    assert called == ["a", "a", "b", "a", "b"]  # one warm-up call of the first, then 2 passes
    assert out["images_timed"] == 10  # (1 + 4) images x 2 passes
    assert set(out["per_file_ms"]) == {"a", "b"}
    assert 9 <= out["per_file_ms"]["b"] < 30  # 40 ms for 4 images: ~10 ms an image
    assert out["ips"] == pytest.approx(10 / 0.1, rel=0.5)


# ------------------------------------------------------------------ real runs
@pytest.mark.slow
def test_dmguard_runners_for_real_on_the_tiny_encoder(images):
    one = time_dmguard(images, TINY, threads=1, repeats=1)
    batched = time_dmguard(images, TINY, batched=True, batches=(1, 3), threads=1, repeats=1)
    for r in (one, batched):
        assert r["threads"] == 1 and r["torch_threads"] == 1 and r["files"] == 3
        assert r["ips"] > 0 and 0 < r["ms_p50"] <= r["ms_p90"] and r["load_s"] > 0
    assert one["images_timed"] == 3 and set(one["per_file_ms"]) == {p.name for p in images}
    assert batched["best_batch"] in (1, 3) and set(batched["batch_sweep"]) == {"1", "3"}
    assert batched["images_timed"] == 3


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.skipif(
    not bench_peer.DEFAULT_PEER_PYTHON.is_file(),
    reason="the peer detector's venv (.cache/peer/venv) is not built: run `make peer` "
    "(optional, not built by `make test`)",
)
def test_a_real_comparison_with_sahu65_on_three_images(images):
    weights = require_onnx_weights()
    result = peer_comparison(images, None, f"onnx:{weights}", threads=1, repeats=1, batches=(1, 3))
    peer = result["peer"]
    assert peer["version"] == "1.1.0" and peer["onnxruntime"].startswith("1.22.")
    assert peer["per_image_work"]["explain"] is False and peer["per_image_work"]["tta"] is False
    for side in ("peer", "dmguard_one", "dmguard_batched"):
        r = result[side]
        assert r["ips"] > 0 and r["ms_p50"] > 0 and r["load_s"] > 0 and r["model_ms"] > 0
    assert set(peer["per_file_ms"]) == {p.name for p in images}
    ratio = result["dmguard_one"]["ips"] / peer["ips"]  # of the rounded images/s
    assert result["ratios"]["one_vs_peer_ips"] == pytest.approx(ratio, rel=0.01)


# ------------------------------------------------------------------ wired into `dmguard bench`
def test_bench_peer_without_the_venv_fails_before_measuring_anything(tmp_path, capsys):
    from dmguard import main

    started = time.perf_counter()
    missing = tmp_path / "no-venv" / "bin" / "python"
    code = main(["bench", "--peer", "--peer-python", str(missing), "--encoder", TINY])
    assert code != 0
    assert "run `make peer`" in capsys.readouterr().err
    assert time.perf_counter() - started < 30  # refused up front, not after (a)-(c)


def test_peer_files_follow_the_mix_and_leave_out_what_the_peer_refuses(tmp_path):
    from benchmarks import bench_uploads
    from dmguard import build_parser
    from dmguard.bench import peer_files

    def chosen(n: int) -> tuple[list[Path], dict]:
        args = build_parser().parse_args(
            [
                "bench",
                "--mix",
                "uploads",
                "--mix-scale",
                "0.02",
                "--mix-cache",
                str(tmp_path / "mix"),
                "--peer-files",
                str(n),
            ]
        )
        return peer_files(args, tmp_path)

    mix = bench_uploads.load_mix(tmp_path / "mix", scale=0.02, log=lambda _: None)
    peer_takes = {
        "camera_12mp_jpeg",
        "camera_8mp_jpeg",
        "thumbnail_jpeg",
        "screenshot_png",
        "photo_webp",
    }
    expected = []  # an independent walk: records' order, distinct, readable by both
    for i in range(len(mix.order)):
        e = mix.entry(i)
        if e.kind in peer_takes and mix.folder / e.file not in expected:
            expected.append(mix.folder / e.file)
    assert len(expected) == 100 - 3 - 10 - 7  # all but the broken, AVIF and GIF files
    left_out = {
        "camera_avif": "the peer does not take AVIF",
        "animated_gif": "the peer does not take GIF",
    }
    assert chosen(8) == (expected[:8], left_out)
    assert chosen(1000)[0] == expected  # all of them, none twice


def test_peer_files_of_the_jpeg_mix_are_the_bench_jpegs(tmp_path):
    from benchmarks.harness import bench_jpegs
    from dmguard import build_parser
    from dmguard.bench import peer_files

    args = build_parser().parse_args(["bench", "--size", "64x48", "--peer-files", "3"])
    files, left_out = peer_files(args, tmp_path)
    assert [f.read_bytes() for f in files] == bench_jpegs(3, (64, 48))
    assert left_out == {}


def test_a_failed_peer_run_keeps_what_was_measured_and_exits_1(tmp_path, monkeypatch, capsys):
    from benchmarks import bench
    from dmguard import main

    exe, _ = fake_python(tmp_path)
    monkeypatch.setattr(bench, "run_bench", lambda **_: {"raw_ips": 17.5})

    def refused(*_a, **_k):
        raise PeerError("the sahu65 timing run failed (exit 1): boom")

    monkeypatch.setattr(bench_peer, "peer_comparison", refused)
    argv = ["bench", "--json", "--peer", "--peer-python", str(exe), "--size", "64x48"]
    assert main([*argv, "--encoder", TINY]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["raw_ips"] == 17.5
    assert out["peer"] == {"error": "the sahu65 timing run failed (exit 1): boom", "left_out": {}}
