"""The one-line explanations of a refused Kafka client (services.kafka_diagnosis) and the
secured listener's settings (services.kafka_security), without a broker. The broker-backed
checks are in tests/e2e/test_kafka_security.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from services.broker import free_port
from services.config import KafkaSettings
from services.errors import ConfigError
from services.kafka_diagnosis import access_problem, authorization_problem
from services.kafka_security import KafkaSecurity

USER = {"sasl_plain_username": "dmguard"}


def test_a_refused_write_names_the_user_the_topic_and_the_grant():
    kafka = KafkaSettings(client_extra=USER)
    line = authorization_problem(TopicAuthorizationFailedError("dmguard.verdicts"), kafka, "Write")
    assert line is not None and "user 'dmguard'" in line
    assert line.endswith(
        "kafka-acls.sh --add --allow-principal User:dmguard --operation Write --topic dmguard.verdicts"
    )


def test_a_refused_group_asks_for_a_group_grant():
    line = authorization_problem(
        GroupAuthorizationFailedError("dmguard"), KafkaSettings(client_extra=USER), "Read"
    )
    assert line is not None and line.endswith("--operation Read --group dmguard")


def test_other_errors_are_not_refusals():
    assert authorization_problem(KafkaConnectionError("x"), KafkaSettings(), "Write") is None


def test_nothing_listening_is_not_an_access_problem():
    """The caller's own "no Kafka broker answers" says that; no probe of a missing broker."""
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", client_extra=USER)
    assert access_problem(kafka, timeout_s=1.0) is None


def test_a_secured_listener_needs_a_super_user_with_a_password():
    with pytest.raises(ConfigError, match="super user"):
        KafkaSecurity(Path("k.pem"), Path("ca.pem"), users={"a": "b"})
    with pytest.raises(ConfigError, match="without a password"):
        KafkaSecurity(Path("k.pem"), Path("ca.pem"), users={"a": "b"}, super_users=("root",))
    with pytest.raises(ConfigError, match="may not hold"):
        KafkaSecurity(Path("k.pem"), Path("ca.pem"), users={"a": "x,y"}, super_users=("a",))


def test_every_user_gets_scram_credentials_at_format_time_and_only_sasl_ssl_faces_clients():
    security = KafkaSecurity(
        Path("k.pem"),
        Path("ca.pem"),
        users={"admin": "s1", "dmguard": "s2"},
        super_users=("admin",),
    )
    assert security.format_arguments() == [
        "--add-scram",
        "SCRAM-SHA-512=[name=admin,password=s1]",
        "--add-scram",
        "SCRAM-SHA-512=[name=dmguard,password=s2]",
    ]
    props = security.properties()
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["super.users"] == "User:admin;User:ANONYMOUS"
    assert (
        'username="admin" password="s1"'
        in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    )
