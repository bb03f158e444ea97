"""A worker that finds `genrec.models` missing creates it with one compacted partition (issue 19 item 6)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ops.kafka_clients import KafkaSecurity
from ops.topics import describe_topics
from streams.models import ModelsTopicTable
from streams.settings import StreamSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_the_models_topic_is_created_compacted_when_missing(bootstrap: str, tmp_path: Path) -> None:
    topic = f"m{uuid.uuid4().hex[:8]}.models"
    table = ModelsTopicTable(StreamSettings(bootstrap=bootstrap, models_topic=topic, state_dir=tmp_path))
    await table._declare()
    [info] = await describe_topics(bootstrap, [topic], security=KafkaSecurity())
    assert info.exists and info.partitions == 1
    assert info.configs["cleanup.policy"] == "compact"
