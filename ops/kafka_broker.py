"""A real Apache Kafka broker for tests and benchmarks: one KRaft node (broker + controller) in a JVM.

Production runs on Apache Kafka (docker-compose.kafka.yml); the tests default to Tansu (ops/broker.py), which
differs in places (docs/architecture.md, "Brokers"). This runs the real thing without Docker:

- The classpath comes from Maven Central: `ops/kafka/pom.xml` pins the version, and
  `mvn -q dependency:copy-dependencies` copies the jars once into `.cache/kafka/<version>/` (ignored by git;
  `$GENREC_KAFKA_CACHE` moves it). A lock file keeps two test processes from fetching at once, and a marker
  holding the pom's hash says the copy is complete (an edited pom fetches again). `$GENREC_KAFKA_LIBS`
  points at a ready folder of jars instead (e.g. an unpacked Kafka distribution's `libs/`): no Maven then.
- Java is `$JAVA_HOME/bin/java`, else `java` on PATH; Kafka 4 needs 17 or newer.
- Each start formats a fresh storage folder (a temp dir, removed at stop) with a new cluster id, unless a
  `data_dir` is given: then a folder formatted before is reused as it is (a restart keeps the data, as a
  real cluster does).
- Readiness, stop by PID, freeze/thaw (SIGSTOP/SIGCONT of the JVM) and the log are ops/broker.py's
  `BrokerProcess`, shared with Tansu: ready means a Kafka Metadata request answered with this cluster's id.
- `security="sasl_ssl"`: clients must speak TLS and authenticate with SASL/SCRAM (SHA-512 or SHA-256), as
  on a production cluster. A CA and a broker certificate (for 127.0.0.1 and localhost) are made at start with
  `openssl` or, without it, the JDK's `keytool` (`make_test_certificates`); the SCRAM users, `scram_users` plus
  the broker's own inter-broker user with a random password, are written into the metadata when the storage
  is formatted (`StorageTool format --add-scram`). The controller listener stays PLAINTEXT on loopback.
  Clients get the CA from `ssl_cafile` and their settings from `client_security(user)`.

Missing Java or Maven, or a failed fetch, raise `KafkaUnavailableError` with what to install; tests skip
with that message (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from genrec.ops.broker import BrokerProcess, BrokerStartError, _run_blocking, free_port

if TYPE_CHECKING:
    from genrec.ops.kafka_clients import KafkaSecurity

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"
CACHE_ENV = "GENREC_KAFKA_CACHE"
LIBS_ENV = "GENREC_KAFKA_LIBS"
MIN_JAVA = 17
# Small and quick to start on 2 cores: the serial collector has no GC threads to compete with the worker
# and the tests, and a test broker holds little data. `jvm_opts` or $GENREC_KAFKA_JVM_OPTS change it.
DEFAULT_JVM_OPTS = (
    "-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
)
JVM_OPTS_ENV = "GENREC_KAFKA_JVM_OPTS"
FETCH_TIMEOUT_S = 900.0
BrokerSecurity = Literal["plaintext", "sasl_ssl"]
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
# The broker authenticates to itself on the inter-broker listener like any client: a user of its own.
BROKER_USER = "genrec-broker"
# The users' names and passwords go into `--add-scram NAME=[name=...,password=...]`, a list Kafka splits on
# commas and brackets: keep them to characters that need no quoting there.
_SCRAM_SAFE = re.compile(r"^[A-Za-z0-9_.@-]+$")
_COMPLETE = ".complete"


class KafkaUnavailableError(RuntimeError):
    """Apache Kafka cannot be run here: no Java (17+), no Maven to fetch the jars, or the fetch failed."""


def kafka_version(pom: Path = POM) -> str:
    """The `kafka.version` the pom pins."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if match is None:
        raise KafkaUnavailableError(f"{pom} has no <kafka.version> property")
    return match.group(1).strip()


