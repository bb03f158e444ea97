"""Fixtures for the worker's integration tests: `genrec worker` child processes (each test run gets its own app
id and topic names on the shared session broker: Tansu, or Apache Kafka too for tests marked `@both_brokers`
from tests/conftest.py). The tiny real checkpoint is tests/conftest.py's (the soak bench's
test uses it too); the worker handle and topic readers live in ops/chaos.py (shared with `genrec bench chaos`) and
are re-exported here for the tests that import them from this module."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from genrec.ops.chaos import FAST_GROUP_ENV, Topics, WorkerHandle, produce, read_until, values

__all__ = ["FAST_GROUP_ENV", "Topics", "WorkerHandle", "produce", "read_until", "values"]


@pytest.fixture
def worker_factory(
    any_bootstrap: str, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], WorkerHandle]]:
    """Workers on the session broker of `broker_kind`: Tansu, or each broker in turn for `@both_brokers` tests."""
    made: list[WorkerHandle] = []

    def make() -> WorkerHandle:
        h = WorkerHandle(
            bootstrap=any_bootstrap,
            checkpoint=checkpoint,
            topics=Topics.unique(),
            app_id=f"genrec-test-{uuid.uuid4().hex[:8]}",
            base=tmp_path_factory.mktemp("worker"),
        )
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.stop_all()
