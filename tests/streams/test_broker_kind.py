"""Broker kind (issue 21 item 3): Tansu-only workarounds on Tansu only, detected from ApiVersions."""

from __future__ import annotations

from pathlib import Path

import pytest
from genrec.streams.broker_kind import kind_from_api_versions, resolve_kind
from genrec.streams.settings import StreamSettings

from tests.conftest import both_brokers

# The API keys each broker served when this was written (ApiVersions, read by aiokafka on connect).
TANSU_KEYS = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 24, 25, 26, 28, 29, 30, 32,
              36, 42, 44, 46, 50, 51, 60, 69, 71, 75]
KAFKA_4_4_KEYS = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
                  30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 55, 57,
                  60, 61, 64, 65, 66, 68, 69, 74, 75, 76, 77, 78, 79, 80, 81, 83, 84, 85, 86, 87, 88, 89, 90, 91,
                  92, 93, 94]


def _versions(keys: list[int]) -> dict[int, tuple[int, int]]:
    return {k: (0, 1) for k in keys}


def test_detection_from_api_versions() -> None:
    assert kind_from_api_versions(_versions(TANSU_KEYS)) == "tansu"
    assert kind_from_api_versions(_versions(KAFKA_4_4_KEYS)) == "kafka"
    # Missing either Kafka-only key: not sure it is Kafka, so Tansu's settings (correct on any broker).
    assert kind_from_api_versions(_versions([k for k in KAFKA_4_4_KEYS if k != 23])) == "tansu"
    assert kind_from_api_versions(_versions([*TANSU_KEYS, 23])) == "tansu"
    assert kind_from_api_versions({}) == "tansu"


def test_configured_kind_wins_and_unknown_is_tansu() -> None:
    assert resolve_kind("kafka", _versions(TANSU_KEYS)) == "kafka"
    assert resolve_kind("tansu", _versions(KAFKA_4_4_KEYS)) == "tansu"
    assert resolve_kind("auto", None) == "tansu"
    assert resolve_kind("auto", _versions(KAFKA_4_4_KEYS)) == "kafka"


def test_producer_profile_per_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    tansu = StreamSettings(broker_kind="tansu").producer_profile
    # Unresolved auto (a worker built without the start-up probe) keeps Tansu's settings: today's behaviour.
    assert StreamSettings().producer_profile == tansu
    assert (tansu.changelog_max_batch_size, tansu.changelog_linger_ms, tansu.compression_type, tansu.idempotence) \
        == (64, 0, None, False)
    kafka = StreamSettings(broker_kind="kafka").producer_profile
    assert (kafka.changelog_max_batch_size, kafka.changelog_linger_ms, kafka.idempotence) == (512 * 1024, 100, True)
    monkeypatch.setenv("GENREC_BROKER_KIND", "kafka")
    monkeypatch.setenv("GENREC_PRODUCER_COMPRESSION", "gzip")
    monkeypatch.setenv("GENREC_PRODUCER_MAX_BATCH_SIZE", "64")
    env = StreamSettings().producer_profile
    assert (env.broker_kind, env.compression_type, env.changelog_max_batch_size, env.idempotence) \
        == ("kafka", "gzip", 64, True)


async def test_faust_and_results_producers_follow_the_profile(tmp_path: Path) -> None:
    from genrec.streams.app import GenrecWorker

    for kind, batch, idempotent in (("tansu", 64, False), ("kafka", 512 * 1024, True)):
        s = StreamSettings(broker_kind=kind, state_dir=tmp_path / kind, web_enabled=False)
        worker = GenrecWorker(s)
        app = worker.app
        assert app.conf.producer_max_batch_size == batch
        extra = app.producer._settings_extra()
        assert extra.get("enable_idempotence", False) is idempotent
        assert app.conf.producer_acks == -1  # idempotence needs acks=all
        results = worker.output.new_producer()
        assert (results._txn_manager is not None) is idempotent
        assert f'genrec_broker_info{{kind="{kind}"}} 1.0' in worker.metrics.render().decode()


@pytest.mark.integration
@both_brokers
async def test_detected_on_a_live_broker(broker_kind: str, any_bootstrap: str) -> None:
    from genrec.streams.worker import probe_cluster

    probe = await probe_cluster(StreamSettings(bootstrap=any_bootstrap))
    assert probe.api_versions
    assert resolve_kind("auto", probe.api_versions) == broker_kind
