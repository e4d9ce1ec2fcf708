"""dmguard against a locked-down Apache Kafka: a SASL_SSL listener (TLS with certificates
made here by openssl, SCRAM-SHA-512 users created when the storage is formatted) and Kafka's
standard authorizer, where the user `dmguard` may do only what an ACL grants.

`serve`, `produce`, `tail` and `retrain` get in with the DMGUARD_KAFKA_* settings alone. A
wrong password, an untrusted certificate and a missing ACL on the verdicts topic each end in
one clear line (no traceback, no restart loop), and once the grant is added no record is
lost: not at start, and not when the grant is taken away from a running `serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType

from services.config import KafkaSettings, Topics
from services.kafka_io import ensure_topics
from services.kafka_security import KafkaSecurity
from services.poll import wait_until
from tests.certificates import certificate_authority, issue
from tests.e2e.harness import Service, counter, good_stream

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

TOPICS = Topics()
USER, PASSWORD = "dmguard", "dmguard-secret"


def broker_keystore(folder: Path) -> Path:
    """The broker's PEM keystore: its unencrypted PKCS#8 key, then its certificate (issued
    by the CA in `folder`, valid for 127.0.0.1 and localhost) and the CA's."""
    cert, key = issue(
        folder, "broker", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    keystore = folder / "keystore.pem"
    keystore.write_text("".join(p.read_text() for p in (key, cert, folder / "ca.pem")))
    return keystore


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory):
    """One Kafka for the module: (broker, its security, a CA that did not sign it)."""
    from services.broker import KafkaBroker
    from tests.conftest import require_kafka_jars

    require_kafka_jars()
    folder = tmp_path_factory.mktemp("secured-kafka")
    ca = certificate_authority(folder / "ca", "dmguard test")
    stranger = certificate_authority(folder / "stranger", "nobody we know")
    security = KafkaSecurity(
        keystore=broker_keystore(folder / "ca"),
        truststore=ca,
        users={"admin": "admin-secret", USER: PASSWORD},
        super_users=("admin",),
    )
    broker = KafkaBroker(data_dir=folder / "kafka", security=security).start()
    yield broker, security, stranger
    broker.stop()


def kafka_env(security: KafkaSecurity, **overrides: str) -> dict[str, str]:
    """The DMGUARD_KAFKA_* variables a platform would set for the user `dmguard`."""
    settings = {**security.client_settings(USER), **overrides}
    return {f"DMGUARD_KAFKA_{k.upper()}": str(v) for k, v in settings.items()}