def find_java() -> Path:
    """`$JAVA_HOME/bin/java` when JAVA_HOME is set, else `java` on PATH; checks it is Java 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            raise KafkaUnavailableError(
                f"JAVA_HOME={java_home!r} has no executable bin/java; Apache Kafka needs Java {MIN_JAVA}+ "
                "(set JAVA_HOME to a JDK/JRE, or unset it to use `java` on PATH)"
            )
        java = candidate
    else:
        found = shutil.which("java")
        if found is None:
            raise KafkaUnavailableError(
                f"Java not found (no JAVA_HOME, no `java` on PATH); Apache Kafka needs Java {MIN_JAVA}+, "
                "e.g. `apt-get install openjdk-17-jre-headless`"
            )
        java = Path(found)
    major = _java_major(java)
    if major is not None and major < MIN_JAVA:
        raise KafkaUnavailableError(f"{java} is Java {major}; Apache Kafka {kafka_version()} needs {MIN_JAVA}+")
    return java


def _java_major(java: Path) -> int | None:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaUnavailableError(f"{java} -version failed: {exc}") from exc
    # `openjdk version "17.0.15"`, `java version "1.8.0_402"` (the old scheme: 1.x means x).
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_maven() -> Path:
    found = shutil.which("mvn")
    if found is None:
        raise KafkaUnavailableError(
            "Maven (`mvn`) not found on PATH; it fetches Apache Kafka's jars from Maven Central once "
            f"(ops/kafka/pom.xml), e.g. `apt-get install maven`, or set {LIBS_ENV} to a folder of Kafka jars"
        )
    return Path(found)


def cache_root() -> Path:
    """`$GENREC_KAFKA_CACHE`, else `.cache/kafka` in the checkout (ignored), else ~/.cache/genrec/kafka."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    repo = KAFKA_DIR.parents[1]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "kafka"
    return Path.home() / ".cache" / "genrec" / "kafka"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def kafka_libs(fetch: bool = True) -> Path:
    """The folder of Kafka's jars: `$GENREC_KAFKA_LIBS`, else the Maven cache, fetched first if incomplete."""
    given = os.environ.get(LIBS_ENV)
    if given:
        libs = Path(given)
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise KafkaUnavailableError(f"{LIBS_ENV}={given!r} holds no kafka_2.13-*.jar")
        return libs
    libs = cache_root() / kafka_version()
    digest = _pom_digest()
    marker = libs / _COMPLETE
    if _read(marker) == digest:
        return libs
    if not fetch:
        raise KafkaUnavailableError(f"the Kafka jars are not fetched yet into {libs}")
    libs.parent.mkdir(parents=True, exist_ok=True)
    # One fetch at a time across processes (pytest-xdist workers, a test run beside `genrec broker`):
    # whoever gets the lock second finds the marker written and returns.
    with open(libs.parent / f"{libs.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read(marker) == digest:
            return libs
        _fetch(libs)
        marker.write_text(digest)
    return libs


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def run_maven(args: list[str], *, what: str, timeout_s: float) -> None:
    """`mvn -q -B ARGS` with Java found as for the broker; KafkaUnavailableError naming `what` on a timeout or a
    failed build (the output's tail in the message). Shared by the jar fetch and the Kafka Streams peer's build."""
    mvn = find_maven()
    # Maven itself runs on Java: check it first so the error names Java, not a Maven stack trace.
    java = find_java()
    command = [str(mvn), "-q", "-B", *args]
    env = {**os.environ}
    env.setdefault("JAVA_HOME", str(java.resolve().parents[1]))
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise KafkaUnavailableError(f"{what} took over {timeout_s:.0f}s: {' '.join(command)}") from exc
    if proc.returncode != 0:
        raise KafkaUnavailableError(
            f"{what} failed (status {proc.returncode}): {' '.join(command)}\n{(proc.stdout + proc.stderr)[-3000:]}"
        )


def _fetch(libs: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{libs.name}-", dir=libs.parent))
    started = time.monotonic()
    print(f"genrec: fetching Apache Kafka {kafka_version()} jars with Maven into {libs} ...", file=sys.stderr)
    try:
        run_maven(["-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
                   "-DincludeScope=runtime"], what="fetching the Kafka jars", timeout_s=FETCH_TIMEOUT_S)
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise KafkaUnavailableError(f"fetching the Kafka jars left no kafka_2.13 jar in {staging}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Swap the complete folder in: a reader never sees a half-copied classpath.
    if libs.exists():
        shutil.rmtree(libs)
    staging.rename(libs)
    n = len(list(libs.glob("*.jar")))
    print(f"genrec: {n} jars fetched in {time.monotonic() - started:.1f}s", file=sys.stderr)


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64, unpadded (as `kafka-storage random-uuid` prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


@dataclass(frozen=True)
class TestCertificates:
    """A throwaway CA and a broker certificate signed by it, as files Kafka and the clients read (tests only)."""

    ca: Path  # the CA certificate (PEM): clients' `ssl_cafile`, the broker's truststore
    keystore: Path  # the broker's key and certificate: PEM (key, then certificate) or PKCS12
    keystore_type: Literal["PEM", "PKCS12"] = "PEM"
    keystore_password: str | None = field(default=None, repr=False)  # PKCS12 only (PEM keys are unencrypted)

    def kafka_properties(self) -> dict[str, str]:
        # PEM straight from openssl: no PKCS12 step (Kafka reads PEM stores since 2.7, KIP-651).
        props = {
            "ssl.keystore.type": self.keystore_type,
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
        }
        if self.keystore_password is not None:
            props["ssl.keystore.password"] = props["ssl.key.password"] = self.keystore_password
        return props

    @classmethod
    def load(cls, folder: Path) -> TestCertificates | None:
        """The certificates `make_test_certificates` left in `folder` before, or None."""
        ca = folder / "ca.pem"
        if not ca.is_file():
            return None
        if (folder / "broker-keystore.pem").is_file():
            return cls(ca=ca, keystore=folder / "broker-keystore.pem")
        password = _read(folder / "keystore.password")
        if (folder / "broker.p12").is_file() and password:
            return cls(ca=ca, keystore=folder / "broker.p12", keystore_type="PKCS12", keystore_password=password)
        return None


CertificateTool = Literal["openssl", "keytool"]


def make_test_certificates(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                           days: int = 7, tool: CertificateTool | None = None) -> TestCertificates:
    """A CA and a broker certificate valid for `hosts`, made with `openssl` or, without it, the JDK's `keytool`.

    `openssl` (0.1 s) is preferred; `keytool` comes with the Java that runs Kafka anyway (each step is a JVM start,
    ~3 s in all), so a machine that can run Kafka can always make them. Both set subject and authority key ids and
    key usages: Python 3.13's default TLS context verifies strictly (VERIFY_X509_STRICT) and refuses a chain
    without them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if tool is None:
        tool = "openssl" if shutil.which("openssl") else "keytool"
    if tool == "openssl":
        openssl = shutil.which("openssl")
        if openssl is None:
            raise KafkaUnavailableError("`openssl` not found on PATH")
        certs = _openssl_certificates(openssl, folder, hosts, days)
    else:
        keytool = find_java().resolve().parent / "keytool"
        if not keytool.is_file():
            raise KafkaUnavailableError(f"no `keytool` next to {find_java()} (and no `openssl` on PATH)")
        certs = _keytool_certificates(keytool, folder, hosts, days)
    for private in folder.iterdir():
        if private.name != "ca.pem":
            private.chmod(0o600)
    return certs


def _san(hosts: tuple[str, ...], ip: str, dns: str) -> str:
    return ",".join(f"{ip}:{h}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+:[0-9a-fA-F:]*", h) else f"{dns}:{h}"
                    for h in hosts)


def _run_steps(steps: list[list[str]]) -> None:
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            # The tools echo no passwords in their errors; the command line holds the test stores' password only.
            raise KafkaUnavailableError(
                f"making test certificates failed: {step[0]} {step[1]} (status {proc.returncode})\n"
                f"{(proc.stdout + proc.stderr)[-2000:]}"
            )


def _openssl_certificates(openssl: str, folder: Path, hosts: tuple[str, ...], days: int) -> TestCertificates:
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "broker.key", "broker.csr", "broker.pem"))
    ext = folder / "broker.ext"
    ext.write_text(
        f"subjectAltName={_san(hosts, 'IP', 'DNS')}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _run_steps([
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
         "-days", str(days), "-subj", "/CN=genrec test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={hosts[0]}"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(cert), "-days", str(days), "-extfile", str(ext)],
    ])
    keystore = folder / "broker-keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text())
    return TestCertificates(ca=ca, keystore=keystore)


def _keytool_certificates(keytool: Path, folder: Path, hosts: tuple[str, ...], days: int) -> TestCertificates:
    password = secrets.token_hex(16)  # PKCS12 stores need one; it is written next to them for a restart
    (folder / "keystore.password").write_text(password)
    ca_store, broker_store = folder / "ca.p12", folder / "broker.p12"
    ca, csr, cert = folder / "ca.pem", folder / "broker.csr", folder / "broker.pem"
    kt = [str(keytool), "-noprompt", "-storetype", "PKCS12", "-storepass", password]
    _run_steps([
        [*kt, "-genkeypair", "-alias", "ca", "-keystore", str(ca_store), "-keyalg", "RSA", "-keysize", "2048",
         "-dname", "CN=genrec test CA", "-validity", str(days), "-ext", "bc:c=ca:true",
         "-ext", "ku:c=keyCertSign,cRLSign"],
        [*kt, "-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca_store), "-file", str(ca)],
        [*kt, "-genkeypair", "-alias", "broker", "-keystore", str(broker_store), "-keyalg", "RSA", "-keysize", "2048",
         "-dname", f"CN={hosts[0]}", "-validity", str(days)],
        [*kt, "-certreq", "-alias", "broker", "-keystore", str(broker_store), "-file", str(csr)],
        [*kt, "-gencert", "-rfc", "-alias", "ca", "-keystore", str(ca_store), "-infile", str(csr),
         "-outfile", str(cert), "-validity", str(days), "-ext", f"san={_san(hosts, 'ip', 'dns')}",
         "-ext", "bc:c=ca:false", "-ext", "ku:c=digitalSignature,keyEncipherment",
         "-ext", "eku=serverAuth,clientAuth"],
        # The CA first, so that the signed certificate's reply is installed as a chain under the broker's key.
        [*kt, "-importcert", "-alias", "ca", "-keystore", str(broker_store), "-file", str(ca)],
        [*kt, "-importcert", "-alias", "broker", "-keystore", str(broker_store), "-file", str(cert)],
    ])
    return TestCertificates(ca=ca, keystore=broker_store, keystore_type="PKCS12", keystore_password=password)


class KafkaBroker(BrokerProcess):
    """One Apache Kafka KRaft node (broker + controller) on `host:port`, its controller on a second port.

    >>> with KafkaBroker() as broker:   # doctest: +SKIP
    ...     run_something(bootstrap=broker.bootstrap)
    """

    name = "kafka"

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        log_path: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        ready_timeout_s: float = 90.0,
        # A graceful shutdown of a KRaft node (controlled shutdown, closing the logs) takes a few seconds.
        stop_timeout_s: float = 20.0,
        advertised_host: str | None = None,
        jvm_opts: list[str] | None = None,
        properties: dict[str, str] | None = None,
        security: BrokerSecurity = "plaintext",
        scram_users: dict[str, str] | None = None,
        certificate_tool: CertificateTool | None = None,
    ) -> None:
        super().__init__(
            port,
            host,
            log_path=log_path,
            ready_timeout_s=ready_timeout_s,
            stop_timeout_s=stop_timeout_s,
            advertised_host=advertised_host,
        )
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self._data_dir: Path | None = None
        self._own_data_dir = False
        env_opts = os.environ.get(JVM_OPTS_ENV)
        self.jvm_opts = list(jvm_opts) if jvm_opts is not None else (
            env_opts.split() if env_opts else list(DEFAULT_JVM_OPTS)
        )
        self.extra_properties = dict(properties or {})
        self.controller_port: int | None = None
        self.start_seconds: float | None = None  # launch to first Metadata answer, of the last start
        if security not in ("plaintext", "sasl_ssl"):
            raise ValueError(f"security={security!r}: expected 'plaintext' or 'sasl_ssl'")
        self.security: BrokerSecurity = security
        users = dict(scram_users or {})
        if security == "sasl_ssl":
            if BROKER_USER in users:
                raise ValueError(f"{BROKER_USER!r} is the broker's own user")
            # Random per broker object, never written anywhere but this node's own (temporary) config.
            users[BROKER_USER] = secrets.token_hex(16)
        elif users:
            raise ValueError("scram_users need security='sasl_ssl'")
        for name, password in users.items():
            if not (_SCRAM_SAFE.match(name) and _SCRAM_SAFE.match(password)):
                raise ValueError(f"SCRAM user {name!r}: names and passwords may hold only [A-Za-z0-9_.@-]")
        self._scram_users = users
        self.certificate_tool = certificate_tool  # None: openssl when on PATH, else the JDK's keytool
        self._certs: TestCertificates | None = None

    @property
    def ssl_cafile(self) -> Path | None:
        """The CA certificate clients verify this broker with (None without TLS, or before start)."""
        return self._certs.ca if self._certs is not None else None

    def client_security(self, username: str = BROKER_USER, mechanism: str = "SCRAM-SHA-512") -> KafkaSecurity:
        """How a client authenticates to this broker as `username` (a SCRAM user given at construction)."""
        from genrec.ops.kafka_clients import KafkaSecurity

        if self.security == "plaintext":
            return KafkaSecurity()
        if self.ssl_cafile is None:
            raise RuntimeError("the broker's certificates are made at start(): start it first")
        return KafkaSecurity(
            security_protocol="SASL_SSL", sasl_mechanism=mechanism, sasl_username=username,
            sasl_password=self._scram_users[username], ssl_cafile=str(self.ssl_cafile),
        )

    def probe_security(self) -> KafkaSecurity:
        return self.client_security()

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    def server_properties(self) -> dict[str, str]:
        """The node's configuration: single node, loopback, settings a 1-broker cluster needs, test-friendly."""
        assert self._data_dir is not None and self.controller_port is not None
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.advertised_host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self._data_dir / "logs"),
            # One broker: every internal topic with one replica, or they could never be created.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Tests start consumer groups all the time: no 3 s wait for more members on each first join.
            "group.initial.rebalance.delay.ms": "0",
            # The failover tests notice a dead member in ~4 s (ops/chaos.py FAST_GROUP_ENV); Kafka refuses a
            # session timeout under 6 s by default (InvalidSessionTimeoutError at join), Tansu takes any.
            "group.min.session.timeout.ms": "1000",
            # Tansu creates a topic on first use, and tests (and Faust's own topics) may rely on it;
            # the production compose file turns it off (docker-compose.kafka.yml).
            "auto.create.topics.enable": "true",
            "num.partitions": "1",
            # 2 cores: Kafka's defaults (3 network, 8 I/O threads) only add contention here.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.cleaner.threads": "1",
        }
        if self.security == "sasl_ssl":
            props.update(self._sasl_ssl_properties())
        props.update(self.extra_properties)
        return props

    def _sasl_ssl_properties(self) -> dict[str, str]:
        # Clients and the inter-broker traffic on one SASL_SSL listener; the controller listener stays
        # PLAINTEXT on loopback (KRaft's controller channel in a combined node never leaves the host).
        assert self._certs is not None and self.controller_port is not None
        password = self._scram_users[BROKER_USER]
        # Each enabled mechanism needs a login module on the listener (the server side reads it per mechanism);
        # its user and password are what the broker sends when it is the client (inter-broker, SHA-512).
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{password}";'
        )
        return {
            **{f"listener.name.sasl_ssl.{m.lower()}.sasl.jaas.config": jaas for m in SCRAM_MECHANISMS},
            "listeners": f"SASL_SSL://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://{self.advertised_host}:{self.port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            **self._certs.kafka_properties(),
            "ssl.client.auth": "none",
        }

    def start(self) -> KafkaBroker:
        if self.running:
            return self
        java = find_java()
        libs = kafka_libs()
        attempts = 1 if self._requested_port is not None else 3
        last_error: BrokerStartError | None = None
        for _ in range(attempts):
            if self._requested_port is None:
                self._port = free_port(self.host)
            self.controller_port = free_port(self.host)
            while self.controller_port == self._port:
                self.controller_port = free_port(self.host)
            try:
                self._launch(java, libs)
                return self
            except BrokerStartError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def _java_command(self, java: Path, libs: Path, main: str, *args: str) -> list[str]:
        return [
            str(java),
            *self.jvm_opts,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            str(libs / "*"),
            main,
            *args,
        ]

    def _launch(self, java: Path, libs: Path) -> None:
        if self._given_data_dir is not None:
            self._data_dir = self._given_data_dir
            self._data_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._data_dir = Path(tempfile.mkdtemp(prefix="genrec-kafka-"))
            self._own_data_dir = True
        config = self._data_dir / "server.properties"
        if self.security == "sasl_ssl":
            tls = self._data_dir / "tls"
            # Kept with a reused data_dir (a restart): clients that hold the CA file keep trusting the broker.
            self._certs = TestCertificates.load(tls) or make_test_certificates(tls, tool=self.certificate_tool)
        existing = _read_meta(self._data_dir / "logs" / "meta.properties")
        if existing is not None:
            # KRaft stored the controller's endpoint in its log at format time: a restart on the same
            # storage must listen where it did before.
            previous = _read_properties(config)
            with contextlib.suppress(KeyError, ValueError):
                self.controller_port = int(previous["controller.quorum.bootstrap.servers"].rsplit(":", 1)[1])
                if self._requested_port is None:
                    self._port = int(previous["advertised.listeners"].rsplit(":", 1)[1])
        config.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        started = time.monotonic()
        if existing is not None:
            self.cluster_id = existing
        else:
            self.cluster_id = new_cluster_id()
            try:
                self._format(java, libs, config)
            except BrokerStartError:
                self._drop_own_data_dir()
                raise
        self._spawn(self._java_command(java, libs, "kafka.Kafka", str(config)))
        try:
            _run_blocking(self._wait_ready)
        except BrokerStartError:
            self.stop(keep_log=True)  # the error message points at it
            raise
        self.start_seconds = time.monotonic() - started

    def _format(self, java: Path, libs: Path, config: Path) -> None:
        # `--standalone`: this node is the whole controller quorum (KIP-853's dynamic quorum, one voter).
        command = self._java_command(
            java, libs, "kafka.tools.StorageTool", "format", "--config", str(config),
            "--cluster-id", self.cluster_id, "--standalone", "--ignore-formatted",
            *self._add_scram_args(),
        )
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise BrokerStartError(
                f"formatting the Kafka storage in {self._data_dir} failed (status {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-3000:]}"
            )

    def _add_scram_args(self) -> list[str]:
        # Every user with both mechanisms: a client may pick either (GENREC_SASL_MECHANISM).
        args: list[str] = []
        for name, password in self._scram_users.items():
            for mechanism in SCRAM_MECHANISMS:
                args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return args

    def stop(self, keep_log: bool = False) -> int | None:
        status = super().stop(keep_log=keep_log)
        self._drop_own_data_dir()
        return status

    def _drop_own_data_dir(self) -> None:
        # Only a temp dir of our own: a given data_dir is the caller's, kept for the next start.
        if self._own_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._own_data_dir = False
            self._certs = None


def _read_meta(path: Path) -> str | None:
    """The cluster id of storage formatted before (its meta.properties), or None."""
    text = _read(path)
    if text is None:
        return None
    match = re.search(r"^cluster\.id=(\S+)$", text, flags=re.MULTILINE)
    return match.group(1) if match else None


def _read_properties(path: Path) -> dict[str, str]:
    text = _read(path) or ""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def main(argv: list[str] | None = None) -> int:
    """`python -m genrec.ops.kafka_broker fetch`: fetch the jars now (make test does), print where they are."""
    parser = argparse.ArgumentParser(prog="python -m genrec.ops.kafka_broker")
    parser.add_argument("action", choices=["fetch"])
    parser.parse_args(argv)
    try:
        find_java()
        libs = kafka_libs()
    except KafkaUnavailableError as exc:
        print(f"genrec: Apache Kafka unavailable: {exc}", file=sys.stderr)
        return 1
    print(libs)
    return 0


__all__ = [
    "KafkaBroker",
    "KafkaUnavailableError",
    "TestCertificates",
    "cache_root",
    "find_java",
    "find_maven",
    "kafka_libs",
    "kafka_version",
    "make_test_certificates",
    "new_cluster_id",
]

if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
