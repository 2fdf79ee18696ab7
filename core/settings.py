"""Typed settings in four sections; every field can be set by an env var ``DUPN_<FIELD>``.

Sections: :class:`KafkaSettings` (where the cluster is, how to reach it, topic names, group timeouts),
:class:`WorkerSettings` (what a worker runs, how it batches, how it encodes the vectors it publishes),
:class:`HttpSettings` (its API) and :class:`ModelSettings` (which checkpoint, and the update policy that
turns it into served vectors).
Each section validates itself when it is built, so a bad value fails at load time with the variable's
name, not later as a handshake error or a wrong vector.

Field names are unique across sections, so env vars stay flat (``DUPN_BROKER``, ``DUPN_WEB_PORT``,
``DUPN_UPDATE_MODE``) and :meth:`Settings.replace` takes flat names (CLI flags).

Defaults run the embedded single-machine setup with no flags at all. The same code points at a real
Kafka cluster by changing ``DUPN_BROKER`` (and the ``DUPN_KAFKA_*`` security fields); nothing branches
on which broker it is. Secrets (the SASL password, the API token) are kept out of every repr.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "DUPN_"
ROLES = frozenset({"vectors", "ppp"})
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
UPDATE_MODES = ("exact", "incremental")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# core.contracts.VECTOR_ENCODINGS, spelled out: importing contracts here would load numpy into every CLI
# start (ops.cli imports numpy lazily); tests/unit/test_vector_encoding.py checks the two agree
VECTOR_ENCODINGS = ("json", "f32", "f16")


@dataclass(frozen=True)
class KafkaSettings:
    """The cluster, the client security options, the topics and the consumer-group timeouts."""

    broker: str = "kafka://127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""  # CA bundle to verify the brokers (default: the system's)
    kafka_ssl_certfile: str = ""  # client certificate, for brokers that require mutual TLS
    kafka_ssl_keyfile: str = ""
    partitions: int = 8
    # replicas per topic when `dupn topics create` makes it; -1 = the cluster's default.replication.factor
    # (a real cluster's 3, the embedded broker's 1)
    replication_factor: int = -1
    events_topic: str = "behavior-events"
    vectors_topic: str = "user-vectors"
    dlq_topic: str = "behavior-events-dlq"
    ppp_topic: str = "user-purchasing-power"  # compacted; written by the purchasing-power agent
    app_id: str = "dupn"
    # Faust group timeouts: defaults take ~30 s to join a group; these join in seconds
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 5.0
    fetch_max_wait_ms: int = 20  # longest a worker's fetch waits for data (see streams.seams)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise ValueError("DUPN_REPLICATION_FACTOR must be >= 1, or -1 for the cluster's default")
        if self.fetch_max_wait_ms < 0:
            raise ValueError("DUPN_FETCH_MAX_WAIT_MS must be >= 0")
        if not 0 < self.heartbeat_interval_s < self.session_timeout_s:
            raise ValueError("DUPN_HEARTBEAT_INTERVAL_S must be > 0 and below DUPN_SESSION_TIMEOUT_S")
        if self.rebalance_timeout_s <= 0:
            raise ValueError("DUPN_REBALANCE_TIMEOUT_S must be > 0")
        _check_kafka_security(self)

    @property
    def bootstrap(self) -> str:
        """host:port list for plain Kafka clients (no ``kafka://`` scheme)."""
        return ",".join(u.split("://", 1)[-1] for u in self.broker.split(";") if u)

    @property
    def broker_host_port(self) -> tuple[str, int]:
        first = self.bootstrap.split(",")[0]
        host, _, port = first.rpartition(":")
        return host or "127.0.0.1", int(port or 9092)

    # -- Kafka security: the only place settings become client options (README "Kafka security") --
    def kafka_client_options(self) -> dict[str, Any]:
        """SASL/TLS keyword arguments for kafka-python clients (producer, consumer, admin)."""
        opts: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            opts["sasl_mechanism"] = self.kafka_sasl_mechanism
            opts["sasl_plain_username"] = self.kafka_sasl_username
            opts["sasl_plain_password"] = self.kafka_sasl_password
        for name in ("cafile", "certfile", "keyfile"):
            value = getattr(self, f"kafka_ssl_{name}")
            if value:
                opts[f"ssl_{name}"] = value
        return opts

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context for SSL / SASL_SSL (CA and client certificate from settings), else None."""
        if "SSL" not in self.kafka_security_protocol:
            return None
        context = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
        if self.kafka_ssl_certfile:
            context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile or None)
        return context

    def faust_broker_credentials(self) -> Any:
        """The same in Faust's ``broker_credentials`` form (Faust hands it to aiokafka); None for PLAINTEXT."""
        import faust

        proto = self.kafka_security_protocol
        if proto == "PLAINTEXT":
            return None
        if proto.startswith("SASL"):
            return faust.SASLCredentials(
                username=self.kafka_sasl_username,
                password=self.kafka_sasl_password,
                mechanism=self.kafka_sasl_mechanism,
                ssl_context=self.kafka_ssl_context(),
            )
        return faust.SSLCredentials(self.kafka_ssl_context())


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker runs, where it keeps its files, how it batches and logs, and how it encodes its vectors."""

    home: str = "var"  # broker pid/logs, worker data, demo model live under here
    data_dir: str = ""  # default: <home>/data
    roles: str = "vectors,ppp"  # which agents a worker runs: vectors (events -> vectors), ppp (vectors -> levels)
    batch_max: int = 2000
    intake: str = "lean"  # lean (batches from the fetch loop, streams/intake.py) | stream (a Faust agent)
    batch_within_s: float = 0.01  # stream intake: take_events' wait for a full batch
    batch_linger_s: float = 0.0  # lean intake: wait for more before taking a non-full batch (0 = natural batching)
    cache_users: int = 20_000
    intake_max_bytes: int = 64 << 20  # lean intake: bytes (keys + values) buffered before the fetch loop waits
    rocksdb_block_cache_bytes: int = 64 << 20  # per table partition (Faust's default: 2 GiB each)
    poison_attempts: int = 3  # a batch that failed this many times is bisected, its failing events sent to the DLQ
    max_future_ms: int = 600_000
    log_format: str = "text"  # text | json
    log_level: str = "info"
    # where an event's time goes (dupn_stage_seconds{stage}): off by default, and then nothing is timed
    trace_stages: bool = False
    # what the worker writes to user-vectors: json (contract v1, ~1.5 KB) | f32 | f16 (binary contract v2).
    # Every reader of ours reads all three; upgrade readers elsewhere before changing it (README, data contracts)
    vector_encoding: str = "json"

    def __post_init__(self) -> None:
        if not self.role_set or not self.role_set <= ROLES:
            raise ValueError(f"roles must be a non-empty subset of {sorted(ROLES)}, not {self.roles!r}")
        if self.intake not in ("lean", "stream"):
            raise ValueError(f"intake must be lean or stream, not {self.intake!r}")
        if self.batch_max < 1:
            raise ValueError("DUPN_BATCH_MAX must be >= 1")
        if self.cache_users < 0:
            raise ValueError("DUPN_CACHE_USERS must be >= 0")
        if self.intake_max_bytes < 1:
            raise ValueError("DUPN_INTAKE_MAX_BYTES must be >= 1")
        if self.rocksdb_block_cache_bytes < 1:
            raise ValueError("DUPN_ROCKSDB_BLOCK_CACHE_BYTES must be >= 1")
        if self.poison_attempts < 1:
            raise ValueError("DUPN_POISON_ATTEMPTS must be >= 1")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"DUPN_LOG_FORMAT must be text or json, not {self.log_format!r}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"DUPN_LOG_LEVEL must be debug, info, warning, error or critical, not {self.log_level!r}")
        if self.vector_encoding not in VECTOR_ENCODINGS:
            raise ValueError(
                f"DUPN_VECTOR_ENCODING must be one of {', '.join(VECTOR_ENCODINGS)}, not {self.vector_encoding!r}"
            )

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.roles.split(",") if r.strip())

    @property
    def home_path(self) -> Path:
        return Path(self.home).resolve()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve() if self.data_dir else self.home_path / "data"


@dataclass(frozen=True)
class HttpSettings:
    """The worker's HTTP API and where clients find the workers."""

    web_host: str = "127.0.0.1"
    web_port: int = 6066
    worker_urls: str = "http://127.0.0.1:6066"  # where `dupn vector` asks (comma-separated)
    api_token: str = field(default="", repr=False)  # when set, every endpoint but /healthz needs a bearer token
    # re-pooling reads (?at, ?query, /explain) computed at once per worker; past it: 429 + Retry-After
    http_max_concurrent_reads: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.web_port <= 65535:
            raise ValueError(f"DUPN_WEB_PORT must be a TCP port, not {self.web_port}")
        if self.http_max_concurrent_reads < 1:
            raise ValueError("DUPN_HTTP_MAX_CONCURRENT_READS must be >= 1")

    @property
    def web_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"


@dataclass(frozen=True)
class ModelSettings:
    """Which checkpoint a worker serves, and the update policy that makes its vectors."""

    model_path: str = ""  # default: <home>/models/demo
    model_registry: str = ""  # checkpoints by model_version (*/config.json); default: <home>/models
    model_poll_s: float = 5.0  # how often a worker looks for a new checkpoint at model_path (rollout/rollback)
    update_mode: str = "incremental"  # exact | incremental
    reanchor_every: int = 25
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.update_mode not in UPDATE_MODES:
            raise ValueError(f"update_mode must be exact or incremental, not {self.update_mode!r}")
        if self.reanchor_every < 1:
            raise ValueError("DUPN_REANCHOR_EVERY must be >= 1")
        if self.torch_threads < 1:
            raise ValueError("DUPN_TORCH_THREADS must be >= 1")


SECTIONS: dict[str, type] = {
    "kafka": KafkaSettings,
    "worker": WorkerSettings,
    "http": HttpSettings,
    "model": ModelSettings,
}


def _field_sections() -> dict[str, str]:
    """Field name → its section; names are unique across sections (env vars stay flat)."""
    owner: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if f.name in owner:
                raise TypeError(f"setting {f.name} is in both {owner[f.name]} and {section}")
            owner[f.name] = section
    return owner


FIELD_SECTIONS = _field_sections()


@dataclass(frozen=True)
class Settings:
    """All settings, by section; paths that default under ``home`` are derived here."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    model: ModelSettings = field(default_factory=ModelSettings)

    @property
    def home_path(self) -> Path:
        return self.worker.home_path

    @property
    def data_path(self) -> Path:
        return self.worker.data_path

    @property
    def model_dir(self) -> Path:
        return Path(self.model.model_path).resolve() if self.model.model_path else self.home_path / "models" / "demo"

    @property
    def model_registry_path(self) -> Path:
        registry = self.model.model_registry
        return Path(registry).resolve() if registry else self.home_path / "models"

    @property
    def faust_app_id(self) -> str:
        """A PPP-only worker joins its own consumer group: Faust assumes every member runs the same agents."""
        return self.kafka.app_id if "vectors" in self.worker.role_set else f"{self.kafka.app_id}-ppp"

    def replace(self, **changes: Any) -> Settings:
        """A copy with flat-named fields changed (None = unchanged); each changed section re-validates."""
        by_section: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if value is None:
                continue
            if name not in FIELD_SECTIONS:
                raise TypeError(f"unknown setting {name!r}")
            by_section.setdefault(FIELD_SECTIONS[name], {})[name] = value
        return dataclasses.replace(
            self, **{sec: dataclasses.replace(getattr(self, sec), **vals) for sec, vals in by_section.items()}
        )

    def env(self) -> dict[str, str]:
        """The ``DUPN_*`` variables that reproduce these settings in a child process (secrets included)."""
        out: dict[str, str] = {}
        for section in SECTIONS:
            values = getattr(self, section)
            for f in fields(values):
                out[ENV_PREFIX + f.name.upper()] = str(getattr(values, f.name))
        return out


def load_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``DUPN_*`` env vars, then explicit overrides (CLI flags); each section validates itself."""
    source = os.environ if env is None else env
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = source.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.name, raw, hints[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None and FIELD_SECTIONS.get(k) == section})
        sections[section] = cls(**values)
    unknown = sorted(k for k in overrides if k not in FIELD_SECTIONS)
    if unknown:
        raise TypeError(f"unknown settings {unknown}")
    return Settings(**sections)


