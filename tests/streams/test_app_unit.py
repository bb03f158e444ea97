"""The Faust app as configured from settings (no broker): topics, table, Tansu-safe client settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from genrec.streams.settings import StreamSettings


@pytest.fixture
def worker(tmp_path: Path):
    from genrec.streams.app import GenrecWorker

    s = StreamSettings(
        bootstrap="127.0.0.1:1",
        state_dir=tmp_path,
        events_topic="x.events",
        requests_topic="x.requests",
        partitions=5,
        fetch_max_wait_ms=7,
        web_enabled=False,
    )
    return GenrecWorker(s)


def test_topics_table_and_producer_settings(worker) -> None:
    app = worker.app
    assert worker.events_topic.get_topic_name() == "x.events"
    assert worker.requests_topic.get_topic_name() == "x.requests"
    # Co-partitioned: the table's changelog has the source topics' partition count.
    assert worker.history.partitions == 5
    assert worker.history.changelog_topic.partitions == 5
    # Values are our binary encoding, stored and logged as raw bytes (not JSON).
    assert worker.history.key_serializer == "raw" and worker.history.value_serializer == "raw"
    assert app.conf.producer_max_batch_size == 64  # one record per changelog batch (Tansu)
    assert str(app.conf.store) == "rocksdb:"


async def test_worker_consumer_gets_the_configured_fetch_wait(worker) -> None:
    # aiokafka binds its consumer to the running loop: build it inside one (nothing connects yet).
    from genrec.streams.transport import _ConsumerThread

    consumer = worker.app.consumer
    thread = consumer._new_consumer_thread()
    assert isinstance(thread, _ConsumerThread)
    aio = thread._create_worker_consumer(worker.app.transport)
    assert aio._fetch_max_wait_ms == 7  # Faust itself hard-codes 1500


def test_not_ready_before_the_model_is_loaded(worker) -> None:
    ok, state = worker.ready()
    assert not ok and state["model_loaded"] is False
