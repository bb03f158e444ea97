"""Security wiring without a broker: SASL (PLAIN/SCRAM) and TLS settings reach the Faust app and every
aiokafka client; the password never appears in a log line, repr or error; the web port serves health,
ready and metrics only; resource bounds cannot be pushed past by a message."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import certifi
import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from genrec.ops.kafka_clients import KafkaSecurity, make_admin, make_consumer, make_producer
from genrec.schemas.messages import MAX_ID_LEN, MAX_MESSAGE_BYTES, DeadLetter, encode, truncate_raw
from genrec.streams import history_codec
from genrec.streams.settings import StreamSettings
from pydantic import ValidationError

SECRET = "hunter2-Sup3r-secret"
CA = certifi.where()  # any real CA bundle: the TLS context must be buildable without a broker

CASES = [
    ("SASL_PLAINTEXT", "PLAIN", None),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256", None),
    ("SASL_SSL", "SCRAM-SHA-512", CA),
    ("SSL", None, CA),
]


def _env(monkeypatch: pytest.MonkeyPatch, protocol: str, mechanism: str | None, cafile: str | None) -> None:
    for k in list(os.environ):
        if k.startswith("GENREC_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("GENREC_SECURITY_PROTOCOL", protocol)
    if mechanism:
        monkeypatch.setenv("GENREC_SASL_MECHANISM", mechanism)
        monkeypatch.setenv("GENREC_SASL_USERNAME", "svc-genrec")
        monkeypatch.setenv("GENREC_SASL_PASSWORD", SECRET)
    if cafile:
        monkeypatch.setenv("GENREC_SSL_CAFILE", cafile)


def _client_auth(client: Any) -> dict[str, Any]:
    # The AIOKafkaClient every producer (`client`), consumer and admin client (`_client`) holds.
    c = getattr(client, "_client", None) or client.client
    return {
        "protocol": c._security_protocol,
        "mechanism": c._sasl_mechanism,
        "user": c._sasl_plain_username,
        "password": c._sasl_plain_password,
        "tls": c._ssl_context is not None,
    }


def _expected(protocol: str, mechanism: str | None) -> dict[str, Any]:
    sasl = protocol.startswith("SASL")
    return {
        "protocol": protocol,
        "mechanism": mechanism if sasl else None,
        "user": "svc-genrec" if sasl else None,
        "password": SECRET if sasl else None,
        "tls": protocol.endswith("SSL"),
    }


def _strip_default_mechanism(auth: dict[str, Any]) -> dict[str, Any]:
    # aiokafka keeps its default mechanism ("PLAIN") on a client that does not use SASL at all.
    return {**auth, "mechanism": auth["mechanism"] if auth["protocol"].startswith("SASL") else None}


@pytest.mark.parametrize(("protocol", "mechanism", "cafile"), CASES)
async def test_security_settings_reach_faust_and_every_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, protocol: str, mechanism: str | None, cafile: str | None
) -> None:
    from genrec.streams.app import GenrecWorker, KafkaOutput

    _env(monkeypatch, protocol, mechanism, cafile)
    s = StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_enabled=False)
    want = _expected(protocol, mechanism)
    worker = GenrecWorker(s)
    app = worker.app

    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials if mechanism else faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == protocol
    if mechanism:
        assert (auth["sasl_mechanism"], auth["sasl_plain_password"]) == (mechanism, SECRET)

    # Faust's worker consumer and its producer (tables' changelog) are built from those credentials.
    thread = app.consumer._new_consumer_thread()
    consumer = thread._create_worker_consumer(app.transport)
    assert _strip_default_mechanism(_client_auth(consumer)) == want
    assert _strip_default_mechanism(_client_auth(app.producer._new_producer())) == want
    # The worker's own results/dead-letter producer.
    assert _strip_default_mechanism(_client_auth(KafkaOutput(s).new_producer())) == want

    # The ops tools read the same GENREC_* variables.
    sec = KafkaSecurity.from_env()
    for client in (
        make_producer("127.0.0.1:1", True, security=sec),
        make_consumer("127.0.0.1:1", security=sec),
        make_admin("127.0.0.1:1", security=sec),
    ):
        assert _strip_default_mechanism(_client_auth(client)) == want


def _faust_clients_auth(app: Any) -> dict[str, dict[str, Any]]:
    """What each Kafka client a role's Faust app builds would authenticate with (nothing connects)."""
    thread = app.consumer._new_consumer_thread()
    return {
        "worker consumer": _strip_default_mechanism(_client_auth(thread._create_worker_consumer(app.transport))),
        "changelog producer": _strip_default_mechanism(_client_auth(app.producer._new_producer())),
        # Each app builds its own TLS context (equal settings, distinct objects): compare that it has one.
        "credentials": {k: (v is not None) if k == "ssl_context" else v
                        for k, v in credentials_to_aiokafka_auth(app.conf.broker_credentials).items()},
    }


