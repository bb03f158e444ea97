"""Apache Kafka for tests and benches (ops/kafka_broker.py): the jars from Maven, a KRaft node that answers
Metadata with its own cluster id, a produce/consume round trip, stop/freeze/restart by PID, and clear errors
(and skips) when Java or Maven is missing.

The shared session broker (`kafka_broker`) serves the read-only checks; tests that stop, freeze or restart
a broker start their own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from genrec.ops.broker import BrokerStartError
from genrec.ops.kafka_broker import (
    BROKER_USER,
    KafkaBroker,
    KafkaUnavailableError,
    find_java,
    find_maven,
    kafka_libs,
    kafka_version,
    make_test_certificates,
)
from genrec.ops.kafka_clients import KafkaSecurity, fetch_cluster_info, make_consumer, make_producer
from genrec.ops.topics import TopicSpec, create_topics

from tests.conftest import both_brokers, end_offset, new_kafka_broker, process_alive, require_kafka

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PLAIN = KafkaSecurity()
REPO = Path(__file__).resolve().parents[2]


async def _produce_batched(bootstrap: str, topic: str, n: int) -> None:
    # Several records per batch on purpose: Tansu misreports the end offset after such a batch
    # (docs/architecture.md, "Brokers"); Apache Kafka must not.
    producer = make_producer(bootstrap, one_record_batches=False, linger_ms=50, security=PLAIN)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=b"k", value=f"v{i}".encode()) for i in range(n)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, n: int, timeout_s: float = 20.0) -> list[bytes]:
    consumer = make_consumer(bootstrap, topic, security=PLAIN)
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(m.value for m in msgs)
    finally:
        await consumer.stop()
    return got


# ---------------------------------------------------------------------------------------- the shared broker


async def test_session_broker_answers_metadata_with_its_own_cluster(kafka_broker: KafkaBroker) -> None:
    info = await fetch_cluster_info(kafka_broker.bootstrap, security=PLAIN)
    assert info.cluster_id == kafka_broker.cluster_id
    assert [port for _, _, port in info.brokers] == [kafka_broker.port]
    assert kafka_broker.start_seconds is not None and kafka_broker.start_seconds < 60
    assert kafka_broker.log_path is not None and "Kafka Server started" in kafka_broker.log_path.read_text()


async def test_round_trip_with_batches_and_a_true_end_offset(kafka_bootstrap: str) -> None:
    topic = f"kafka-rt-{os.getpid()}-{time.monotonic_ns()}"
    await create_topics(kafka_bootstrap, [TopicSpec(topic, 1)], security=PLAIN)
    await _produce_batched(kafka_bootstrap, topic, 20)
    assert await _read_all(kafka_bootstrap, topic, 20) == [f"v{i}".encode() for i in range(20)]
    assert await end_offset(kafka_bootstrap, topic) == 20


@both_brokers
async def test_any_broker_serves_the_same_client_code(any_bootstrap: str, broker_kind: str) -> None:
    """The parametrized fixture: one body, run against Tansu and Apache Kafka."""
    topic = f"any-{broker_kind}-{time.monotonic_ns()}"
    await create_topics(any_bootstrap, [TopicSpec(topic, 2)], security=PLAIN)
    producer = make_producer(any_bootstrap, one_record_batches=True, security=PLAIN)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, key=f"u{i}".encode(), value=b"x")
    finally:
        await producer.stop()
    assert len(await _read_all(any_bootstrap, topic, 5)) == 5


# ------------------------------------------------------------------------------------ brokers of their own


async def test_freeze_thaw_and_stop_even_when_frozen_end_the_jvm_and_its_storage() -> None:
    broker = new_kafka_broker()
    with broker:
        pid, data, log = broker.pid, broker.data_dir, broker.log_path
        assert pid is not None and process_alive(pid)
        assert data is not None and (data / "logs" / "meta.properties").is_file()
        broker.freeze()
        assert broker.frozen
        # The kernel still accepts the connection, but the stopped JVM answers nothing.
        with pytest.raises(TimeoutError):
            await fetch_cluster_info(broker.bootstrap, timeout_s=1.0, security=PLAIN)
        broker.thaw()
        info = await fetch_cluster_info(broker.bootstrap, timeout_s=10.0, security=PLAIN)
        assert info.cluster_id == broker.cluster_id
        broker.freeze()
        started = time.monotonic()
        # SIGTERM then SIGCONT: the JVM runs its shutdown hooks and exits 143 (128 + SIGTERM).
        assert broker.stop() in (0, 143)
        assert time.monotonic() - started < broker.stop_timeout_s
    assert not process_alive(pid)
    assert not data.exists()
    assert log is not None and not log.exists()  # a clean stop leaves no log behind


async def test_a_restart_on_the_same_data_dir_keeps_the_cluster_and_the_records(tmp_path: Path) -> None:
    topic = "kept"
    first = new_kafka_broker(data_dir=tmp_path / "kafka")
    with first:
        cluster, port = first.cluster_id, first.port
        await create_topics(first.bootstrap, [TopicSpec(topic, 1)], security=PLAIN)
        await _produce_batched(first.bootstrap, topic, 3)
    second = new_kafka_broker(data_dir=tmp_path / "kafka")
    with second:
        assert (second.cluster_id, second.port) == (cluster, port)
        assert await _read_all(second.bootstrap, topic, 3) == [b"v0", b"v1", b"v2"]
    assert (tmp_path / "kafka" / "logs" / "meta.properties").is_file()  # a given data dir is never deleted


# ------------------------------------------------------------------------------ Java, Maven, the jar cache


def test_pom_pins_a_kafka_4_version() -> None:
    assert kafka_version().split(".")[0] == "4"


def test_java_home_without_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(KafkaUnavailableError, match=r"JAVA_HOME=.* has no executable bin/java"):
        find_java()


def test_no_java_on_path_is_a_clear_error_and_a_skip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KafkaUnavailableError, match="Java not found"):
        find_java()
    with pytest.raises(pytest.skip.Exception, match="Apache Kafka unavailable: Java not found"):
        require_kafka()
    with pytest.raises(KafkaUnavailableError, match="Java not found"):
        KafkaBroker().start()


def test_no_maven_and_no_jars_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    try:
        java = find_java()  # Maven's check comes after Java's: this one needs a Java
    except KafkaUnavailableError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("JAVA_HOME", str(java.resolve().parents[1]))
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn
    monkeypatch.setenv("GENREC_KAFKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENREC_KAFKA_LIBS", raising=False)
    with pytest.raises(KafkaUnavailableError, match=r"Maven \(`mvn`\) not found"):
        kafka_libs()


def test_cli_reports_missing_java_and_exits_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # python only
    result = subprocess.run(
        [sys.executable, "-m", "genrec.ops.cli", "broker", "--kind", "kafka", "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result
    assert "Java not found" in result.stderr
    assert "ready" not in result.stdout


def test_two_processes_fetch_the_jars_once(tmp_path: Path) -> None:
    """The lock: concurrent first uses (two pytest processes) run one Maven fetch, both get the classpath."""
    require_kafka()
    try:
        find_maven()
    except KafkaUnavailableError as exc:
        pytest.skip(str(exc))
    if os.environ.get("GENREC_KAFKA_LIBS"):
        pytest.skip("GENREC_KAFKA_LIBS is set: nothing is fetched")
    env = {**os.environ, "GENREC_KAFKA_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "genrec.ops.kafka_broker", "fetch"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    libs = Path(outs[0][0].strip())
    assert libs == Path(outs[1][0].strip()) == tmp_path / "cache" / kafka_version()
    assert any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("log4j-slf4j-impl-*.jar"))
    assert sum(err.count("fetching Apache Kafka") for _, err in outs) == 1
    shutil.rmtree(tmp_path / "cache")


@both_brokers
async def test_topic_partitions_reads_the_broker_not_the_consumers_stale_view(
    any_bootstrap: str, broker_kind: str
) -> None:
    """`consumer.topics()` + `partitions_for_topic()` found no partitions on Apache Kafka (while Tansu's
    bootstrap answer listed every topic): `genrec models list` and `genrec deadletters` then read nothing."""
    from genrec.ops.kafka_clients import topic_partitions

    topic = f"parts-{broker_kind}-{time.monotonic_ns()}"
    await create_topics(any_bootstrap, [TopicSpec(topic, 3)], security=PLAIN)
    consumer = make_consumer(any_bootstrap, security=PLAIN)
    await consumer.start()
    try:
        assert await topic_partitions(consumer, topic) == {0, 1, 2}
        assert await topic_partitions(consumer, f"{topic}-absent") == set()
    finally:
        await consumer.stop()


def test_a_taken_port_fails_with_the_log_and_leaves_no_storage() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        broker = new_kafka_broker(port=sock.getsockname()[1], ready_timeout_s=60)
        started = time.monotonic()
        with pytest.raises(BrokerStartError, match=r"kafka exited with status \d+ before it was ready") as err:
            broker.start()
    assert "Address already in use" in str(err.value)  # the log's tail is in the message
    assert time.monotonic() - started < 30
    assert broker.data_dir is None and not broker.running


# ------------------------------------------------------------------------------------------ SASL_SSL broker


def test_secure_broker_options_are_checked() -> None:
    with pytest.raises(ValueError, match="expected 'plaintext' or 'sasl_ssl'"):
        KafkaBroker(security="sasl_plaintext")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need security='sasl_ssl'"):
        KafkaBroker(scram_users={"genrec": "x"})
    with pytest.raises(ValueError, match="the broker's own user"):
        KafkaBroker(security="sasl_ssl", scram_users={BROKER_USER: "x"})
    # `--add-scram` parses `[name=...,password=...]`: a comma or bracket would cut the value short.
    with pytest.raises(ValueError, match="may hold only"):
        KafkaBroker(security="sasl_ssl", scram_users={"genrec": "pass,word"})
    with pytest.raises(RuntimeError, match="start it first"):
        KafkaBroker(security="sasl_ssl", scram_users={"genrec": "x"}).client_security("genrec")
    assert KafkaBroker().client_security() == PLAIN


def _handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake in memory (no sockets): raises what the client's verification raises."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError(f"handshake did not finish: {done}")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not on PATH")
def test_test_certificates_pass_pythons_strict_verification_for_loopback_only(tmp_path: Path) -> None:
    certs = make_test_certificates(tmp_path / "tls")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.keystore)  # the same PEM file Kafka reads: the key, then the certificate
    # What the worker builds from GENREC_SSL_CAFILE (streams/settings.py): Python's default context, strict.
    client = ssl.create_default_context(cafile=str(certs.ca))
    for host in ("127.0.0.1", "localhost"):
        _handshake(client, server, host)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(client, server, "kafka.example")
    with pytest.raises(ssl.SSLCertVerificationError):  # and the system's CAs do not know the test CA
        _handshake(ssl.create_default_context(), server, "127.0.0.1")
    assert oct(certs.keystore.stat().st_mode & 0o777) == "0o600"


@pytest.mark.kafka_full
@pytest.mark.timeout(180)
async def test_a_secure_broker_restarted_on_its_data_dir_keeps_users_and_certificates(tmp_path: Path) -> None:
    # keytool, not the default openssl: the path a machine without openssl takes (a PKCS12 keystore), once.
    kafka = new_kafka_broker(security="sasl_ssl", scram_users={"genrec": secrets.token_hex(8)},
                             data_dir=tmp_path / "k", certificate_tool="keytool")
    kafka.start()
    try:
        ca = kafka.ssl_cafile
        assert (await fetch_cluster_info(kafka.bootstrap, security=kafka.client_security("genrec"))).cluster_id
        kafka.stop()
        kafka.start()
        assert kafka.ssl_cafile == ca  # clients holding the CA file keep trusting it
        assert (tmp_path / "k" / "tls" / "broker.p12").is_file()
        info = await fetch_cluster_info(kafka.bootstrap, security=kafka.client_security("genrec", "SCRAM-SHA-256"))
        assert info.cluster_id == kafka.cluster_id
    finally:
        kafka.stop()
