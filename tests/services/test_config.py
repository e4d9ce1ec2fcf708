"""DMGUARD_KAFKA_<NAME> variables: typed by the kafka-python setting they name."""

import pytest

import services.config as config
from services.config import KafkaSettings, kafka_client_settings, kafka_extra_from_env
from services.errors import ConfigError


def test_a_numeric_password_stays_a_string():
    extra = kafka_extra_from_env(
        {
            "DMGUARD_KAFKA_SASL_PLAIN_PASSWORD": "123456",
            "DMGUARD_KAFKA_SASL_PLAIN_USERNAME": "007",
            "DMGUARD_KAFKA_SSL_PASSWORD": " 42 ",
        }
    )
    assert extra == {
        "sasl_plain_password": "123456",
        "sasl_plain_username": "007",
        "ssl_password": " 42 ",  # verbatim, spaces included
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("OFF", False),
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        (" on ", True),
    ],
)
def test_booleans_parse_by_word(value, expected):
    extra = kafka_extra_from_env({"DMGUARD_KAFKA_SSL_CHECK_HOSTNAME": value})
    assert extra == {"ssl_check_hostname": expected}
    assert type(extra["ssl_check_hostname"]) is bool


def test_a_word_that_is_not_a_boolean_is_refused():
    with pytest.raises(ConfigError, match="DMGUARD_KAFKA_SSL_CHECK_HOSTNAME.*'maybe'.*true/false"):
        kafka_extra_from_env({"DMGUARD_KAFKA_SSL_CHECK_HOSTNAME": "maybe"})


def test_integer_settings_are_integers_and_must_parse():
    extra = kafka_extra_from_env(
        {"DMGUARD_KAFKA_REQUEST_TIMEOUT_MS": "2000", "DMGUARD_KAFKA_RECEIVE_BUFFER_BYTES": "65536"}
    )
    assert extra == {"request_timeout_ms": 2000, "receive_buffer_bytes": 65536}
    assert type(extra["request_timeout_ms"]) is int
    with pytest.raises(ConfigError, match="DMGUARD_KAFKA_REQUEST_TIMEOUT_MS.*'2s'.*integer"):
        kafka_extra_from_env({"DMGUARD_KAFKA_REQUEST_TIMEOUT_MS": "2s"})


def test_strings_with_a_none_default_and_the_api_version():
    extra = kafka_extra_from_env(
        {
            "DMGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "DMGUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "DMGUARD_KAFKA_SSL_CAFILE": "/etc/ca.pem",
            "DMGUARD_KAFKA_API_VERSION": "2.8",
        }
    )
    assert extra == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "ssl_cafile": "/etc/ca.pem",
        "api_version": (2, 8),
    }
    with pytest.raises(ConfigError, match="DMGUARD_KAFKA_API_VERSION"):
        kafka_extra_from_env({"DMGUARD_KAFKA_API_VERSION": "latest"})


def test_other_variables_are_ignored():
    env = {"DMGUARD_BOOTSTRAP": "h:9092", "DMGUARD_KAFKA_": "x", "KAFKA_LINGER_MS": "5"}
    assert kafka_extra_from_env(env) == {}


def test_an_unknown_name_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="DMGUARD_KAFKA_SASL_MECHANISMS.*SASL_MECHANISM\\?"):
        kafka_extra_from_env({"DMGUARD_KAFKA_SASL_MECHANISMS": "PLAIN"})