@pytest.mark.parametrize(("protocol", "mechanism", "cafile"), CASES)
async def test_worker_and_trainer_roles_get_the_same_security_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, protocol: str, mechanism: str | None, cafile: str | None
) -> None:
    # One app builder for both roles (streams/app_builder.py): the trainer once had no broker_credentials.
    from genrec.streams.app import GenrecWorker
    from genrec.streams.trainer import GenrecTrainer

    _env(monkeypatch, protocol, mechanism, cafile)
    s = StreamSettings(
        bootstrap="127.0.0.1:1", state_dir=tmp_path / "w", web_enabled=False,
        checkpoint=tmp_path / "ckpt", model_store=tmp_path / "store",  # read only when the trainer starts
    )
    worker = GenrecWorker(s)
    trainer = GenrecTrainer(s.model_copy(update={"state_dir": tmp_path / "t", "role": "trainer"}))
    want = _expected(protocol, mechanism)
    w, t = _faust_clients_auth(worker.app), _faust_clients_auth(trainer.app)
    assert w == t
    assert w["worker consumer"] == want and w["changelog producer"] == want
    assert _strip_default_mechanism(_client_auth(trainer.output.new_producer())) == want
    # The other client settings the builder owns are the same too (one-record changelog batches, timeouts).
    for name in ("producer_max_batch_size", "broker_session_timeout", "broker_request_timeout",
                 "consumer_auto_offset_reset", "broker_commit_interval"):
        assert getattr(worker.app.conf, name) == getattr(trainer.app.conf, name), name
    assert worker.app.fetch_max_wait_ms == trainer.app.fetch_max_wait_ms
    assert trainer.app.conf.id == f"{s.app_id}-trainer" and trainer.app.conf.table_standby_replicas == 0


async def test_the_password_never_appears_in_logs_reprs_or_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from genrec.streams.app import GenrecWorker

    _env(monkeypatch, "SASL_SSL", "SCRAM-SHA-256", CA)
    caplog.set_level(logging.DEBUG)
    s = StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_enabled=False)
    worker = GenrecWorker(s)
    sec = KafkaSecurity.from_env()
    logging.getLogger("genrec.worker").info("settings: %s", s.safe_dump())  # what run_worker logs
    logging.getLogger("test").info("%r %s %r %s", s, s, sec, sec.describe())
    shown = [
        caplog.text,
        repr(s),
        str(s),
        str(s.safe_dump()),
        repr(sec),
        sec.describe(),
        repr(worker.app.conf.broker_credentials),
    ]
    # A settings error echoes no input (the model-level check would otherwise print every field).
    monkeypatch.delenv("GENREC_SASL_USERNAME")
    with pytest.raises(ValidationError) as info:
        StreamSettings(bootstrap="127.0.0.1:1")
    shown += [str(info.value), repr(info.value)]
    with pytest.raises(ValidationError) as info:
        StreamSettings(sasl_username="u", max_batch=0)
    shown.append(str(info.value))
    for text in shown:
        assert SECRET not in text
    assert "svc-genrec" in caplog.text  # the user name is fine to log, and the log did capture settings


async def test_the_web_port_serves_health_ready_and_metrics_only(tmp_path: Path) -> None:
    from genrec.streams.app import GenrecWorker

    worker = GenrecWorker(StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_port=6999))
    web = worker.app.web
    web.init_server()
    paths = {r.resource.canonical for r in web.web_app.router.routes()}
    # Faust's own /router and /table pages would answer any user's history to anyone on the port.
    assert paths == {"/health", "/ready", "/metrics"}


# ---------------------------------------------------------------------------------------- resource bounds


