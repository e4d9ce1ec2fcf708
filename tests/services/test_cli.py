"""The command line as a user runs it: subprocesses of `dmguard`."""

import json
import signal
import subprocess
import sys
import time

import pytest

from services.broker import EmbeddedBroker, free_port, kafka_answers
from services.cli import _produce_lines, build_parser
from tests.conftest import ONNX_WEIGHTS, TINY
from tests.images import encode, jpeg, photo

COMMANDS = ["broker", "topics", "serve", "produce", "tail", "score", "init-head", "models",
            "train", "eval", "retrain", "demo", "bench"]  # fmt: skip


def dmguard(*args, env=None, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    # argparse exits 0 from --help; the parser is what the console script runs
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0


def test_produce_turns_bare_urls_into_records_and_passes_json_through():
    lines = ["http://a/x.jpg\n", "\n", '{"id": "k", "url": "http://b"}\n', "{broken\n"]
    out = _produce_lines(lines, "t")
    assert len(out) == 3
    key, value = out[0]
    rec = json.loads(value)
    assert rec["url"] == "http://a/x.jpg" and key.decode() == rec["id"]
    assert out[1] == (b"k", b'{"id": "k", "url": "http://b"}')
    assert out[2] == (None, b"{broken")  # the service dead-letters it, with its bytes


@pytest.mark.broker
def test_broker_command_prints_ready_and_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline().strip()
        assert line == f"ready 127.0.0.1:{port}"
        assert kafka_answers(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        time.sleep(0.5)
        assert not kafka_answers(f"127.0.0.1:{port}", timeout_s=1)  # the Tansu child went too
    finally:
        proc.kill()


@pytest.mark.broker
def test_topics_produce_tail_round_trip(broker, tmp_path):
    env_args = ["--bootstrap", broker.bootstrap]
    first = dmguard("topics", *env_args)
    assert first.returncode == 0 and first.stdout.count("created") == 4
    again = dmguard("topics", *env_args)
    assert again.returncode == 0 and again.stdout.count("exists") == 4
    src = tmp_path / "in.txt"
    src.write_text("http://h/1.jpg\nhttp://h/2.jpg\n")
    assert dmguard("produce", *env_args, str(src)).returncode == 0
    tail = dmguard("tail", *env_args, "--topic", "dmguard.images", "--from-beginning", "--max", "2")
    urls = sorted(json.loads(line)["url"] for line in tail.stdout.splitlines())
    assert urls == ["http://h/1.jpg", "http://h/2.jpg"]


def test_serve_without_a_head_says_how_to_get_one(tmp_path):
    with EmbeddedBroker() as b:
        done = dmguard("serve", "--bootstrap", b.bootstrap, "--registry", str(tmp_path / "empty"))
    assert done.returncode == 1
    assert "dmguard train" in done.stderr


def test_score_files_with_a_registered_head(tmp_path):
    reg = tmp_path / "reg"
    assert dmguard("init-head", "--registry", str(reg), "--encoder", TINY).returncode == 0
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "b.png").write_bytes(encode(photo(50, 80), "PNG"))
    (tmp_path / "c.txt").write_text("hello")
    done = dmguard(
        "score",
        "--registry",
        str(reg),
        str(tmp_path / "a.jpg"),
        str(tmp_path / "b.png"),
        str(tmp_path / "c.txt"),
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1  # one input failed
    assert [line.get("head_version") for line in lines[:2]] == ["v1", "v1"]
    assert all(0 <= line["score"] <= 1 for line in lines[:2])
    assert lines[2]["error"]["code"] == "not_an_image"


@pytest.mark.weights
@pytest.mark.skipif(
    not ONNX_WEIGHTS.exists(), reason="offline CLIP weights not fetched (make models)"
)
def test_score_with_the_real_clip_weights(tmp_path):
    reg = tmp_path / "reg"
    assert (
        dmguard("init-head", "--registry", str(reg), "--encoder", f"onnx:{ONNX_WEIGHTS}").returncode
        == 0
    )
    (tmp_path / "a.jpg").write_bytes(jpeg(640, 480))
    done = dmguard("score", "--registry", str(reg), str(tmp_path / "a.jpg"))
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["encoder"] == f"onnx:{ONNX_WEIGHTS}" and 0 <= verdict["score"] <= 1
