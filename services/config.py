"""Frozen settings objects for the service, and the one place they are built.

`kafka_settings`, `fetch_policy` and `serve_settings` turn flag values (the
CLI's, or the demo's and the bench's own) into settings; what a caller leaves
out comes from `DMGUARD_*` environment variables, then from the defaults
below. Nothing else reads those variables.

Kafka client settings keep Kafka's names (`bootstrap_servers`, `group_id`,
`session_timeout_ms`, ...). Extra client settings for real clusters (TLS,
SASL) come from `DMGUARD_KAFKA_<NAME>` environment variables, e.g.
`DMGUARD_KAFKA_SECURITY_PROTOCOL=SASL_SSL`; they are passed to every client
and never printed.
"""

from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from services.errors import ConfigError
from services.fetch import DEFAULT_MAX_BYTES, FetchPolicy
from services.images import DEFAULT_MAX_PIXELS
from services.provenance import ProvenanceSettings

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REGISTRY = "./registry"
_SECRET_HINTS = ("password", "secret", "token", "key")


@dataclass(frozen=True)
class Topics:
    images: str = "dmguard.images"
    verdicts: str = "dmguard.verdicts"
    dead_letter: str = "dmguard.dead-letter"
    labels: str = "dmguard.labels"

    def all(self) -> tuple[str, ...]:
        return (self.images, self.verdicts, self.dead_letter, self.labels)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    group_id: str = "dmguard"
    session_timeout_ms: int = 6000  # a group join takes about half of this on Tansu
    heartbeat_interval_ms: int = 1500
    auto_offset_reset: str = "earliest"
    acks: str = "all"
    linger_ms: int = 5
    client_extra: dict[str, Any] = field(default_factory=dict)  # security_protocol, sasl_* ...

    def __repr__(self) -> str:
        shown = {
            k: ("***" if any(h in k for h in _SECRET_HINTS) else v)
            for k, v in self.client_extra.items()
        }
        return (
            f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, group_id={self.group_id!r}, "
            f"session_timeout_ms={self.session_timeout_ms}, client_extra={shown})"
        )

    def common(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers.split(","), **self.client_extra}


