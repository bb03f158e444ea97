"""A worker that finds `genrec.models` missing creates it with one compacted partition (issue 19 item 6), and
reads every partition the topic really has, on both brokers."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from genrec.ops.kafka_clients import KafkaSecurity
from genrec.ops.topics import TopicSpec, create_topics, describe_topics
from genrec.streams.models import ModelsTopicTable
from genrec.streams.settings import StreamSettings

from tests.conftest import both_brokers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@both_brokers
async def test_the_models_topic_is_created_compacted_when_missing(any_bootstrap: str, tmp_path: Path) -> None:
    topic = f"m{uuid.uuid4().hex[:8]}.models"
    table = ModelsTopicTable(StreamSettings(bootstrap=any_bootstrap, models_topic=topic, state_dir=tmp_path))
    await table._declare()
    # Kafka's brokers learn of a new topic a moment after its controller created it (Tansu at once): wait for
    # it as the table itself does before reading (ModelsTopicTable._partitions).
    deadline = time.monotonic() + 10
    while not (info := (await describe_topics(any_bootstrap, [topic], security=KafkaSecurity()))[0]).exists:
        assert time.monotonic() < deadline, f"{topic} never showed up"
        await asyncio.sleep(0.1)
    assert info.partitions == 1
    assert info.configs["cleanup.policy"] == "compact"


@both_brokers
async def test_the_models_table_reads_every_partition_the_topic_has(any_bootstrap: str, tmp_path: Path) -> None:
    # A models topic made by hand with 3 partitions: the table must read all of them. It once took
    # `partitions_for_topic() or {0}` from a consumer whose metadata was empty on Apache Kafka, so there it
    # silently read partition 0 only (and a version published to another partition was never followed).
    topic = f"m{uuid.uuid4().hex[:8]}.models"
    await create_topics(any_bootstrap, [TopicSpec(topic, 3)], security=KafkaSecurity())
    table = ModelsTopicTable(StreamSettings(bootstrap=any_bootstrap, models_topic=topic, state_dir=tmp_path))
    await table.on_start()
    try:
        assert {tp.partition for tp in table._consumer.assignment()} == {0, 1, 2}
    finally:
        await table.on_stop()
