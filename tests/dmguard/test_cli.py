"""The command line as a user runs it: subprocesses of `dmguard`."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from dmguard import build_parser, heads, main
from dmguard.stream_io import messages_from_lines
from services.broker import EmbeddedBroker, free_port, kafka_answers
from services.poll import wait_until
from tests.conftest import TINY
from tests.images import encode, jpeg, photo

COMMANDS = [
    "broker",
    "topics",
    "serve",
    "produce",
    "tail",
    "score",
    "init-head",
    "models",
    "train",
    "eval",
    "retrain",
    "demo",
    "bench",
    "data",
    "soak",
    "dashboard",
]


def dmguard(*args, env=None, timeout=120, **kw):
    return subprocess.run(
        [sys.executable, "-m", "dmguard", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    # argparse exits 0 from --help; the parser is what the console script runs
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0


def test_produce_turns_bare_urls_into_records_and_passes_json_through():
    lines = ["http://a/x.jpg\n", "\n", '{"id": "k", "url": "http://b"}\n', "{broken\n"]
    out = messages_from_lines(lines)
    assert len(out) == 3
    key, value = out[0]
    rec = json.loads(value)
    assert rec["url"] == "http://a/x.jpg" and key.decode() == rec["id"]
    assert out[1] == (b"k", b'{"id": "k", "url": "http://b"}')
    assert out[2] == (None, b"{broken")  # the service dead-letters it, with its bytes


@pytest.mark.broker
@pytest.mark.parametrize("durable", [False, True])
def test_broker_command_prints_ready_and_stops_on_sigterm(durable, tmp_path):
    port = free_port()
    extra = ["--durable", str(tmp_path / "state")] if durable else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmguard", "broker", "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == f"ready 127.0.0.1:{port}"
        assert kafka_answers(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        # the Tansu child went too: within a deadline, not after a guessed pause
        wait_until(
            lambda: not kafka_answers(f"127.0.0.1:{port}", timeout_s=1),
            15,
            interval_s=0.2,
            what="the broker's child to stop answering",
        )
        if durable:  # its state is on disk, written on the way out
            assert (tmp_path / "state" / "kafka.json").is_file()
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
    piped = dmguard("produce", *env_args, "-", input='{"id": "p", "url": "http://h/3.jpg"}\n')
    assert piped.returncode == 0, piped.stderr  # `produce -` reads standard input
    tail = dmguard("tail", *env_args, "--topic", "dmguard.images", "--from-beginning", "--max", "3")
    urls = sorted(json.loads(line)["url"] for line in tail.stdout.splitlines())
    assert urls == ["http://h/1.jpg", "http://h/2.jpg", "http://h/3.jpg"]


@pytest.mark.broker
def test_serve_without_a_head_says_how_to_get_one(tmp_path):
    with EmbeddedBroker() as b:
        done = dmguard("serve", "--bootstrap", b.bootstrap, "--registry", str(tmp_path / "empty"))
    assert done.returncode == 1
    assert "dmguard train" in done.stderr


@pytest.mark.slow  # three CLI processes, each loading torch
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


@pytest.mark.slow  # three CLI processes, each loading torch
def test_score_a_url_gives_the_same_verdict_as_the_file(tmp_path, image_server):
    reg = tmp_path / "reg"
    assert dmguard("init-head", "--registry", str(reg), "--encoder", TINY).returncode == 0
    data = jpeg(90, 70, seed=3)
    image_server.routes["/a.jpg"] = data
    (tmp_path / "a.jpg").write_bytes(data)
    url = image_server.url("/a.jpg")
    refused = dmguard("score", "--registry", str(reg), url)  # loopback: refused by default
    assert json.loads(refused.stdout)["error"]["code"] == "blocked_url"
    done = dmguard(
        "score", "--registry", str(reg), "--allow-private-urls", url, str(tmp_path / "a.jpg")
    )
    by_url, by_file = (json.loads(line) for line in done.stdout.splitlines())
    assert done.returncode == 0 and by_url["url"] == url
    assert by_url["score"] == by_file["score"] and by_url["verdict"] == by_file["verdict"]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--loss", "bce"], {"loss": "bce"}),
        (["--target-fpr", "0.01"], {"target_fpr": 0.01}),
        (["--patience", "3"], {"patience": 3}),
        (["--seed", "11", "--epochs", "7"], {"seed": 11, "epochs": 7}),
        (["--modality-dropout", "0.25"], {"modality_dropout": 0.25}),
    ],
)
def test_training_flags_reach_the_training_config(flags, expected):
    from dmguard.train import train_config
    from training.learning.config import TrainConfig

    args = build_parser().parse_args(["train", "--data", "x", *flags])
    cfg = train_config(args)
    for field, value in expected.items():
        assert getattr(cfg, field) == value != getattr(TrainConfig(), field), field
    assert build_parser().parse_args(["train", "--data", "x", "--no-text"]).no_text is True


@pytest.mark.weights
def test_score_with_the_real_clip_weights(tmp_path, onnx_weights):
    reg = tmp_path / "reg"
    assert (
        dmguard("init-head", "--registry", str(reg), "--encoder", f"onnx:{onnx_weights}").returncode
        == 0
    )
    (tmp_path / "a.jpg").write_bytes(jpeg(640, 480))
    done = dmguard("score", "--registry", str(reg), str(tmp_path / "a.jpg"))
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["encoder"] == f"onnx:{onnx_weights}" and 0 <= verdict["score"] <= 1


# ------------------------------------------- known failures: one line, no traceback
def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, command: str) -> str:
    assert code != 0
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"dmguard {command}: "), err
    return lines[0]


def test_train_with_a_missing_data_folder(capsys, tmp_path):
    code, _, err = run_main(
        capsys,
        "train",
        "--data",
        tmp_path / "nope",
        "--encoder",
        TINY,
        "--registry",
        tmp_path / "reg",
    )
    line = assert_one_line(code, err, "train")
    assert f"--data {tmp_path / 'nope'}: no such file or folder" in line


def test_an_unknown_encoder_spec(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "init-head", "--registry", tmp_path / "reg", "--encoder", "clip:x"
    )
    assert "unknown encoder backend 'clip'" in assert_one_line(code, err, "init-head")


def test_serve_with_an_empty_registry(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "serve", "--registry", tmp_path / "empty", "--bootstrap", f"127.0.0.1:{free_port()}"
    )
    assert "dmguard train" in assert_one_line(code, err, "serve")


@pytest.mark.parametrize("command", ["tail", "produce", "topics"])
def test_a_bootstrap_where_nothing_listens(capsys, tmp_path, monkeypatch, command):
    monkeypatch.setenv("DMGUARD_KAFKA_BOOTSTRAP_TIMEOUT_MS", "1000")  # fail in about a second
    monkeypatch.setenv("DMGUARD_KAFKA_REQUEST_TIMEOUT_MS", "1000")
    bootstrap = f"127.0.0.1:{free_port()}"
    extra = []
    if command == "produce":
        (tmp_path / "in.txt").write_text("http://h/1.jpg\n")
        extra = [tmp_path / "in.txt"]
    t0 = time.monotonic()
    code, _, err = run_main(capsys, command, "--bootstrap", bootstrap, *extra)
    assert time.monotonic() - t0 < 20
    line = assert_one_line(code, err, command)
    assert f"no Kafka broker answers at {bootstrap}" in line
    assert "dmguard broker" in line and "DMGUARD_BOOTSTRAP" in line


def test_retrain_once_without_a_registry(capsys, tmp_path):
    code, out, err = run_main(
        capsys,
        "retrain",
        "--once",
        "--registry",
        tmp_path / "none",
        "--bootstrap",
        f"127.0.0.1:{free_port()}",
    )
    assert "no current head" in assert_one_line(code, err, "retrain")
    assert out == ""


def test_a_bad_kafka_variable(capsys, monkeypatch):
    monkeypatch.setenv("DMGUARD_KAFKA_SSL_CHECK_HOSTNAME", "maybe")
    code, _, err = run_main(capsys, "tail", "--bootstrap", f"127.0.0.1:{free_port()}")
    assert "DMGUARD_KAFKA_SSL_CHECK_HOSTNAME" in assert_one_line(code, err, "tail")


def test_a_missing_input_file(capsys, tmp_path):
    code, _, err = run_main(capsys, "produce", tmp_path / "none.txt")
    line = assert_one_line(code, err, "produce")
    assert "No such file or directory" in line and str(tmp_path / "none.txt") in line


def test_debug_shows_the_traceback(capsys, tmp_path):
    code, _, err = run_main(capsys, "--debug", "retrain", "--once", "--registry", tmp_path / "none")
    assert code == 1
    assert "Traceback" in err and "RegistryError" in err
    assert err.splitlines()[-1].startswith("dmguard retrain: no current head")


def test_ctrl_c_exits_130_without_a_traceback(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(heads, "run_models", interrupted)
    code, _, err = run_main(capsys, "models")
    assert code == 130
    assert assert_one_line(code, err, "models") == "dmguard models: interrupted"


def test_a_bug_shows_its_traceback_and_how_to_report_it(capsys, monkeypatch):
    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(heads, "run_models", broken)
    code, _, err = run_main(capsys, "models")
    assert code == 1
    assert "Traceback" in err and "KeyError" in err
    last = err.splitlines()[-1]
    assert last.startswith("dmguard models: unexpected KeyError") and "report" in last


def test_retrain_once_exit_code_follows_fail_on_skip(capsys, monkeypatch, tmp_path):
    import training.learning.retrain

    monkeypatch.setattr(
        training.learning.retrain,
        "retrain_once",
        lambda s: {"trained": False, "reason": "3 new labelled features < 50"},
    )
    argv = ["retrain", "--once", "--registry", tmp_path / "r"]
    code, out, err = run_main(capsys, *argv)
    assert code == 0 and json.loads(out)["reason"] == "3 new labelled features < 50"
    code, out, _ = run_main(capsys, *argv, "--fail-on-skip")
    assert code == 3 and json.loads(out)["trained"] is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["retrain", "--help"])
    assert "--fail-on-skip" in capsys.readouterr().out


def test_device_mistakes_are_config_errors(capsys, tmp_path):
    from actors.pool import worker_resources
    from services.config import ServeSettings
    from services.errors import ConfigError
    from training.model.device import choose_placement

    with pytest.raises(ConfigError, match="--device cpu"):
        choose_placement("cuda", cuda_available=False)
    with pytest.raises(ConfigError, match="--gpus-per-worker 0"):
        worker_resources(ServeSettings(gpus_per_worker=1.0), 0)
    if not torch.cuda.is_available():  # as a user meets it
        assert main(["init-head", "--registry", str(tmp_path / "reg"), "--encoder", TINY]) == 0
        (tmp_path / "a.jpg").write_bytes(jpeg())
        capsys.readouterr()
        code, _, err = run_main(
            capsys, "score", "--registry", tmp_path / "reg", "--device", "cuda", tmp_path / "a.jpg"
        )
        assert "no CUDA device" in assert_one_line(code, err, "score")


def _settings_of_serve(monkeypatch, *flags: str):
    """The ServeSettings `dmguard serve FLAGS` would run with (the driver replaced)."""
    from dmguard import main, serve

    seen = []
    monkeypatch.setattr(serve, "run_service", lambda settings: seen.append(settings) or 0)
    assert main(["serve", *flags]) == 0
    return seen[0]


def test_serve_reads_every_flag_into_its_setting(monkeypatch, tmp_path):
    from services.config import FetchPolicy, KafkaSettings, ServeSettings, WorkerSettings

    monkeypatch.delenv("DMGUARD_FEATURE_LOG", raising=False)
    anchors = tmp_path / "anchors.pem"
    anchors.write_text("-----BEGIN CERTIFICATE-----\n")
    s = _settings_of_serve(
        monkeypatch,
        "--bootstrap",
        "k:1",
        "--registry",
        "reg",
        "--group-id",
        "g",
        "--workers",
        "3",
        "--scale-window",
        "7",
        "--scale-cooldown",
        "9",
        "--metrics-port",
        "1234",
        "--metrics-host",
        "127.0.0.1",
        "--max-batch",
        "5",
        "--max-wait-ms",
        "11",
        "--fetch-threads",
        "2",
        "--allow-private-urls",
        "--allow-network",
        "10.0.0.0/8",
        "--allow-file-urls",
        "--max-bytes",
        "999",
        "--max-pixels",
        "888",
        "--fetch-timeout",
        "3",
        "--cpus-per-worker",
        "0.5",
        "--gpus-per-worker",
        "0.25",
        "--worker-resources",
        '{"detector": 1}',
        "--device",
        "cpu",
        "--feature-log",
        "fl",
        "--state-dir",
        "st",
        "--exactly-once",
        "--worker-start-timeout",
        "42",
        "--cache-mb",
        "3.5",
        "--provenance",
        "evidence",
        "--c2pa-trust-anchors",
        str(anchors),
    )
    w = s.worker
    assert (w.kafka.bootstrap_servers, w.kafka.group_id, w.registry) == ("k:1", "g", "reg")
    assert (s.workers, s.autoscale, s.scale_window_s, s.scale_cooldown_s) == (3, False, 7, 9)
    assert (s.metrics_port, s.metrics_host, s.cpus_per_worker) == (1234, "127.0.0.1", 0.5)
    assert (s.gpus_per_worker, s.worker_resources) == (0.25, {"detector": 1.0})
    assert (w.max_batch, w.max_wait_ms, w.fetch_threads, w.max_pixels) == (5, 11, 2, 888)
    assert (w.device, w.feature_log, w.state_dir, w.exactly_once) == ("cpu", "fl", "st", True)
    assert s.worker_start_timeout_s == 42 and w.cache_mb == 3.5
    assert (w.provenance.mode, w.provenance.trust_anchors) == ("evidence", anchors.read_text())
    f = w.fetch
    assert (f.allow_private, f.allowed_networks, f.allow_file) == (True, ("10.0.0.0/8",), True)
    assert (f.max_bytes, f.total_timeout_s) == (999, 3)
    # Without flags: the settings' own defaults, written once in services.config.
    d = _settings_of_serve(monkeypatch, "--registry", "reg", "--no-feature-log")
    assert d.worker.feature_log is None and d.worker.fetch == FetchPolicy()
    for name in (
        "workers",
        "cpus_per_worker",
        "gpus_per_worker",
        "metrics_port",
        "metrics_host",
        "scale_window_s",
        "scale_cooldown_s",
        "worker_resources",
        "worker_start_timeout_s",
    ):
        assert getattr(d, name) == getattr(ServeSettings(), name), name
    for name in (
        "max_batch",
        "max_wait_ms",
        "fetch_threads",
        "max_pixels",
        "device",
        "provenance",
        "cache_mb",
    ):
        assert getattr(d.worker, name) == getattr(WorkerSettings(), name), name
    assert d.worker.kafka.group_id == KafkaSettings().group_id


def test_serve_auto_starts_with_the_fewest_workers(monkeypatch):
    s = _settings_of_serve(
        monkeypatch, "--registry", "r", "--workers", "auto", "--min-workers", "2"
    )
    assert (s.autoscale, s.workers, s.min_workers) == (True, 2, 2)


def test_every_flag_of_every_command_has_help():
    import argparse

    from dmguard import build_parser

    def flags(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from flags(sub, f"{path} {name}".strip())
            elif not isinstance(action, argparse._HelpAction):
                yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help

    missing = [name for name, text in flags(build_parser(), "") if not text]
    assert not missing, missing