def test_an_unknown_secret_name_never_shows_its_value():
    with pytest.raises(ConfigError, match="DMGUARD_KAFKA_SASL_PASSWORD") as err:
        kafka_extra_from_env({"DMGUARD_KAFKA_SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in str(err.value)


def test_a_secret_value_that_does_not_parse_is_not_quoted(monkeypatch):
    # No secret-named kafka-python setting is numeric today: pretend one is.
    every = frozenset({"producer", "consumer", "admin"})
    monkeypatch.setattr(
        config, "kafka_client_settings", lambda: {"sasl_token_ttl_ms": ("int", every)}
    )
    with pytest.raises(ConfigError, match="DMGUARD_KAFKA_SASL_TOKEN_TTL_MS") as err:
        kafka_extra_from_env({"DMGUARD_KAFKA_SASL_TOKEN_TTL_MS": "s3cr3t-value"})
    assert "s3cr3t-value" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("LINGER_MS", "producer only"),  # the consumer and admin clients would refuse it
        ("GROUP_ID", "consumer only"),
        ("SOCKET_OPTIONS", "Python object"),
        ("SSL_CONTEXT", "Python object"),
        ("BOOTSTRAP_SERVERS", "--bootstrap"),
    ],
)
def test_settings_that_cannot_go_to_every_client_are_refused(name, why):
    with pytest.raises(ConfigError, match=f"DMGUARD_KAFKA_{name}.*{why}"):
        kafka_extra_from_env({f"DMGUARD_KAFKA_{name}": "5"})


def test_kinds_follow_kafka_python_defaults():
    settings = kafka_client_settings()
    assert settings["request_timeout_ms"][0] == "int"
    assert settings["ssl_check_hostname"][0] == "bool"
    assert settings["sasl_plain_password"][0] == "str"  # None default: a string
    assert settings["client_id"][0] == "str"
    assert settings["metric_reporters"][0] == "object"
    assert settings["consumer_timeout_ms"] == ("float", frozenset({"consumer"}))
    assert settings["linger_ms"][1] == frozenset({"producer"})


def test_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("DMGUARD_KAFKA_SASL_PLAIN_PASSWORD", "123456")
    assert kafka_extra_from_env()["sasl_plain_password"] == "123456"


def test_repr_of_kafka_settings_hides_secrets():
    extra = kafka_extra_from_env(
        {
            "DMGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "DMGUARD_KAFKA_SASL_PLAIN_USERNAME": "svc-dmguard",
            "DMGUARD_KAFKA_SASL_PLAIN_PASSWORD": "123456",
            "DMGUARD_KAFKA_SSL_PASSWORD": "pem-pass",
        }
    )
    text = repr(KafkaSettings(client_extra=extra))
    assert "123456" not in text and "pem-pass" not in text
    assert "SASL_SSL" in text and "svc-dmguard" in text
    assert text.count("***") == 2


def test_serve_settings_from_flags_and_the_environment(monkeypatch):
    monkeypatch.setenv("DMGUARD_BOOTSTRAP", "kafka:9093")
    monkeypatch.setenv("DMGUARD_REGISTRY", "/models")
    monkeypatch.setenv("DMGUARD_KAFKA_SECURITY_PROTOCOL", "SSL")
    s = config.serve_settings(
        workers=3,
        max_batch=8,
        allow_network=["127.0.0.1/32"],
        fetch_timeout=2.0,
        feature_log="/log",
    )
    assert s.workers == 3 and s.worker.max_batch == 8 and s.worker.feature_log == "/log"
    assert s.worker.registry == "/models" and s.worker.state_dir is None
    assert s.worker.kafka.bootstrap_servers == "kafka:9093"
    assert s.worker.kafka.client_extra == {"security_protocol": "SSL"}
    fetch = s.worker.fetch
    assert fetch.allowed_networks == ("127.0.0.1/32",) and not fetch.allow_private
    assert fetch.total_timeout_s == 2.0 and fetch.connect_timeout_s == 2.0
    # an embedded broker: given bootstrap servers, no client extras from the environment
    local = config.serve_settings(bootstrap="127.0.0.1:1", client_extra={}, registry="r")
    assert local.worker.kafka.bootstrap_servers == "127.0.0.1:1"
    assert local.worker.kafka.client_extra == {} and local.worker.registry == "r"
    assert local == config.ServeSettings(
        worker=config.WorkerSettings(
            kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"), registry="r"
        )
    )
