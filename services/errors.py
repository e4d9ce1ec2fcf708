"""Errors of the services package. Every dmguard error derives from DmguardError."""

from __future__ import annotations


class DmguardError(Exception):
    """Root of every error dmguard raises on purpose."""


class ConfigError(DmguardError):
    """A setting or command-line argument is wrong."""


class BrokerError(DmguardError):
    """The embedded broker could not be found, started or reached."""


class KafkaAccessError(BrokerError):
    """The broker is there but refuses this client: TLS trust, login or an ACL. Retrying
    does not help until a setting or a grant changes; the message says which."""


class InputError(DmguardError):
    """One input record cannot be turned into a verdict.

    `code` is one of the dead-letter codes (docs/architecture.md); the record goes to the
    dead-letter topic with it and the worker keeps going.
    """

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RecordError(InputError):
    code = "bad_record"


class BadUrlError(InputError):
    code = "bad_url"


class BlockedUrlError(InputError):
    code = "blocked_url"


class FetchError(InputError):
    code = "fetch_failed"


class FetchTimeoutError(FetchError):
    code = "timeout"


class TooLargeError(InputError):
    code = "too_large"


class NotAnImageError(InputError):
    code = "not_an_image"


class DecodeError(InputError):
    code = "decode_failed"


DEAD_LETTER_CODES = (
    "bad_record",
    "bad_url",
    "blocked_url",
    "fetch_failed",
    "timeout",
    "too_large",
    "not_an_image",
    "decode_failed",
    "internal",
)
