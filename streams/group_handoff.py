"""A restarted worker takes its own place in the consumer group at once, instead of waiting out its dead self.

A SIGKILLed worker leaves its member in the group until the coordinator misses its heartbeats for a whole
session timeout. A worker restarted at once on the same state folder (a supervisor's restart, a pod's
container restart) joins while that ghost is still a member, and the coordinator holds the rebalance for it:
measured on the embedded broker with a 4 s session, a plain restart waited 8.1 s for its partitions, 2.0 s
after the ghost was removed (`ops/bench_chaos.py` and RELIABILITY.md, issue 19 item 10).

So every worker writes the member id the coordinator gave it into its state folder (`remember`, on each
assignment), and a worker starting on that folder first asks the coordinator to remove that member (a
LeaveGroup request on its behalf, `leave_previous`), which is what the dead process would have sent on a
clean stop. Kafka Streams reaches the same end with static membership (`group.instance.id`); the embedded
broker does not shortcut a static member's return (measured: 6.0 s), while LeaveGroup works on every broker.

The state folder is the identity: one worker process per folder (RocksDB locks it), so the member recorded
there is this worker's previous life and no other live member. Should it be alive after all (a folder copied
to a second host), removing it costs one rebalance, not data: a fenced member's commits are refused and it
rejoins.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MEMBER_FILE = "group-member.json"
MAX_MEMBER_FILE_BYTES = 4096  # a group id and a member id; anything larger is not ours
MAX_ID_CHARS = 512


def remember(state_dir: Path, group: str, member_id: str) -> None:
    """Record this process's member id of `group` (atomically: a kill mid-write leaves the old file)."""
    if not member_id or len(member_id) > MAX_ID_CHARS or len(group) > MAX_ID_CHARS:
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"group": group, "member_id": member_id}).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{MEMBER_FILE}.", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, state_dir / MEMBER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def recall(state_dir: Path, group: str) -> str | None:
    """The member id recorded in `state_dir` for `group`, or None (no file, another group, unreadable)."""
    path = state_dir / MEMBER_FILE
    try:
        if path.stat().st_size > MAX_MEMBER_FILE_BYTES:
            return None
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("group") != group:
        return None
    member = doc.get("member_id")
    return member if isinstance(member, str) and 0 < len(member) <= MAX_ID_CHARS else None


async def leave_previous(
    bootstrap: list[str], group: str, state_dir: Path, security: dict[str, Any], timeout_s: float = 5.0
) -> str | None:
    """Remove this state folder's previous member from `group`; returns its id when the coordinator took it out.

    Never raises: a failure only means the coordinator waits out the ghost's session, as before.
    """
    member = recall(state_dir, group)
    if member is None:
        return None
    from aiokafka import AIOKafkaClient
    from aiokafka.client import CoordinationType
    from aiokafka.errors import for_code
    from aiokafka.protocol.group import LeaveGroupRequest

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **security)
    try:
        async with asyncio.timeout(timeout_s):
            await client.bootstrap()
            coordinator = await client.coordinator_lookup(CoordinationType.GROUP, group)
            resp = await client.send(coordinator, LeaveGroupRequest(group, member))
        error = for_code(resp.error_code)
        if resp.error_code != 0:
            # UNKNOWN_MEMBER_ID: its session had already expired, or it left cleanly. Nothing to do.
            log.info("previous member %s of group %s not removed: %s", member, group, error.__name__)
            return None
        log.info("removed this state folder's previous member %s from group %s", member, group)
        return member
    except Exception as exc:
        log.warning("could not remove the previous member %s from group %s (%r): waiting out its session",
                    member, group, exc)
        return None
    finally:
        await client.close()
