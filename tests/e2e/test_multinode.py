"""`dmguard serve` joining a Ray cluster it did not start (RAY_ADDRESS), on this machine:
a head node started with `ray start --head`, and the detector nodes with
`ray start --address`, each offering a custom resource `detector` that the
head lacks, so the workers (`--worker-resources '{"detector": 1}'`) can only
run there. Then the detector node is stopped mid-stream and another one joins,
as an autoscaler would bring one: Ray restarts the workers there and nothing
is lost. Which node a worker runs on is read from the process tree (each
worker descends from the `ray start` process of its node), not from Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from services.broker import free_port
from services.poll import wait_until
from tests.e2e.harness import (
    OutputReader,
    Service,
    good_stream,
    produce,
    read_verdicts,
    wait_accounted,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

RAY = str(Path(sys.executable).with_name("ray"))
# Ray's token authentication needs a token shared by every node and driver (a file in
# ~/.ray, or RAY_AUTH_TOKEN); this throw-away test cluster runs without it.
NO_AUTH = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
OBJECT_STORE = str(100 * 1024 * 1024)


class RayNode:
    """`ray start ... --block` in a process group of its own: stopping it stops the node.
    Ray turns 127.0.0.1 into this machine's address, so the nodes listen on that (the
    broker and the image server stay on loopback)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("ab")
        env = {**os.environ, **NO_AUTH}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [
                RAY,
                "start",
                "--block",
                "--disable-usage-stats",
                "--object-store-memory",
                OBJECT_STORE,
                "--num-gpus",
                "0",
                *args,
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @classmethod
    def head(cls, port: int, temp_dir: str, log: Path) -> RayNode:
        """`temp_dir`: its own, so that a `ray.init()` elsewhere does not find this cluster;
        short, as Ray's socket paths inside it must fit in 107 bytes."""
        node = cls(
            [
                "--head",
                "--port",
                str(port),
                "--num-cpus",
                "1",
                "--include-dashboard",
                "false",
                "--temp-dir",
                temp_dir,
            ],
            log,
        )
        wait_until(node.answers(port), 60, what="the Ray head")
        return node

    def answers(self, port: int):
        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"ray start exited:\n{self.log.read_text()[-3000:]}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        return check

    @classmethod
    def detector(cls, address: str, log: Path) -> RayNode:
        return cls(
            ["--address", address, "--num-cpus", "2", "--resources", json.dumps({"detector": 2})],
            log,
        )

    def kill(self) -> None:
        """The node lost at once, as when its machine dies: SIGKILL to `ray start` and to
        every process under it (the raylet, the workers)."""
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()


def ancestors(pid: int) -> set[int]:
    """Every process above `pid` (from /proc), up to init."""
    found = set()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        found.add(pid)
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def workers_under(service: Service, node: RayNode) -> list[int]:
    """Pids of the running workers that descend from `node`'s `ray start` process."""
    workers = json.loads(service.get("/status")[1])["workers"]
    return [w["pid"] for w in workers if w.get("running") and node.proc.pid in ancestors(w["pid"])]


def test_serve_joins_a_cluster_and_its_workers_move_when_their_node_is_lost(
    broker, image_server, tiny_registry, tmp_path
):
    port = free_port()
    address = f"127.0.0.1:{port}"
    values, expected = good_stream(image_server, 300, "multinode")
    image_server.delay_s = 0.1
    nodes: list[RayNode] = []
    service = reader = None
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        nodes.append(RayNode.head(port, ray_tmp, tmp_path / "ray-head.log"))
        nodes.append(RayNode.detector(address, tmp_path / "ray-node-b.log"))
        service = Service(
            broker.bootstrap,
            tiny_registry.root,
            tmp_path / "serve.log",
            "--fetch-threads",
            "2",
            "--max-batch",
            "4",
            "--worker-resources",
            json.dumps({"detector": 1}),
            env={"RAY_ADDRESS": address, **NO_AUTH},
        )
        service.wait_ready(timeout=180)
        node_b = nodes[1]
        assert len(workers_under(service, node_b)) == 2, service.tail()
        assert "Started a local Ray instance" not in service.log.read_text()

        produce(broker.bootstrap, values)
        reader = OutputReader(broker.bootstrap)
        read_verdicts(reader, 60, timeout=120)
        node_b.kill()  # the node and the workers on it are gone at once
        lost_at = len(reader.read(idle_s=0.05).verdicts)
        assert lost_at < 300, "the node was lost after the stream had finished"

        node_c = RayNode.detector(address, tmp_path / "ray-node-c.log")
        nodes.append(node_c)
        out = wait_accounted(reader, expected, timeout=240)
        seen = {v["id"] for v in out.verdicts}
        assert seen == expected, f"lost {len(expected - seen)} records:\n{service.tail()}"
        assert not out.dead_letters
        wait_until(
            lambda: len(workers_under(service, node_c)),
            60,
            what="both workers on node C",
            done=lambda n: n == 2,
        )
        assert service.stop() == 0, service.tail()
    finally:
        if reader:
            reader.close()
        if service:
            service.kill()
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
