"""Why a Kafka client cannot get in, in one line that names the setting to fix.

kafka-python reports every failed bootstrap the same way ("Unable to bootstrap" after its
timeout), whether nothing listens, the broker's certificate is not trusted or the password
is wrong. When a client cannot start, `access_problem` retraces the connection stage by
stage: TCP, then the TLS handshake with the client's own trust settings, then a bootstrap
with kafka-python's log captured to see whether the broker closed the connection at the SASL
login. `authorization_problem` turns an ACL refusal into the grant that would fix it."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from services.config import KafkaSettings

PROBE_TIMEOUT_S = 5.0

# The Kafka operation each kafka-python authorization error refuses, for the grant to name.
_RESOURCES = {
    "TopicAuthorizationFailedError": "--topic",
    "GroupAuthorizationFailedError": "--group",
    "TransactionalIdAuthorizationFailedError": "--transactional-id",
    "ClusterAuthorizationFailedError": "--cluster",
}


def _first_server(kafka: KafkaSettings) -> tuple[str, int]:
    server = kafka.bootstrap_servers.split(",")[0].strip()
    host, _, port = server.rpartition(":")
    return host.strip("[]") or "localhost", int(port or 9092)


def _tls_context(extra: dict[str, Any]) -> ssl.SSLContext:
    """The trust kafka-python would use: ssl_cafile, else the system's CAs."""
    ctx = ssl.create_default_context(cafile=extra.get("ssl_cafile"))
    ctx.check_hostname = bool(extra.get("ssl_check_hostname", True))
    if extra.get("ssl_certfile"):
        ctx.load_cert_chain(
            extra["ssl_certfile"], extra.get("ssl_keyfile"), extra.get("ssl_password")
        )
    return ctx


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


def _bootstrap_log(kafka: KafkaSettings, timeout_s: float) -> tuple[bool, list[str]]:
    """Whether an admin client bootstraps within `timeout_s`, and kafka-python's log of it."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    logger, capture = logging.getLogger("kafka"), _Capture()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        ms = int(timeout_s * 1000)
        KafkaAdminClient(**kafka.common(), request_timeout_ms=ms, bootstrap_timeout_ms=ms).close()
        return True, capture.messages
    except (KafkaError, OSError, ValueError):
        return False, capture.messages
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
        logger.propagate = propagate


def access_problem(kafka: KafkaSettings, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """One line saying why a broker that is there lets no client in (TLS, login, protocol),
    naming the DMGUARD_KAFKA_* setting to check; None when nothing answers at all (the
    caller says so) or when a client gets in now."""
    host, port = _first_server(kafka)
    where = f"Kafka at {host}:{port}"
    extra = kafka.client_extra
    protocol = str(extra.get("security_protocol", "PLAINTEXT")).upper()
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return None  # no broker there: not a question of access
    with sock:
        if "SSL" in protocol:
            try:
                with _tls_context(extra).wrap_socket(sock, server_hostname=host):
                    pass
            except ssl.SSLCertVerificationError as exc:
                trusted = extra.get("ssl_cafile") or "the system's CAs"
                return (
                    f"{where} shows a TLS certificate that is not trusted ({exc.verify_message}): "
                    f"DMGUARD_KAFKA_SSL_CAFILE names the CA to trust (now {trusted})"
                )
            except (ssl.SSLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc
                return (
                    f"no TLS handshake with {where} ({reason}): does that listener speak TLS? "
                    f"(DMGUARD_KAFKA_SECURITY_PROTOCOL is {protocol})"
                )
    ok, log = _bootstrap_log(kafka, timeout_s)
    if ok:
        return None
    sent = " ".join(m for m in log if "Sending request" in m or "Received response" in m)
    mechanism = extra.get("sasl_mechanism", "PLAIN")
    if "SASL" in protocol and "SaslAuthenticateRequest" in sent:
        user = extra.get("sasl_plain_username", "")
        return (
            f"{where} refused the login of user {user!r} ({mechanism}): wrong user name or "
            "password (DMGUARD_KAFKA_SASL_PLAIN_USERNAME, DMGUARD_KAFKA_SASL_PLAIN_PASSWORD)"
        )
    if "SASL" in protocol and "SaslHandshakeRequest" in sent:
        return (
            f"{where} ended the SASL handshake: does it accept the mechanism {mechanism}? "
            "(DMGUARD_KAFKA_SASL_MECHANISM)"
        )
    return (
        f"{where} accepts connections but no Kafka client got in within {timeout_s:g} s: is "
        f"{protocol} (DMGUARD_KAFKA_SECURITY_PROTOCOL) what its listener expects, and are the "
        "SASL and TLS settings right?"
    )


def authorization_problem(
    exc: BaseException, kafka: KafkaSettings, operation: str, resource: str | None = None
) -> str | None:
    """For an ACL refusal (kafka-python's AuthorizationError), one line naming the user, what
    was refused and the grant (`operation` on `resource`, else the one the error names) that
    fixes it; None for any other error."""
    from kafka.errors import AuthorizationError

    if not isinstance(exc, AuthorizationError):
        return None
    user = kafka.client_extra.get("sasl_plain_username") or "ANONYMOUS"
    kind = type(exc).__name__
    flag = _RESOURCES.get(kind, "--topic")
    if resource is None:  # kafka-python names what was refused after the error: "...Error: t1"
        text = str(exc)
        resource = text.split(": ", 1)[1].split(" ")[0] if ": " in text else "<name>"
    grant = "--cluster" if flag == "--cluster" else f"{flag} {resource}"
    return (
        f"Kafka refused user {user!r} {operation} on {grant.lstrip('-')} ({kind}): grant it "
        f"with kafka-acls.sh --add --allow-principal User:{user} --operation {operation} {grant}"
    )