def test_a_history_value_stays_bounded_whatever_the_events() -> None:
    codec = history_codec.HistoryCodec(max_events=200, max_ids=64)
    buf: bytes | None = None
    longest = "é" * MAX_ID_LEN  # the longest item id a valid Event can carry, 2 bytes a character
    for i in range(1000):
        buf = codec.append(buf, event_id=f"e{i}", item_id=longest, action=1, ts_ms=1_700_000_000_000 + (i % 7) * 1000)
        assert buf is not None
    h = history_codec.decode(buf)
    assert len(h) == 200 and len(h.event_hashes) == 64
    # Worst case fits comfortably in one Kafka record (the changelog must never refuse a write).
    assert len(buf) <= 6 + 64 * 8 + 200 * (8 + 1 + 2 + 4 * MAX_ID_LEN) < 1_000_000


def test_a_dead_letter_stays_bounded_whatever_was_sent() -> None:
    for raw in (b"\xff" * (10 * MAX_MESSAGE_BYTES), b"\x00" * (10 * MAX_MESSAGE_BYTES), "€".encode() * 100_000):
        dl = DeadLetter(
            source_topic="t", partition=0, offset=1, key=truncate_raw(raw), raw=truncate_raw(raw), error="x" * 1024
        )
        assert len(encode(dl)) < MAX_MESSAGE_BYTES


def test_worker_bounds_come_from_settings_not_messages() -> None:
    # Every bound a message could push on has a validated ceiling in the settings.
    for field, too_big in (("max_batch", 5000), ("history_len", 70_000), ("dedup_ids", 70_000), ("query_k", 1001)):
        with pytest.raises(ValidationError):
            StreamSettings(**{field: too_big})


class _Captured(Exception):
    pass


@pytest.mark.parametrize(("protocol", "mechanism", "cafile"), CASES[1:3])
async def test_the_workers_side_clients_get_the_same_security(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, protocol: str, mechanism: str | None, cafile: str | None
) -> None:
    """The partition probe at start and the models-topic reader build their own aiokafka clients."""
    import aiokafka
    import aiokafka.admin
    from genrec.streams.models import ModelsTopicTable
    from genrec.streams.worker import _existing_partitions

    _env(monkeypatch, protocol, mechanism, cafile)
    s = StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_enabled=False)
    seen: list[dict[str, Any]] = []

    def capture(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise _Captured

    for module, name in (
        (aiokafka, "AIOKafkaClient"),
        (aiokafka, "AIOKafkaConsumer"),
        (aiokafka.admin, "AIOKafkaAdminClient"),
    ):
        monkeypatch.setattr(module, name, capture)
    with pytest.raises(_Captured):
        await _existing_partitions(s)
    table = ModelsTopicTable(s)
    with pytest.raises(_Captured):
        await table.on_start()
    with pytest.raises(_Captured):
        await table._declare()
    assert len(seen) == 3
    for kw in seen:
        assert kw["security_protocol"] == protocol
        assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
            mechanism,
            "svc-genrec",
            SECRET,
        )
        assert (kw.get("ssl_context") is not None) == protocol.endswith("SSL")


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_worker_failing_sasl_at_debug_level_never_prints_the_password(
    bootstrap: str, checkpoint: Path, tmp_path: Path
) -> None:
    """A real `genrec worker` with SCRAM credentials against the embedded broker (which speaks no SASL): it
    fails to connect and exits, logging at debug level, with tracebacks — none of it shows the password."""
    import subprocess

    from genrec.ops.bench_stream import genrec_command
    from genrec.ops.broker import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("GENREC_")}
    env.update(
        GENREC_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        GENREC_SASL_MECHANISM="SCRAM-SHA-256",
        GENREC_SASL_USERNAME="svc-genrec",
        GENREC_SASL_PASSWORD=SECRET,
        GENREC_LOG_LEVEL="debug",
    )
    cmd = [*genrec_command(), "worker", "--bootstrap", bootstrap, "--checkpoint", str(checkpoint)]
    cmd += ["--state-dir", str(tmp_path / "d"), "--web-port", str(free_port())]
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=150)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, out[-2000:]
    assert "DEBUG aiokafka" in out and "Error" in out  # it did log at debug level, and failed loudly
    assert SECRET not in out
