"""Shared end-to-end fixtures: one broker, one image server, one registry and one
`dmguard serve` for every test of a module that neither kills, stops nor restarts
the service. Such tests must keep to their own records: unique ids (a prefix per
test) and outputs filtered by id (`harness.only`); metrics are compared as
deltas; a test that promotes another head puts the old one back (`serve_head`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.poll import wait_until
from tests.e2e.harness import MAX_BYTES, Service


@dataclass
class SharedStream:
    bootstrap: str
    server: object  # tests.conftest.ImageServer
    registry: object  # training.model.registry.Registry
    service: Service
    root: Path

    @property
    def feature_log(self) -> Path:
        return self.root / "feature-log"  # where Service points DMGUARD_FEATURE_LOG

    def served_heads(self) -> set[str]:
        return {w["head_version"] for w in json.loads(self.service.get("/status")[1])["workers"]}

    def serve_head(self, version: str, timeout: float = 30.0) -> None:
        """Promote `version` and wait until every worker reports it."""
        self.registry.promote(version)
        wait_until(
            self.served_heads,
            timeout,
            what=f"workers on head {version}",
            done=lambda h: h == {version},
        )


@pytest.fixture(scope="module")
def shared_stream(tmp_path_factory) -> Iterator[SharedStream]:
    from services.broker import EmbeddedBroker
    from tests.conftest import TINY, ImageServer
    from training.model.detector import register_untrained_head
    from training.model.registry import Registry

    root = tmp_path_factory.mktemp("shared-stream")
    registry = Registry(root / "registry")
    register_untrained_head(registry, TINY)
    server = ImageServer()
    try:
        with EmbeddedBroker() as broker:
            service = Service(
                broker.bootstrap, registry.root, root / "serve.log", "--max-bytes", str(MAX_BYTES)
            )
            try:
                service.wait_ready()
                yield SharedStream(broker.bootstrap, server, registry, service, root)
                assert service.stop() == 0, service.tail()
            finally:
                service.kill()
    finally:
        server.close()


@pytest.fixture
def durable_broker(tmp_path):
    """A broker of the test's own on durable storage (noida-db): it can be stopped and
    started again on it, it honours transactions, and its end offsets are exact (the
    in-memory Tansu's are not when records arrive in batches: see docs/delivery.md)."""
    from services.broker import EmbeddedBroker

    broker = EmbeddedBroker(durable_dir=tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_broker(tmp_path):
    """Apache Kafka itself, one KRaft node of the test's own on its own data (`make kafka`'s
    jars): it can be stopped and started again on it, like the durable broker."""
    from services.broker import KafkaBroker
    from tests.conftest import require_kafka_jars

    require_kafka_jars()
    broker = KafkaBroker(data_dir=tmp_path / "kafka").start()
    yield broker
    broker.stop()
