"""Security against a broker that enforces it (issue 21 item 4): Apache Kafka whose only client listener is
SASL_SSL (SCRAM over TLS, tests/conftest.py `kafka_secure_broker`).

- Clients without valid credentials are refused: PLAINTEXT, TLS without SASL, a wrong password, an unknown user.
- `genrec topics create|describe`, a `genrec worker` and a `genrec worker --role trainer`, configured only
  through GENREC_* variables, create the topics, serve a request, train and publish a version that the worker
  follows, and `genrec models list` reads it back; the consumer lag in /metrics drains to 0.
- Nothing secret (the client's password, the broker's own) shows in the logs at debug level, in /metrics or
  in the broker's log.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from genrec.model.checkpoint import load_checkpoint
from genrec.model.data import synthetic_dataset
from genrec.model.store import ModelStore
from genrec.ops.bench_stream import genrec_command, http_get, scrape, stop_process, wait_ready
from genrec.ops.broker import free_port
from genrec.ops.kafka_broker import BROKER_USER, KafkaBroker
from genrec.ops.kafka_clients import KafkaSecurity, fetch_cluster_info, make_consumer, make_producer
from genrec.ops.replay import dataset_events
from genrec.schemas.messages import RecRequest, encode

from tests.conftest import SECURE_USER, secure_client_env
from tests.streams.conftest import FAST_GROUP_ENV, Topics

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def _password(kafka: KafkaBroker, user: str = SECURE_USER) -> str:
    password = kafka.client_security(user).sasl_password
    assert password
    return password


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256"])
async def test_the_right_credentials_are_let_in(kafka_secure_broker: KafkaBroker, mechanism: str) -> None:
    info = await fetch_cluster_info(kafka_secure_broker.bootstrap,
                                    security=kafka_secure_broker.client_security(SECURE_USER, mechanism))
    assert info.cluster_id == kafka_secure_broker.cluster_id


@pytest.mark.timeout(120)
@pytest.mark.parametrize("client", ["plaintext", "tls-without-sasl", "wrong-password", "unknown-user"])
async def test_a_client_without_valid_credentials_is_refused(kafka_secure_broker: KafkaBroker, client: str) -> None:
    kafka = kafka_secure_broker
    ca = str(kafka.ssl_cafile)
    sec = {
        "plaintext": KafkaSecurity(),
        "tls-without-sasl": KafkaSecurity(security_protocol="SSL", ssl_cafile=ca),
        "wrong-password": KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                        sasl_username=SECURE_USER, sasl_password="not-the-password", ssl_cafile=ca),
        "unknown-user": KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
                                      sasl_username="mallory", sasl_password=_password(kafka), ssl_cafile=ca),
    }[client]
    with pytest.raises((KafkaError, OSError, TimeoutError)) as refused:
        await fetch_cluster_info(kafka.bootstrap, timeout_s=5.0, security=sec)
    if client in ("wrong-password", "unknown-user"):
        assert "SaslAuthenticationFailed" in type(refused.value).__name__ + repr(refused.value)


def _genrec(args: list[str], env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    # Wide enough that rich prints each topic name on one line of the table.
    return subprocess.run([*genrec_command(), *args], env={**env, "COLUMNS": "250"}, capture_output=True, text=True,
                          timeout=timeout_s)


def _worker(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([*genrec_command(), "worker", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _until(pred: Any, timeout_s: float, what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    raise AssertionError(f"{what} not reached in {timeout_s}s\n{tails}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_and_trainer_configured_by_env_serve_train_and_publish_over_sasl_ssl(
    kafka_secure_broker: KafkaBroker, checkpoint: Path, tmp_path: Path
) -> None:
    kafka = kafka_secure_broker
    sec = kafka.client_security(SECURE_USER)
    topics = Topics.unique()
    models_topic = f"t{uuid.uuid4().hex[:8]}.models"
    app_id = f"genrec-sec-{uuid.uuid4().hex[:8]}"
    store = tmp_path / "store"
    # Only GENREC_* variables configure the processes: none inherited from the test run, no --bootstrap flag.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENREC_")}
    env.update(FAST_GROUP_ENV, **topics.env(), **secure_client_env(kafka))
    env.update(
        GENREC_MODELS_TOPIC=models_topic, GENREC_MODEL_STORE=str(store), GENREC_CHECKPOINT=str(checkpoint),
        GENREC_LOG_LEVEL="debug",
        # A few small rounds: publishing over SASL is tested here, not whether the trainer beats its start.
        GENREC_TRAINER_ONLINE__MIN_NEW_EXAMPLES="16", GENREC_TRAINER_ONLINE__BATCH_SIZE="16",
        GENREC_TRAINER_ONLINE__STEPS_PER_ROUND="4", GENREC_TRAINER_ONLINE__HOLDOUT_EVERY="4",
        GENREC_TRAINER_ONLINE__MIN_HOLDOUT="5", GENREC_TRAINER_ONLINE__TOLERANCE="1.0",
    )

    # The operator's path: topics first (`genrec topics create`), then the workers.
    created = _genrec(["topics", "create", "--app-id", app_id], env)
    assert created.returncode == 0, created.stdout + created.stderr
    described = _genrec(["topics", "describe"], env)
    assert described.returncode == 0 and topics.events in described.stdout, described.stdout + described.stderr

    w_log, t_log = tmp_path / "worker.log", tmp_path / "trainer.log"
    logs = [w_log, t_log]
    w_port, t_port = free_port(), free_port()
    worker = _worker(["--state-dir", str(tmp_path / "w"), "--web-port", str(w_port), "--app-id", app_id],
                     env, w_log)
    trainer = _worker(["--role", "trainer", "--state-dir", str(tmp_path / "t"), "--web-port", str(t_port),
                       "--app-id", app_id], env, t_log)
    try:
        for port, proc, log in ((w_port, worker, w_log), (t_port, trainer, t_log)):
            try:
                wait_ready(port, proc, timeout_s=120)
            except Exception as exc:
                raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from exc

        events = list(dataset_events(synthetic_dataset(), limit=300))
        user = events[0].user_id
        request = RecRequest(request_id=f"sec-{uuid.uuid4().hex[:6]}", user_id=user,
                             ts=events[-1].ts + 1000, k=5)
        asyncio.run(_produce(kafka.bootstrap, sec, [(topics.events, e.user_id, encode(e)) for e in events]
                             + [(topics.requests, user, encode(request))]))

        # The infer worker serves the request; the trainer learns from the events and publishes a version.
        result = _until(lambda: _find_result(kafka.bootstrap, sec, topics.results, request.request_id), 90,
                        "the result of the request", logs)
        assert result["user_id"] == user and len(result["items"]) == 5
        base = load_checkpoint(checkpoint).version
        version = _until(lambda: _published(env, base), 150, "a version published by the trainer", logs)
        assert version in {v.version for v in ModelStore(store).list()}

        # ... and the infer worker follows the topic (read over SASL_SSL too) to a version of the store. The
        # trainer may have published a newer one meanwhile: any published version other than the base counts.
        def followed() -> bool:
            serving = json.loads(http_get(w_port, "/ready")[1]).get("model_version")
            return serving != base and serving in {v.version for v in ModelStore(store).list()}

        _until(followed, 60, "the worker serving a published version", logs)

        # Every event read: the lag gauge on /metrics says 0 for each events partition (issue 21 item 5).
        def lag_drained() -> dict[str, float] | None:
            lag = {k: v for k, v in scrape(w_port).items()
                   if k.startswith("genrec_consumer_lag{") and f'topic="{topics.events}"' in k}
            return lag if lag and all(v == 0 for v in lag.values()) else None

        assert len(_until(lag_drained, 30, "events lag 0", logs)) == int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
        metrics = http_get(w_port, "/metrics")[1].decode() + http_get(t_port, "/metrics")[1].decode()
    finally:
        stop_process(worker)
        stop_process(trainer)

    secrets = {_password(kafka), _password(kafka, BROKER_USER)}
    texts = {"worker log": w_log.read_text(errors="replace"), "trainer log": t_log.read_text(errors="replace"),
             "metrics": metrics, "broker log": kafka.log_tail(max_bytes=50_000_000),
             "genrec topics output": "".join(r.stdout + r.stderr for r in (created, described))}
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a password in the {name}"
    # The logs did run at debug level and did talk SASL: an empty log would pass the check above.
    assert "DEBUG" in texts["worker log"] and "DEBUG" in texts["trainer log"]
    assert "SCRAM-SHA-512" in texts["worker log"]


async def _produce(bootstrap: str, sec: KafkaSecurity, records: list[tuple[str, str, bytes]]) -> None:
    p = make_producer(bootstrap, False, security=sec)
    await p.start()
    try:
        for topic, key, value in records:
            await p.send(topic, key=key.encode(), value=value)
        await p.flush()
    finally:
        await p.stop()


def _find_result(bootstrap: str, sec: KafkaSecurity, topic: str, request_id: str) -> dict[str, Any] | None:
    async def main() -> dict[str, Any] | None:
        c = make_consumer(bootstrap, topic, security=sec)
        await c.start()
        try:
            for _ in range(5):
                for msgs in (await c.getmany(timeout_ms=300)).values():
                    for m in msgs:
                        value = json.loads(m.value)
                        if value.get("request_id") == request_id:
                            return value
        finally:
            await c.stop()
        return None

    return asyncio.run(main())


def _published(env: dict[str, str], base: str) -> str | None:
    """The version `genrec models list --json` (reading the topic over SASL_SSL) shows as serving, if not `base`."""
    listed = _genrec(["models", "list", "--json"], env, timeout_s=60)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    data = json.loads(listed.stdout)
    serving = data["serving"]
    return None if serving in (None, base) else str(serving)