@dataclass(frozen=True)
class WorkerSettings:
    """What each DetectorWorker needs; travels to the actor through its constructor."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: Topics = field(default_factory=Topics)
    registry: str = DEFAULT_REGISTRY
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 32
    max_wait_ms: int = 50
    fetch_threads: int = 8
    max_in_flight: int = 0  # fetches in flight; 0: 4 x max_batch
    commit_interval_s: float = 1.0
    registry_poll_s: float = 2.0
    device: str = "auto"
    threads: int = 1  # CPU threads for the encoder
    partitions: tuple[int, ...] = ()  # input partitions this worker reads (set by the pool)
    feature_log: str | None = None  # folder or URI for (id, embedding, score, head) rows; None: off
    state_dir: str | None = None  # crash-loop breaker state; None: <registry>/worker-state
    exactly_once: bool = False  # transactional outputs + offsets (actors.delivery)
    # Features of recently seen files by content hash, per worker (actors.repeats); 0: off
    cache_mb: float = 64.0
    # What the fetched file declares (C2PA, XMP, generator metadata): docs/provenance.md
    provenance: ProvenanceSettings = field(default_factory=ProvenanceSettings)

    @property
    def in_flight_cap(self) -> int:
        return self.max_in_flight or 4 * self.max_batch


@dataclass(frozen=True)
class ServeSettings:
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    # Ray custom resources each worker reserves, e.g. {"detector": 1} to keep the workers
    # on the nodes that offer it (`ray start --resources`).
    worker_resources: dict[str, float] = field(default_factory=dict)
    # How long a new worker may take to come up and load its model: on a cluster that
    # means a new node joining and pulling a CUDA image, minutes rather than seconds.
    worker_start_timeout_s: float = 300.0
    # `--workers auto`: grow and shrink between these with the stream (actors.scaling);
    # max_workers 0: one per input partition.
    autoscale: bool = False
    min_workers: int = 1
    max_workers: int = 0
    scale_window_s: float = 30.0  # the autoscaler judges the last this many seconds
    scale_cooldown_s: float = 60.0  # and decides again no sooner than this after a resize
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9464
    stats_interval_s: float = 1.0


_ENV_PREFIX = "DMGUARD_KAFKA_"
_CLIENTS = ("producer", "consumer", "admin")
# Settings dmguard sets itself from its own flags: an environment copy would silently win.
_MANAGED = {"bootstrap_servers": "set --bootstrap or DMGUARD_BOOTSTRAP instead"}
# Settings whose kafka-python default is None but whose values are not strings.
_NONE_DEFAULT_KINDS = {
    "api_version": "version",  # "2.8" -> (2, 8)
    "receive_buffer_bytes": "int",
    "send_buffer_bytes": "int",
    "ssl_context": "object",  # an ssl.SSLContext
    "sasl_oauth_token_provider": "object",
}
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _looks_secret(name: str) -> bool:
    return any(h in name for h in _SECRET_HINTS)


def kafka_client_settings() -> dict[str, tuple[str, frozenset[str]]]:
    """Every kafka-python client setting: name -> (kind, the clients that know it).

    The kind comes from the setting's default in `KafkaProducer.DEFAULT_CONFIG`,
    `KafkaConsumer.DEFAULT_CONFIG` and `KafkaAdminClient.DEFAULT_CONFIG`: "bool",
    "int", "float", "str" (a None default counts as "str" unless listed in
    `_NONE_DEFAULT_KINDS`), "version", or "object" (a list, tuple, class,
    callable or instance: not expressible as an environment variable).
    """
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    defaults: dict[str, list[Any]] = {}
    known: dict[str, set[str]] = {}
    for client, cls in zip(_CLIENTS, (KafkaProducer, KafkaConsumer, KafkaAdminClient), strict=True):
        for name, default in cls.DEFAULT_CONFIG.items():
            defaults.setdefault(name, []).append(default)
            known.setdefault(name, set()).add(client)
    out = {}
    for name, values in defaults.items():
        given = [v for v in values if v is not None]
        if name in _NONE_DEFAULT_KINDS:
            kind = _NONE_DEFAULT_KINDS[name]
        elif not given:
            kind = "str"
        elif isinstance(given[0], bool):
            kind = "bool"
        elif isinstance(given[0], int):
            kind = "int"
        elif isinstance(given[0], float):
            kind = "float"
        elif isinstance(given[0], str):
            kind = "str"
        else:
            kind = "object"
        out[name] = (kind, frozenset(known[name]))
    return out


def _parse(kind: str, value: str) -> Any:
    """`value` as a setting of `kind`; ValueError when it is not one."""
    if kind == "str":
        return value  # verbatim: a password "123456" stays a string
    text = value.strip()
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("expected true/false, 1/0, yes/no or on/off")
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "version":
        parts = tuple(int(p) for p in text.split("."))
        if not 2 <= len(parts) <= 3:
            raise ValueError("expected a broker version such as 2.8 or 3.6.0")
        return parts
    raise ValueError(f"cannot parse a {kind}")


def kafka_extra_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Extra kafka-python client settings from `DMGUARD_KAFKA_<NAME>` variables.

    `DMGUARD_KAFKA_SASL_MECHANISM=PLAIN` -> {"sasl_mechanism": "PLAIN"}. Each
    value is typed by the setting it names (see `kafka_client_settings`):
    booleans accept true/false, 1/0, yes/no, on/off (any case); integers and
    floats must parse as such; strings are kept verbatim, so a numeric
    password stays a string; `api_version` is a dotted version ("2.8").

    The settings go to every client (producer, consumer and admin), so a name
    only some clients know is refused, as are unknown names, settings that
    take Python objects, settings dmguard sets from its own flags, and values
    that do not parse. Each refusal is a ConfigError naming the variable; a
    value whose name looks secret (password, secret, token, key) is never
    quoted.
    """
    environ = os.environ if environ is None else environ
    settings = kafka_client_settings()
    out: dict[str, Any] = {}
    for var in sorted(environ):
        if not var.startswith(_ENV_PREFIX) or len(var) == len(_ENV_PREFIX):
            continue
        name = var[len(_ENV_PREFIX) :].lower()
        value = environ[var]
        if name in _MANAGED:
            raise ConfigError(f"{var}: {_MANAGED[name]}")
        if name not in settings:
            close = difflib.get_close_matches(name, settings, n=1)
            hint = f" (did you mean {_ENV_PREFIX}{close[0].upper()}?)" if close else ""
            raise ConfigError(f"{var}: kafka-python has no client setting {name!r}{hint}")
        kind, clients = settings[name]
        if clients != frozenset(_CLIENTS):
            only = " and ".join(c for c in _CLIENTS if c in clients)
            raise ConfigError(
                f"{var}: {name} is a setting of the Kafka {only} only, and "
                f"{_ENV_PREFIX}* settings go to every client (producer, consumer and admin)"
            )
        if kind == "object":
            raise ConfigError(
                f"{var}: {name} takes a Python object; it cannot be set from the environment"
            )
        try:
            out[name] = _parse(kind, value)
        except ValueError as exc:
            shown = "its value" if _looks_secret(name) else repr(value)
            expected = {"int": "an integer", "float": "a number"}.get(kind, kind)
            detail = str(exc) if kind in ("bool", "version") else f"expected {expected}"
            raise ConfigError(f"{var}: cannot use {shown} for {name}: {detail}") from None
    return out


