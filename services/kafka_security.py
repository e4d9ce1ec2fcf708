"""A secured listener for the Apache Kafka engine: TLS, SASL/SCRAM-SHA-512 logins and
Kafka's standard authorizer with ACLs, as a platform's Kafka runs (`KafkaBroker(security=)`).

Clients reach the broker only through the SASL_SSL listener. The KRaft controller listener
stays PLAINTEXT on 127.0.0.1 (broker and controller share one JVM), so its principal,
User:ANONYMOUS, is a super user: nothing outside the machine can reach that port, and it
serves controller requests only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.errors import ConfigError

SCRAM_MECHANISM = "SCRAM-SHA-512"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class KafkaSecurity:
    """`keystore`: a PEM file with the broker's private key (PKCS#8, unencrypted) then its
    certificate chain; `truststore`: the PEM certificate(s) of the CA that signed it (the
    broker's own connections to itself check it). `users` (name -> password) get SCRAM
    credentials when the storage is formatted, so they exist on the first start;
    `super_users` may do anything, everyone else only what an ACL grants. The first super
    user is the one the broker logs in as to itself."""

    keystore: Path
    truststore: Path
    users: Mapping[str, str] = field(default_factory=dict)
    super_users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.super_users:
            raise ConfigError("a secured Kafka needs a super user to log in as to itself")
        missing = [u for u in self.super_users if u not in self.users]
        if missing:
            raise ConfigError(f"super users without a password in users: {', '.join(missing)}")
        for name, password in self.users.items():
            # Kafka's --add-scram syntax: name=...,password=... inside [ ], no quoting.
            if not name or any(c in name + password for c in ',=[]"\n'):
                raise ConfigError(
                    f"user {name!r}: names and passwords may not hold , = [ ] or quotes"
                )

    @property
    def broker_user(self) -> str:
        return self.super_users[0]

    def properties(self) -> dict[str, str]:
        """server.properties for the SASL_SSL listener (the caller names the listener
        itself SASL_SSL), TLS, SCRAM and the authorizer."""
        login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.broker_user}" password="{self.users[self.broker_user]}";'
        )
        return {
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": login,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(Path(self.keystore).resolve()),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(Path(self.truststore).resolve()),
            "authorizer.class.name": AUTHORIZER,
            "super.users": ";".join(f"User:{u}" for u in (*self.super_users, "ANONYMOUS")),
        }

    def format_arguments(self) -> list[str]:
        """kafka-storage format's arguments that create every user's SCRAM credentials."""
        return [
            arg
            for name, password in self.users.items()
            for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")
        ]

    def client_settings(self, user: str, password: str | None = None) -> dict[str, Any]:
        """kafka-python settings to log in as `user` (with `password`, else the one in users);
        the same names as DMGUARD_KAFKA_* variables, lower-cased."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.users[user] if password is None else password,
            "ssl_cafile": str(Path(self.truststore).resolve()),
        }