def _coerce(name: str, raw: str, typ: Any) -> Any:
    try:
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return raw
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected {typ.__name__}") from exc


def _check_kafka_security(s: KafkaSettings) -> None:
    """Refuse half-configured security at startup rather than as a handshake error later."""
    proto, mech = s.kafka_security_protocol, s.kafka_sasl_mechanism
    if proto not in SECURITY_PROTOCOLS:
        raise ValueError(f"DUPN_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, not {proto!r}")
    if proto.startswith("SASL"):
        if mech not in SASL_MECHANISMS:
            raise ValueError(
                f"DUPN_KAFKA_SECURITY_PROTOCOL={proto} needs DUPN_KAFKA_SASL_MECHANISM in {', '.join(SASL_MECHANISMS)}"
            )
        if not s.kafka_sasl_username:
            raise ValueError(f"DUPN_KAFKA_SECURITY_PROTOCOL={proto} needs DUPN_KAFKA_SASL_USERNAME (and _PASSWORD)")
    elif mech:
        raise ValueError(
            f"DUPN_KAFKA_SASL_MECHANISM={mech} needs DUPN_KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT"
        )
    if "SSL" not in proto and (s.kafka_ssl_cafile or s.kafka_ssl_certfile):
        raise ValueError("DUPN_KAFKA_SSL_* files are set but DUPN_KAFKA_SECURITY_PROTOCOL is not SSL or SASL_SSL")
    if s.kafka_ssl_keyfile and not s.kafka_ssl_certfile:
        raise ValueError("DUPN_KAFKA_SSL_KEYFILE needs DUPN_KAFKA_SSL_CERTFILE")
    for name in ("cafile", "certfile", "keyfile"):
        path = getattr(s, f"kafka_ssl_{name}")
        if path and not Path(path).is_file():
            raise ValueError(f"DUPN_KAFKA_SSL_{name.upper()}={path}: no such file")
