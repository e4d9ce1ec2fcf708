"""Errors of the training package."""

from __future__ import annotations

from services.errors import ConfigError, DmguardError


class EncoderError(DmguardError):
    """An encoder spec is malformed or its weights cannot be loaded."""


class RegistryError(DmguardError):
    """The model registry is missing, inconsistent, or asked for a head it does not hold."""


class EncoderMismatchError(RegistryError):
    """A head was loaded under an encoder other than the one it was trained on."""


class TrainingDataError(DmguardError, ValueError):
    """The labelled data cannot make a train/held-out split worth training on.

    Raised before any training starts: a class missing from either side, or
    fewer labelled rows of a class than a side needs. `counts` holds the rows
    per class on each side ({"train": {"generated": n, "real": n},
    "held_out": {...}}), or is empty when there was nothing to split. Also a
    ValueError, as this condition was before it had a type of its own.
    """

    def __init__(self, message: str, *, counts: dict | None = None) -> None:
        super().__init__(message)
        self.counts = counts or {}


class DeviceError(ConfigError, ValueError, RuntimeError):
    """A device or accelerator was asked for that is unknown or not there.

    Also a ValueError and a RuntimeError, the types these conditions had
    before, so existing handlers keep working.
    """
