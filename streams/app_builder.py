"""One Faust app builder for every worker role (infer and trainer).

Both roles talk to the same cluster and must get the same client settings: credentials (SASL/TLS), the
producer settings of the broker they talk to (one-record changelog batches on the embedded broker,
idempotent batching on Apache Kafka: StreamSettings.producer_profile), the group
timeouts, the fetch wait, the web server with our own pages only. Building both apps here means a setting
added for one role cannot be forgotten in the other (the trainer once had no `broker_credentials`, so its
consumers could not reach a SASL/TLS cluster).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from genrec.streams.settings import StreamSettings
from genrec.streams.transport import GenrecFaustApp

__all__ = ["JsonPage", "build_faust_app", "faust_credentials", "install_pages", "raw_topic", "state_table"]

# A page body: (HTTP status, JSON object).
JsonPage = Callable[[], tuple[int, dict[str, Any]]]


def faust_credentials(settings: StreamSettings) -> Any:
    """Faust's credentials object for the settings' security protocol (None for PLAINTEXT)."""
    s = settings
    ctx = s.ssl_context()
    if s.security_protocol.startswith("SASL"):
        assert s.sasl_password is not None  # the settings validator requires it
        return faust.SASLCredentials(
            username=s.sasl_username,
            password=s.sasl_password.get_secret_value(),
            mechanism=s.sasl_mechanism,
            ssl_context=ctx,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


def build_faust_app(settings: StreamSettings, app_id: str, *, standby_replicas: int) -> GenrecFaustApp:
    """The Faust app of one worker role: `app_id` is its consumer group, `standby_replicas` its tables'."""
    s = settings
    producer = s.producer_profile
    return GenrecFaustApp(
        app_id,
        broker=s.broker_url,
        broker_credentials=faust_credentials(s),
        store="rocksdb://",
        datadir=str(s.state_dir),
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication,
        table_standby_replicas=standby_replicas,
        producer_max_batch_size=producer.changelog_max_batch_size,
        producer_linger=producer.changelog_linger_ms / 1000.0,
        producer_compression_type=producer.compression_type,
        producer_acks=-1,
        producer_idempotence=producer.idempotence,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.heartbeat_interval_s,
        broker_rebalance_timeout=s.rebalance_timeout_s,
        broker_request_timeout=s.request_timeout_s,
        broker_commit_interval=s.commit_interval_s,
        stream_recovery_delay=0.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=s.web_enabled,
        web_port=s.web_port,
        web_bind=s.web_bind,
        web_host="127.0.0.1" if s.web_bind in ("0.0.0.0", "127.0.0.1") else s.web_bind,
        fetch_max_wait_ms=s.fetch_max_wait_ms,
    )


_RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def raw_topic(app: faust.App, name: str, settings: StreamSettings) -> Any:
    """A topic of raw bytes (the messages are decoded and validated by the handlers, never by Faust)."""
    return app.topic(name, partitions=settings.partitions, **_RAW)


def state_table(app: faust.App, name: str, settings: StreamSettings) -> Any:
    """A RocksDB table of bytes, co-partitioned with the source topics (same partition count).

    bytes → Faust's "raw" serializer for the store and the changelog (a Schema would not be).
    """
    return app.Table(
        name,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        options={"driver": "rocksdict", "block_cache_size": settings.rocksdb_block_cache_bytes},
    )


def install_pages(
    app: faust.App, *, health: JsonPage, ready: JsonPage, metrics: Callable[[], bytes], content_type: str
) -> None:
    """/health, /ready and /metrics: the only pages served (GenrecFaustApp switches Faust's own off)."""

    @app.page("/health")
    async def _health(self: Any, request: Any) -> Any:
        status, body = health()
        return self.json(body, status=status)

    @app.page("/ready")
    async def _ready(self: Any, request: Any) -> Any:
        status, body = ready()
        return self.json(body, status=status)

    @app.page("/metrics")
    async def _metrics(self: Any, request: Any) -> Any:
        return self.bytes(metrics(), content_type=content_type)
