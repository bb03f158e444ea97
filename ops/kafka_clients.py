"""aiokafka client factories for the ops tools and the tests (docs/architecture.md, Brokers).

Two settings here exist only because of the embedded broker (Tansu), and both are harmless on
Apache Kafka:

- `one_record_batches`: after a produce request whose batch carries several records, Tansu reports
  the partition's end offset as the last batch's base offset + 1. Anything that compares offsets
  with the end offset (Faust table recovery, consumer lag, "did I read everything" checks) then goes
  wrong. A `max_batch_size` below the size of two records makes every batch hold exactly one.
- `fetch_max_wait_ms`: Tansu answers a fetch only when that wait runs out if data is sparse, so the
  aiokafka default (500 ms) becomes latency. Real Kafka answers as soon as data is there.

Security (SASL/TLS) comes from the environment so that the same tools run against a managed Kafka.
This module stays free of Faust: the worker configures its own clients in `streams`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "GENREC_BOOTSTRAP"

# A v2 record batch header alone is 61 bytes, so a second record never fits next to the first one.
ONE_RECORD_BATCH_BYTES = 64
# Small enough that a sparse topic adds no visible latency on Tansu; a busy one fills fetches anyway.
FAST_FETCH_MAX_WAIT_MS = 10

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# GSSAPI and OAUTHBEARER need more than a user name and a password: out of scope for env passthrough.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

ENV_SECURITY_PROTOCOL = "GENREC_KAFKA_SECURITY_PROTOCOL"
ENV_SASL_MECHANISM = "GENREC_KAFKA_SASL_MECHANISM"
ENV_SASL_USERNAME = "GENREC_KAFKA_SASL_USERNAME"
ENV_SASL_PASSWORD = "GENREC_KAFKA_SASL_PASSWORD"
ENV_SSL_CAFILE = "GENREC_KAFKA_SSL_CAFILE"
ENV_SSL_CERTFILE = "GENREC_KAFKA_SSL_CERTFILE"
ENV_SSL_KEYFILE = "GENREC_KAFKA_SSL_KEYFILE"


def _env_get(env: Mapping[str, str], name: str) -> str | None:
    # The worker's settings (streams.settings, prefix GENREC_) read the same values without `KAFKA_`:
    # accept those too, so one set of variables configures the worker and these tools alike.
    return env.get(name) or env.get(name.replace("GENREC_KAFKA_", "GENREC_", 1)) or None


class KafkaConfigError(ValueError):
    """The Kafka connection settings are inconsistent (bad protocol, missing credentials, …)."""


def default_bootstrap(env: Mapping[str, str] | None = None) -> str:
    """`GENREC_BOOTSTRAP` if set, else 127.0.0.1:9092 (README)."""
    env = os.environ if env is None else env
    return env.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


@dataclass(frozen=True)
class KafkaSecurity:
    """How to authenticate and encrypt; `repr` never shows the password."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise KafkaConfigError(
                f"{ENV_SECURITY_PROTOCOL}={self.security_protocol!r}: expected one of {SECURITY_PROTOCOLS}"
            )
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise KafkaConfigError(
                    f"{ENV_SASL_MECHANISM}={self.sasl_mechanism!r}: expected one of {SASL_MECHANISMS}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise KafkaConfigError(
                    f"{self.security_protocol} needs {ENV_SASL_USERNAME} and {ENV_SASL_PASSWORD}"
                )
        for env_name, path in (
            (ENV_SSL_CAFILE, self.ssl_cafile),
            (ENV_SSL_CERTFILE, self.ssl_certfile),
            (ENV_SSL_KEYFILE, self.ssl_keyfile),
        ):
            if path is not None and not os.path.isfile(path):
                raise KafkaConfigError(f"{env_name}={path!r} is not a file")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise KafkaConfigError(f"{ENV_SSL_KEYFILE} needs {ENV_SSL_CERTFILE}")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        env = os.environ if env is None else env
        return cls(
            security_protocol=(_env_get(env, ENV_SECURITY_PROTOCOL) or "PLAINTEXT").upper(),
            sasl_mechanism=(_env_get(env, ENV_SASL_MECHANISM) or "PLAIN").upper(),
            sasl_username=_env_get(env, ENV_SASL_USERNAME),
            sasl_password=_env_get(env, ENV_SASL_PASSWORD),
            ssl_cafile=_env_get(env, ENV_SSL_CAFILE),
            ssl_certfile=_env_get(env, ENV_SSL_CERTFILE),
            ssl_keyfile=_env_get(env, ENV_SSL_KEYFILE),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        # Without a CA file the system trust store is used (a managed Kafka with a public CA).
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
        if self.ssl_certfile is not None:  # mutual TLS
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by aiokafka's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.uses_sasl:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    def describe(self) -> str:
        """A line for logs and banners: protocol, mechanism, user — never the password."""
        if self.uses_sasl:
            return f"{self.security_protocol} ({self.sasl_mechanism}, user {self.sasl_username})"
        return self.security_protocol


def _security(security: KafkaSecurity | None) -> KafkaSecurity:
    return KafkaSecurity.from_env() if security is None else security


def make_producer(
    bootstrap: str,
    one_record_batches: bool,
    *,
    security: KafkaSecurity | None = None,
    **overrides: Any,
) -> AIOKafkaProducer:
    """A producer; `one_record_batches=True` whenever someone will trust the end offsets on Tansu.

    Must be called inside a running event loop (aiokafka binds to it). `overrides` win over
    everything here, e.g. `linger_ms`, `acks`, `value_serializer`.
    """
    kwargs: dict[str, Any] = {"bootstrap_servers": bootstrap, **_security(security).client_kwargs()}
    if one_record_batches:
        kwargs["max_batch_size"] = ONE_RECORD_BATCH_BYTES
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


def make_consumer(
    bootstrap: str,
    *topics: str,
    group_id: str | None = None,
    fetch_max_wait_ms: int = FAST_FETCH_MAX_WAIT_MS,
    security: KafkaSecurity | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer with a short fetch wait (see module docstring); subscribe by `topics` or assign later.

    Without a `group_id` nothing is committed and reading starts at the earliest offset, which is what
    tests and read-back tools want; pass `auto_offset_reset`/`enable_auto_commit` to change that.
    """
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": group_id is not None,
        **_security(security).client_kwargs(),
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(*topics, **kwargs)


def make_admin(
    bootstrap: str,
    *,
    security: KafkaSecurity | None = None,
    **overrides: Any,
) -> AIOKafkaAdminClient:
    """An admin client (topics, configs, consumer groups); call `await admin.start()` before use."""
    kwargs: dict[str, Any] = {"bootstrap_servers": bootstrap, **_security(security).client_kwargs()}
    kwargs.update(overrides)
    return AIOKafkaAdminClient(**kwargs)


@dataclass(frozen=True)
class ClusterInfo:
    cluster_id: str | None
    controller_id: int | None
    brokers: tuple[tuple[int, str, int], ...]


def _split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        raise KafkaConfigError(f"bootstrap address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partition ids of `topic` as the broker knows them now (empty when it does not exist).

    Not `await consumer.topics()` then `consumer.partitions_for_topic(topic)`: `topics()` reads the metadata
    into a separate object and leaves the consumer's own view as its bootstrap request filled it, with every
    topic on Tansu but none on Apache Kafka 4 (found by running the tests on both, tests/conftest.py).
    """
    cluster = await consumer._client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(topic) or ())


async def fetch_cluster_info(
    bootstrap: str,
    *,
    timeout_s: float = 5.0,
    security: KafkaSecurity | None = None,
) -> ClusterInfo:
    """One Kafka Metadata request (no topics, no auto-creation) to the first bootstrap address.

    A bare connection rather than a client: a client retries and logs errors on every failed
    attempt, while a readiness loop wants one quiet attempt it can time-box.
    """
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    host, port = _split_hostport(bootstrap.split(",")[0])
    kwargs = _security(security).client_kwargs()
    timeout_ms = max(1, int(timeout_s * 1000))
    async with asyncio.timeout(timeout_s):
        conn = await create_conn(host, port, request_timeout_ms=timeout_ms, **kwargs)
        try:
            response = await conn.send(MetadataRequest([], allow_auto_topic_creation=False))
        finally:
            conn.close()
    obj = response.to_object()
    brokers = tuple((b["node_id"], b["host"], b["port"]) for b in obj.get("brokers", []))
    return ClusterInfo(
        cluster_id=obj.get("cluster_id"),
        controller_id=obj.get("controller_id"),
        brokers=brokers,
    )


async def wait_for_kafka(
    bootstrap: str,
    *,
    timeout_s: float = 30.0,
    security: KafkaSecurity | None = None,
) -> ClusterInfo:
    """Retry `fetch_cluster_info` until a broker answers or `timeout_s` runs out (TimeoutError).

    Each attempt asks the next address of a comma-separated bootstrap list, as Kafka clients do: with one
    broker of a cluster down, the first address alone would never answer while the others serve.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_error: BaseException | None = None
    addresses = [a.strip() for a in bootstrap.split(",") if a.strip()] or [bootstrap]
    attempt = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"no Kafka broker answered at {bootstrap} in {timeout_s:.1f}s: {last_error!r}")
        address = addresses[attempt % len(addresses)]
        attempt += 1
        try:
            return await fetch_cluster_info(address, timeout_s=min(2.0, remaining), security=security)
        # KafkaError: the socket is open but the broker is not serving yet (or a handshake failed).
        except (OSError, TimeoutError, KafkaError) as exc:
            last_error = exc
        await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))


async def read_to_end(consumer: AIOKafkaConsumer, topic: str, start: Mapping[Any, int] | None = None, *,
                      timeout_s: float = 60.0, idle_s: float = 2.0) -> tuple[list[Any], dict[Any, int]]:
    """Every record of `topic` from `start` (TopicPartition → offset; None or missing: the beginning) up to the end
    offsets seen at the start, read by an assigned started consumer without a group.

    Returns the records (each partition's in offset order, partitions one after another as fetched) and each
    partition's position after the read (the next offset to read, never past the start's end offsets: records
    beyond are a later read's). Tansu's end offsets can run past the last record under batched produce (module
    docstring), so a read also ends after `idle_s` without records, and at `timeout_s` in any case.
    """
    from aiokafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in sorted(await topic_partitions(consumer, topic))]
    if not tps:
        return [], {}
    consumer.assign(tps)
    for tp in tps:
        offset = (start or {}).get(tp)
        if offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)
    ends = await consumer.end_offsets(tps)
    out: list[Any] = []
    loop = asyncio.get_running_loop()
    t_end = loop.time() + timeout_s
    last_record = loop.time()
    positions = {tp: await consumer.position(tp) for tp in tps}
    while loop.time() < t_end and any(positions[tp] < ends[tp] for tp in tps):
        got = await consumer.getmany(*[tp for tp in tps if positions[tp] < ends[tp]], timeout_ms=200)
        for tp, msgs in got.items():
            for m in msgs:
                if m.offset >= ends[tp]:
                    continue  # arrived after the start: a later read's
                out.append(m)
                positions[tp] = m.offset + 1
        if got:
            last_record = loop.time()
        elif loop.time() - last_record > idle_s:
            break
    return out, {tp: min(positions[tp], ends[tp]) for tp in tps}
