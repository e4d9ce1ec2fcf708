"""Errors of the training package."""

from services.errors import DmguardError


class EncoderError(DmguardError):
    """An encoder spec is malformed or its weights cannot be loaded."""


class RegistryError(DmguardError):
    """The model registry is missing, inconsistent, or asked for a head it does not hold."""


class EncoderMismatchError(RegistryError):
    """A head was loaded under an encoder other than the one it was trained on."""