def dmguard(bootstrap: str, env: dict[str, str], *args: str, timeout: float = 120):
    import os

    return subprocess.run(
        [sys.executable, "-m", "dmguard", *args],
        env={**os.environ, "DMGUARD_BOOTSTRAP": bootstrap, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The single line a refused command printed; fails on a traceback or a success."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("dmguard ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def acl(operation: ACLOperation, kind: ResourceType, name: str) -> ACL:
    return ACL(f"User:{USER}", "*", operation, ACLPermissionType.ALLOW, ResourcePattern(kind, name))


# What `serve` needs (docs/delivery.md), and what the test's own produce and tail need.
VERDICTS_ACLS = [acl(ACLOperation.WRITE, ResourceType.TOPIC, TOPICS.verdicts)]
OTHER_ACLS = [
    acl(ACLOperation.READ, ResourceType.TOPIC, TOPICS.images),
    acl(ACLOperation.WRITE, ResourceType.TOPIC, TOPICS.images),  # the test's `dmguard produce`
    acl(ACLOperation.WRITE, ResourceType.TOPIC, TOPICS.dead_letter),
    acl(ACLOperation.READ, ResourceType.TOPIC, TOPICS.labels),
    acl(ACLOperation.WRITE, ResourceType.TOPIC, TOPICS.labels),  # the test's labels
    acl(ACLOperation.READ, ResourceType.GROUP, "dmguard"),
]
TAIL_ACL = acl(ACLOperation.READ, ResourceType.TOPIC, TOPICS.verdicts)


def test_serve_produce_tail_and_retrain_through_tls_scram_and_acls(
    secured_kafka, image_server, tiny_registry, tmp_path
):
    broker, security, stranger = secured_kafka
    bootstrap, env = broker.bootstrap, kafka_env(security)
    admin_settings = KafkaSettings(bootstrap, client_extra=broker.client_settings())
    ensure_topics(admin_settings, TOPICS)
    admin = KafkaAdminClient(**admin_settings.common())
    registry = ("--registry", str(tiny_registry.root))

    wrong = one_line_error(
        dmguard(bootstrap, kafka_env(security, sasl_plain_password="not-it"), "serve", *registry)
    )
    assert f"refused the login of user '{USER}'" in wrong, wrong
    untrusted = one_line_error(
        dmguard(bootstrap, kafka_env(security, ssl_cafile=str(stranger)), "serve", *registry)
    )
    assert "not trusted" in untrusted and "DMGUARD_KAFKA_SSL_CAFILE" in untrusted, untrusted

    # Every grant serve needs but the verdicts topic's: serve stops at once, saying which.
    assert not admin.create_acls(OTHER_ACLS)["failed"]
    values, expected = good_stream(image_server, 40, "secure")
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"\n".join(values) + b"\n")
    sent = dmguard(bootstrap, env, "produce", str(records))
    assert sent.returncode == 0, sent.stderr
    refused = one_line_error(dmguard(bootstrap, env, "serve", *registry))
    assert f"--operation Write --topic {TOPICS.verdicts}" in refused, refused

    # Granted: every record gets its verdict, read back with `dmguard tail` as `dmguard`.
    assert not admin.create_acls([*VERDICTS_ACLS, TAIL_ACL])["failed"]
    service = Service(bootstrap, tiny_registry.root, tmp_path / "serve.log", env=env, workers=1)
    try:
        service.wait_ready()
        seen = verdict_ids(bootstrap, env, len(expected))
        assert seen == sorted(expected), service.tail()

        # The grant taken away from the running serve: one line, and after the grant comes
        # back, the records sent meanwhile are there too (nothing was committed meanwhile).
        admin.delete_acls(VERDICTS_ACLS)
        more, more_ids = good_stream(image_server, 20, "regrant")
        records.write_bytes(b"\n".join(more) + b"\n")
        assert dmguard(bootstrap, env, "produce", str(records)).returncode == 0
        wait_until(lambda: refusals(service), 60, what="the refusal in serve's log")
        wait_until(  # the worker tries again, and again: it does not give up, nor crash
            lambda: counter(service.metrics(), "dmguard_broker_errors_total", op="produce"),
            60,
            what="a second refused try",
            done=lambda n: n >= 2,
        )
        assert not admin.create_acls(VERDICTS_ACLS)["failed"]
        seen = verdict_ids(bootstrap, env, len(expected) + len(more_ids))
        assert set(seen) == expected | more_ids, service.tail()
        assert refusals(service) == 1, service.tail()  # logged once, not at every retry
        assert service.stop() == 0, service.tail()
    finally:
        service.kill()
        admin.close()

    labels = [{"id": "secure-0", "label": "generated"}, {"id": "secure-1", "label": "real"}]
    records.write_text("".join(json.dumps(label) + "\n" for label in labels))
    assert (
        dmguard(bootstrap, env, "produce", "--topic", TOPICS.labels, str(records)).returncode == 0
    )
    retrained = dmguard(
        bootstrap,
        env,
        "retrain",
        "--once",
        "--registry",
        str(tiny_registry.root),
        "--feature-log",
        str(tmp_path / "feature-log"),
    )
    assert retrained.returncode == 0, retrained.stderr
    assert json.loads(retrained.stdout.strip().splitlines()[-1])["labels"] == len(labels)


def refusals(service: Service) -> int:
    return service.log.read_text(errors="replace").count(f"Kafka refused user '{USER}'")


def verdict_ids(bootstrap: str, env: dict[str, str], n: int) -> list[str]:
    """The ids of the first `n` verdicts, as `dmguard tail` shows them (duplicates kept)."""
    done = dmguard(
        bootstrap,
        env,
        "tail",
        "--from-beginning",
        "--max",
        str(n),
        "--timeout",
        "90",
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    return sorted(json.loads(line)["id"] for line in done.stdout.splitlines() if line.strip())
