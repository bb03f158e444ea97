"""A restart on the same state folder takes its previous (killed) member out of the group before joining
(streams/group_handoff.py), and the worker process starts without importing torch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from genrec.streams import group_handoff

from tests.conftest import require_broker_binary


def test_member_id_round_trip_and_refusals(tmp_path: Path) -> None:
    assert group_handoff.recall(tmp_path, "g") is None
    group_handoff.remember(tmp_path, "g", "member-1")
    assert group_handoff.recall(tmp_path, "g") == "member-1"
    assert group_handoff.recall(tmp_path, "other-group") is None  # a folder reused for another app
    group_handoff.remember(tmp_path, "g", "member-2")  # replaced, atomically
    assert group_handoff.recall(tmp_path, "g") == "member-2"
    assert [p.name for p in tmp_path.iterdir()] == [group_handoff.MEMBER_FILE]  # no temp file left
    path = tmp_path / group_handoff.MEMBER_FILE
    for bad in (b"not json", b"[]", json.dumps({"group": "g", "member_id": 7}).encode(), b"x" * 5000):
        path.write_bytes(bad)
        assert group_handoff.recall(tmp_path, "g") is None
    group_handoff.remember(tmp_path, "g", "")  # nothing to record
    assert group_handoff.recall(tmp_path, "g") is None


def test_without_a_recorded_member_nothing_is_sent(tmp_path: Path) -> None:
    # No file: returns at once, without even reaching for a broker (none listens on this port).
    assert asyncio.run(group_handoff.leave_previous(["127.0.0.1:9"], "g", tmp_path, {}, timeout_s=1)) is None


def test_an_unreachable_broker_only_costs_the_timeout(tmp_path: Path) -> None:
    group_handoff.remember(tmp_path, "g", "member-1")
    t0 = time.monotonic()
    assert asyncio.run(group_handoff.leave_previous(["127.0.0.1:9"], "g", tmp_path, {}, timeout_s=1)) is None
    assert time.monotonic() - t0 < 10


GHOST = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer
from genrec.streams import group_handoff
from pathlib import Path

async def main(bootstrap, topic, group, state):
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, session_timeout_ms=10_000,
                         heartbeat_interval_ms=500, rebalance_timeout_ms=10_000)
    await c.start()
    while not c.assignment():
        await asyncio.sleep(0.05)
    group_handoff.remember(Path(state), group, c._coordinator.member_id)
    print("joined", flush=True)
    await asyncio.sleep(600)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_killed_members_place_is_freed_at_once(bootstrap: str, tmp_path: Path) -> None:
    """A member SIGKILLed after joining (session 10 s) is removed by LeaveGroup on its behalf, and a new member
    then gets every partition without waiting out the dead one's session."""
    require_broker_binary()
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic, group = f"handoff-{time.time_ns()}", f"handoff-g-{time.time_ns()}"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 3, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    ghost = subprocess.Popen([sys.executable, "-c", GHOST, bootstrap, topic, group, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert ghost.stdout is not None and ghost.stdout.readline().strip() == "joined"
    finally:
        ghost.kill()  # no LeaveGroup: its member stays until its session runs out
        ghost.wait(10)
    t_kill = time.monotonic()

    async def rejoin() -> tuple[str | None, float]:
        removed = await group_handoff.leave_previous([bootstrap], group, tmp_path, {})
        new = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, session_timeout_ms=2000,
                               heartbeat_interval_ms=500, rebalance_timeout_ms=10_000)
        await new.start()
        try:
            while len(new.assignment()) < 3:
                await asyncio.sleep(0.02)
            return removed, time.monotonic() - t_kill
        finally:
            await new.stop()

    removed, took = asyncio.run(rejoin())
    assert removed is not None
    # Waiting for the dead member would take its whole 10 s session from the kill.
    assert took < 7.0, took


def test_the_worker_process_does_not_import_torch() -> None:
    """The model runs in the inference child; the worker process decoding its replies must not pay for a torch
    import on every (re)start (about a second here)."""
    code = (
        "import sys, streams.worker, streams.app, streams.inference_process as ip;"
        "from model.recommendation import Recommendation;"
        "buf = ip.encode_reply('v', [[Recommendation('i1', 1, 0.5, 0.25)]]);"
        "assert ip.decode_reply(buf)[1][0][0].item_id == 'i1';"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