def default_bootstrap() -> str:
    return os.environ.get("DMGUARD_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def default_registry() -> str:
    return os.environ.get("DMGUARD_REGISTRY", DEFAULT_REGISTRY)


def default_feature_log() -> str:
    return os.environ.get("DMGUARD_FEATURE_LOG", "./feature-log")


def default_state_dir() -> str | None:
    """None: the workers use REGISTRY/worker-state."""
    return os.environ.get("DMGUARD_STATE_DIR")


def default_models_dir() -> str:
    return os.environ.get("DMGUARD_MODELS", ".cache/models")


def offline_weights() -> Path | None:
    """The offline CLIP weights, when `dmguard models` has fetched them."""
    onnx = Path(default_models_dir()) / "clip-vit-b16-int8.onnx"
    return onnx.resolve() if onnx.exists() else None


# ----------------------------------------------------------------- building settings
def kafka_settings(
    bootstrap: str | None = None, *, client_extra: dict[str, Any] | None = None, **overrides
) -> KafkaSettings:
    """Kafka settings for `bootstrap` (None: $DMGUARD_BOOTSTRAP or the default), with the
    extra client settings of the `DMGUARD_KAFKA_*` variables unless `client_extra` is
    given (an embedded broker takes `{}`); `overrides` are KafkaSettings fields."""
    return KafkaSettings(
        bootstrap_servers=bootstrap or default_bootstrap(),
        client_extra=kafka_extra_from_env() if client_extra is None else client_extra,
        **overrides,
    )


def fetch_policy(
    *,
    allow_private_urls: bool = False,
    allow_network: tuple[str, ...] | list[str] | None = (),
    allow_file_urls: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    fetch_timeout: float = FetchPolicy.total_timeout_s,
) -> FetchPolicy:
    """The fetch policy of `serve`'s flags of the same names (`--allow-network` repeatable)."""
    return FetchPolicy(
        allow_private=allow_private_urls,
        allowed_networks=tuple(allow_network or ()),
        allow_file=allow_file_urls,
        max_bytes=max_bytes,
        total_timeout_s=fetch_timeout,
        connect_timeout_s=min(FetchPolicy.connect_timeout_s, fetch_timeout),
    )


def serve_settings(
    *,
    bootstrap: str | None = None,
    client_extra: dict[str, Any] | None = None,
    group_id: str = KafkaSettings.group_id,
    registry: str | None = None,
    **flags: Any,
) -> ServeSettings:
    """Everything `serve` runs with, from its flags' values; the keywords are the flags'
    names (`max_batch` is `--max-batch`). Besides the four above: the fields of
    ServeSettings (`workers`, `metrics_port`, ...), the keywords of `fetch_policy`, and
    the other fields of WorkerSettings (`max_batch`, `feature_log`, `state_dir`, ...);
    anything else is a TypeError. Left out: the bootstrap servers and registry from
    `DMGUARD_BOOTSTRAP` / `DMGUARD_REGISTRY`, Kafka client extras from `DMGUARD_KAFKA_*`,
    the rest from the dataclasses' defaults (`feature_log=None` logs no features,
    `state_dir=None` keeps the crash-loop state in REGISTRY/worker-state)."""
    fetch = {k: flags.pop(k) for k in _FETCH_FLAGS & flags.keys()}
    serve = {k: flags.pop(k) for k in _SERVE_FIELDS & flags.keys()}
    worker = WorkerSettings(
        kafka=kafka_settings(bootstrap, client_extra=client_extra, group_id=group_id),
        registry=registry or default_registry(),
        fetch=fetch_policy(**fetch),
        **flags,
    )
    return ServeSettings(worker=worker, **serve)


_FETCH_FLAGS = set(inspect.signature(fetch_policy).parameters)
_SERVE_FIELDS = {f.name for f in fields(ServeSettings)} - {"worker"}
