"""Flags several commands share, and reading them back into settings."""

from __future__ import annotations

import argparse

from services.config import (
    KafkaSettings,
    default_bootstrap,
    default_registry,
    kafka_settings,
)
from services.errors import ConfigError

DEVICES = ["auto", "cuda", "cpu"]


def kafka_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--bootstrap",
        default=default_bootstrap(),
        help="Kafka bootstrap servers, comma-separated (default: $DMGUARD_BOOTSTRAP or %(default)s)",
    )


def registry_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--registry",
        default=default_registry(),
        help="model registry folder (default: $DMGUARD_REGISTRY or %(default)s)",
    )


def kafka_from(args: argparse.Namespace, **overrides) -> KafkaSettings:
    """`--bootstrap` plus the DMGUARD_KAFKA_* client settings."""
    return kafka_settings(args.bootstrap, **overrides)


def parse_views(text: str) -> tuple[str, ...]:
    """--views as a tuple of view names; ConfigError for an unknown or repeated one."""
    from training.model.views import check_views  # not at import: the CLI starts without numpy

    try:
        return check_views([name.strip() for name in text.split(",") if name.strip()])
    except ValueError as exc:
        raise ConfigError(f"--views: {exc}") from None
