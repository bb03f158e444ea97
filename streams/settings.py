"""Worker configuration: one pydantic-settings object (env `GENREC_*`, overridden by CLI flags).

Defaults are tuned for the embedded broker (docs/architecture.md, Brokers): a short fetch wait, short group
timeouts. The producers follow the broker the worker talks to (`broker_kind`, detected at start by
streams/worker.py): one-record changelog batches on Tansu, normal batching with an idempotent producer on Apache
Kafka (`producer_profile`); each producer setting left unset takes that broker's value.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from genrec.schemas.messages import (
    DEADLETTER_TOPIC,
    EVENTS_TOPIC,
    MODELS_TOPIC,
    REPLY_TOPIC_PREFIX,
    REQUESTS_TOPIC,
    RESULTS_TOPIC,
)
from genrec.streams.broker_kind import BrokerKind, BrokerKindSetting
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def default_bootstrap() -> str:
    return os.environ.get("GENREC_BOOTSTRAP", "127.0.0.1:9092")


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# Files of the data sets genrec reads (model/data.py) and of common interaction dumps. A state folder holding
# one is a data set folder given by mistake: Faust would write RocksDB files into it, and every later worker
# pointed there would reuse that stale state.
_DATASET_NAMES = frozenset({"u.data", "u.item", "u.user", "ratings.dat", "movies.dat", "users.dat",
                            "interactions.csv", "ratings.csv"})
_DATASET_SUFFIXES = (".tsv", ".tsv.gz", ".csv", ".csv.gz", ".txt.gz", ".dat", ".parquet", ".jsonl", ".jsonl.gz")
# A state folder is small at its top two levels (Faust: v1/tables/<table>-<partition>.db); bound the scan so
# that a huge folder given by mistake costs milliseconds, not a walk of the disk.
_SCAN_LIMIT = 2000


class StateDirError(ValueError):
    """The state folder given to a worker is not one (it holds a data set's files)."""


def _looks_like_dataset_file(name: str) -> bool:
    low = name.lower()
    return low in _DATASET_NAMES or low.endswith(_DATASET_SUFFIXES)


def check_state_dir(path: Path) -> Path:
    """Refuse a folder that holds data-set files (at its top or one level down) as a worker's state folder.

    One level down as well: `../shared/data` holds `ml-100k/u.data`. A missing or empty folder is fine
    (Faust creates it); RocksDB's own files never match.
    """
    if not path.is_dir():
        return path
    for entry in itertools.islice(_scan(path), 4 * _SCAN_LIMIT):
        if _looks_like_dataset_file(entry.name) and entry.is_file():
            raise StateDirError(
                f"state folder {str(path)!r} holds data-set files ({entry.relative_to(path)}): it looks like a "
                "data set folder (--data-dir of the other commands). Give the worker a folder of its own for "
                "its RocksDB state with --state-dir (env GENREC_STATE_DIR)."
            )
    return path


def _scan(path: Path) -> Iterator[Path]:
    """The folder's entries, then its subfolders' entries, at most _SCAN_LIMIT of each listing."""
    try:
        top = list(itertools.islice(path.iterdir(), _SCAN_LIMIT))
    except OSError:
        return
    yield from top
    for sub in top:
        if sub.is_dir() and not sub.is_symlink():
            try:
                yield from itertools.islice(sub.iterdir(), _SCAN_LIMIT)
            except OSError:
                continue


# Tansu: a v2 record batch header alone is 61 bytes, so a second record never fits next to the first one.
TANSU_MAX_BATCH_BYTES = 64
# Apache Kafka: what Kafka Streams gives its changelog producer (linger.ms=100), with batches large enough to
# use it: a changelog record is a user's whole history (kilobytes), and aiokafka, unlike the Java producer,
# holds the next send while a partition's full batch is in flight (one request per broker at a time), so 16 KiB
# batches of ~3 records each cost a produce request every few events. Measured on the 2-core box with one worker
# (BENCHMARKS.md "Streaming worker on Apache Kafka"): worker CPU per event 721 µs with one-record batches,
# ~490 µs with 16 KiB / 5 ms, ~370-430 µs with 512 KiB / 100 ms; the broker's fell from ~490 µs to ~40-170 µs.
# Changelog latency only delays commits (a commit's flush waits out the linger): serving reads the local RocksDB.
KAFKA_MAX_BATCH_BYTES = 512 * 1024
KAFKA_LINGER_MS = 100


@dataclass(frozen=True)
class ProducerProfile:
    """How the worker's producers send, for the broker it talks to (StreamSettings.producer_profile)."""

    broker_kind: BrokerKind
    # Faust's producer: the table changelogs (and the trainer's model versions).
    changelog_max_batch_size: int
    changelog_linger_ms: int
    # Every producer: results, forwards and dead letters (KafkaOutput) too.
    compression: Compression
    idempotence: bool

    @property
    def compression_type(self) -> str | None:
        """aiokafka's `compression_type` (None: uncompressed)."""
        return None if self.compression == "none" else self.compression


class StreamSettings(BaseSettings):
    """Everything a worker (or a client of its topics) needs; every bound is configurable."""

    # hide_input_in_errors: a model-level error would otherwise echo every input, the password included.
    model_config = SettingsConfigDict(
        env_prefix="GENREC_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    # Where and who.
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = Field(default="genrec", min_length=1, description="Faust app id = consumer group")
    worker_id: str = Field(default_factory=_default_worker_id, min_length=1, max_length=128)
    role: Literal["infer", "trainer"] = "infer"
    # The worker's own RocksDB state (Faust's datadir). Never a data set folder: see check_state_dir.
    state_dir: Path = Path("genrec-state")
    checkpoint: Path | None = None
    # Model versions (issue 4): the directory the trainer publishes into; a ModelVersion's path must lie in it.
    # Without it an infer worker serves --checkpoint only and does not follow genrec.models.
    model_store: Path | None = None
    follow_models: bool = True
    model_poll_s: float = Field(default=0.5, gt=0, le=60)
    log_level: str = "info"
    # json: one JSON object per log line (time, level, logger, message, process, worker_id; streams/logs.py).
    log_format: Literal["text", "json"] = "text"

    # Topics (README, Messages).
    events_topic: str = EVENTS_TOPIC
    requests_topic: str = REQUESTS_TOPIC
    results_topic: str = RESULTS_TOPIC
    deadletter_topic: str = DEADLETTER_TOPIC
    models_topic: str = MODELS_TOPIC
    # A request's `reply_to` topic is written to (besides the results topic) only when its name starts with this
    # prefix and is none of the worker's own topics (streams/replies.py); empty: no replies at all. Clients
    # (genrec/client.py) create `<prefix><uuid>` topics, so their user needs create/delete/read on the prefix,
    # and the worker's user write on it.
    reply_topic_prefix: str = Field(default=REPLY_TOPIC_PREFIX, max_length=200, pattern=r"^[A-Za-z0-9._-]*$")
    # The longest a reply may take (existence check, metadata, delivery); a slower one is dropped and counted.
    # Replies go through a producer of their own, never on the commit path (streams/replies.py).
    reply_timeout_s: float = Field(default=5.0, gt=0, le=120)
    # Events, requests and the history table's changelog share this count: co-partitioning by user.
    partitions: int = Field(default=6, ge=1, le=1024)
    replication: int = Field(default=1, ge=1, le=16)
    standby_replicas: int = Field(default=1, ge=0, le=8)

    # Inference batching.
    max_batch: int = Field(default=64, ge=1, le=4096)
    max_wait_ms: float = Field(default=10.0, ge=0.0, le=60_000.0)
    # Requests received but not yet inferred; beyond this the infer agent stops pulling (backpressure).
    max_pending: int = Field(default=1024, ge=1)
    inference_timeout_s: float = Field(default=60.0, gt=0)
    # A record (an event, or a request's inference) that fails this many times is dead-lettered as `poison`.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # History writes are coalesced per user over a run of events, like Kafka Streams' record cache: the run is
    # written and its events acked before the next offset commit (every `commit_interval_s`, a stop, a revoke), or
    # sooner after this many events, or after `ingest_coalesce_ms` when set; reads see the held writes at once.
    # 1 event writes every event through (streams/app.py, TableStore). Memory: one history per user held (about
    # 4 KB at history_len 200), so at most ~40 MB at the default bound.
    ingest_coalesce_max: int = Field(default=10_000, ge=1, le=100_000)
    ingest_coalesce_ms: float | None = Field(default=None, gt=0.0, le=60_000.0)
    # /health answers 503 when a piece of work (an event, an inference batch) runs longer than this.
    health_stuck_s: float = Field(default=180.0, gt=0)
    torch_threads: int | None = Field(default=None, ge=1)
    # Where the model serves (model/device.py): auto = a CUDA GPU when torch sees one; "cuda" without a GPU fails
    # the model load with the reason. Env GENREC_DEVICE, flag --device.
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # The model runs in a child process with a GIL of its own (streams/inference_process.py); off: on a
    # thread of the worker process, where every torch op waits for the GIL whenever the event loop holds it.
    inference_process: bool = True

    # Per-user state.
    history_len: int = Field(default=200, ge=1, le=65_535, description="L: events kept per user")
    dedup_ids: int = Field(default=64, ge=0, le=65_535, description="recent event ids kept per user")
    queries_as_requests: bool = True
    query_k: int = Field(default=10, ge=1, le=1000, description="k for a query event served as a search")
    query_exclude_seen: bool = True
    # Events and requests stamped further ahead of this worker's clock are dead-lettered (out_of_bounds).
    max_ahead_s: float = Field(default=86_400.0, gt=0, description="allowed clock skew of producers, seconds")

    # Faust web.
    # 0 (or "auto"): a free port, logged as `web port: N` and written to STATE_DIR/web-port (streams/web_port.py).
    web_port: int = Field(default=6066, ge=0, le=65_535)
    web_bind: str = "0.0.0.0"
    web_enabled: bool = True

    # Kafka clients. The broker: `auto` asks it at start (streams/broker_kind.py); `tansu` / `kafka` say it.
    broker_kind: BrokerKindSetting = "auto"
    # Unset (None): the broker's value (producer_profile). On Tansu 64 bytes, so that every changelog batch
    # holds one record (its end-offset bug, docs/architecture.md "Brokers"), no linger, no compression, no
    # idempotence (today's behaviour there); on Kafka 512 KiB, 100 ms, idempotent (acks=all, no duplicates from
    # retries). Compression stays off on both unless set: on loopback gzip, lz4 and zstd each cost the worker
    # 15-60 µs more CPU per event and saved nothing measurable (lz4/zstd/snappy need the `cramjam` package).
    producer_max_batch_size: int | None = Field(default=None, ge=1)
    producer_linger_ms: int | None = Field(default=None, ge=0)
    producer_compression: Compression | None = None
    producer_idempotence: bool | None = None
    # Results, forwards and dead letters go through a second, normally batched producer (§6b).
    results_max_batch_size: int = Field(default=16_384, ge=1)
    results_linger_ms: int = Field(default=2, ge=0)
    fetch_max_wait_ms: int = Field(default=10, ge=0, le=30_000)
    session_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    rebalance_timeout_s: float = Field(default=20.0, gt=0)
    request_timeout_s: float = Field(default=40.0, gt=0)
    commit_interval_s: float = Field(default=1.0, gt=0)
    # A changelog restore with no progress for this long is logged and its partition re-fetched (recovery_watch).
    recovery_stall_s: float = Field(default=10.0, gt=0)
    # One RocksDB (with its own cache) per table per partition (§6b): keep partitions × this small.
    rocksdb_block_cache_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)

    # Security (from the environment; the password never appears in logs or reprs).
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @field_validator("web_port", mode="before")
    @classmethod
    def _auto_web_port(cls, v: Any) -> Any:
        return 0 if isinstance(v, str) and v.strip().lower() == "auto" else v

    @field_validator("state_dir")
    @classmethod
    def _state_dir_is_not_a_data_set(cls, v: Path) -> Path:
        return check_state_dir(v)

    @model_validator(mode="after")
    def _check(self) -> StreamSettings:
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError("heartbeat_interval_s must be below session_timeout_s")
        if self.session_timeout_s > self.request_timeout_s:
            raise ValueError("session_timeout_s cannot exceed request_timeout_s (Faust refuses it)")
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.security_protocol} needs GENREC_SASL_USERNAME and GENREC_SASL_PASSWORD")
        return self

    @classmethod
    def from_flags(cls, **flags: Any) -> StreamSettings:
        """Env first, then every flag the user actually gave (None = not given)."""
        return cls(**{k: v for k, v in flags.items() if v is not None})

    @property
    def producer_profile(self) -> ProducerProfile:
        """The producers' settings for `broker_kind`; `auto` not yet resolved counts as Tansu (safe anywhere)."""
        kafka = self.broker_kind == "kafka"

        def pick(value: Any, tansu: Any, on_kafka: Any) -> Any:
            return value if value is not None else (on_kafka if kafka else tansu)

        return ProducerProfile(
            broker_kind="kafka" if kafka else "tansu",
            changelog_max_batch_size=pick(self.producer_max_batch_size, TANSU_MAX_BATCH_BYTES, KAFKA_MAX_BATCH_BYTES),
            changelog_linger_ms=pick(self.producer_linger_ms, 0, KAFKA_LINGER_MS),
            compression=pick(self.producer_compression, "none", "none"),
            idempotence=pick(self.producer_idempotence, False, True),
        )

    @property
    def broker_url(self) -> str:
        return ";".join(f"kafka://{h.strip()}" for h in self.bootstrap.split(",") if h.strip())

    @property
    def bootstrap_servers(self) -> list[str]:
        return [h.strip() for h in self.bootstrap.split(",") if h.strip()]

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.security_protocol.endswith("SSL"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            ctx.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return ctx

    def aiokafka_security(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client talking to the same cluster."""
        kw: dict[str, Any] = {"security_protocol": self.security_protocol}
        ctx = self.ssl_context()
        if ctx is not None:
            kw["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None
            kw.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return kw

    def safe_dump(self) -> dict[str, Any]:
        """For logs: every setting except secrets."""
        d = self.model_dump(mode="json", exclude={"sasl_password"})
        d["sasl_password"] = "***" if self.sasl_password else None
        return d
