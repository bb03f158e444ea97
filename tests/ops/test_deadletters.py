"""`genrec deadletters list|redrive` against the real embedded broker (issue 19 item 9).

Dead letters are written here as a worker writes them (schemas.dead_letter); the worker itself, failing a
redriven record again, is in tests/streams/test_deadletter_redrive.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from genrec.ops.cli import _register, app
from genrec.ops.deadletters import list_dead_letters, redrive
from genrec.schemas import REDRIVE_HEADER, dead_letter, encode
from typer.testing import CliRunner

from tests.conftest import both_brokers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

_register()


def _names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"events": f"d{tag}.events", "requests": f"d{tag}.requests", "dl": f"d{tag}.deadletter",
            "elsewhere": f"d{tag}.elsewhere"}


async def _create(bootstrap: str, names: dict[str, str]) -> None:
    from genrec.ops.topics import TopicSpec, create_topics

    await create_topics(bootstrap, [TopicSpec(n, 2) for n in names.values()])


async def _produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    from genrec.ops.kafka_clients import make_producer

    p = make_producer(bootstrap, one_record_batches=True, acks="all")
    await p.start()
    try:
        for topic, key, value in records:
            await p.send_and_wait(topic, key=key, value=value)
    finally:
        await p.stop()


async def _read_all(bootstrap: str, topic: str, quiet_s: float = 2.0) -> list[Any]:
    from genrec.ops.kafka_clients import make_consumer

    c = make_consumer(bootstrap, topic)
    await c.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while loop.time() - last < quiet_s:
            got = await c.getmany(timeout_ms=200)
            for msgs in got.values():
                out.extend(msgs)
            if got:
                last = loop.time()
    finally:
        await c.stop()
    return out


def _dl(names: dict[str, str], topic: str, n: int, reason: str, **over: Any) -> tuple[str, bytes, bytes]:
    args: dict[str, Any] = {
        "source_topic": names[topic], "partition": 0, "offset": n, "key": f"user-{n}".encode(),
        "value": f'{{"n": {n}, "why": "{reason}"}} '.encode(), "reason": reason, "error": "a problem",
        "headers": [("trace", f"t{n}".encode())], "timestamp_ms": 1_700_000_000_000 + n,
    }
    args.update(over)
    return names["dl"], args["key"], encode(dead_letter(**args))


@both_brokers
async def test_redrive_sends_each_dead_letter_of_its_reason_back_once(any_bootstrap: str) -> None:
    bootstrap = any_bootstrap
    names = _names()
    await _create(bootstrap, names)
    await _produce(bootstrap, [
        _dl(names, "events", 1, "out_of_bounds"),
        _dl(names, "requests", 2, "out_of_bounds", headers=[(REDRIVE_HEADER, b"0"), ("x", None)]),
        _dl(names, "events", 3, "not_json"),  # another reason: left alone
        _dl(names, "events", 4, "out_of_bounds", headers=[(REDRIVE_HEADER, b"1")]),  # failed after a redrive
        _dl(names, "events", 5, "out_of_bounds", value=None),  # a tombstone: nothing to send
        _dl(names, "elsewhere", 6, "out_of_bounds"),  # a topic that is not the worker's
        (names["dl"], b"junk", b"not a dead letter"),
    ])
    allowed = [names["events"], names["requests"]]

    dry = await redrive(bootstrap, names["dl"], "out_of_bounds", allowed_topics=allowed, dry_run=True)
    assert (dry.read, dry.matched, dry.redriven, dry.unreadable) == (7, 5, 2, 1)
    assert (dry.skipped_redriven, dry.skipped_not_redrivable, dry.skipped_topic) == (1, 1, 1)
    assert await _read_all(bootstrap, names["events"], quiet_s=1.0) == []  # a dry run sends nothing

    rep = await redrive(bootstrap, names["dl"], "out_of_bounds", allowed_topics=allowed)
    assert (rep.redriven, dict(rep.by_topic)) == (2, {names["events"]: 1, names["requests"]: 1})
    assert sum(rep.committed.values()) == 7  # the cursor moved past everything read
    events = await _read_all(bootstrap, names["events"])
    requests = await _read_all(bootstrap, names["requests"])
    [ev], [req] = events, requests
    # The record as it came, with its redrive count: value, key and headers byte for byte.
    assert (ev.key, ev.value) == (b"user-1", b'{"n": 1, "why": "out_of_bounds"} ')
    assert list(ev.headers) == [("trace", b"t1"), (REDRIVE_HEADER, b"1")]
    assert (req.key, req.value) == (b"user-2", b'{"n": 2, "why": "out_of_bounds"} ')
    assert list(req.headers) == [("x", b""), (REDRIVE_HEADER, b"1")]  # the old count replaced, not repeated

    again = await redrive(bootstrap, names["dl"], "out_of_bounds", allowed_topics=allowed)
    assert (again.read, again.redriven) == (0, 0)  # the cursor: nothing twice
    assert len(await _read_all(bootstrap, names["events"], quiet_s=1.0)) == 1

    # Another reason has its own cursor; --from-beginning ignores the cursor (a deliberate second round).
    other = await redrive(bootstrap, names["dl"], "not_json", allowed_topics=allowed)
    assert (other.read, other.matched, other.redriven) == (7, 1, 1)
    forced = await redrive(bootstrap, names["dl"], "out_of_bounds", allowed_topics=allowed, from_beginning=True,
                           max_redrives=2)
    assert forced.redriven == 3 and forced.skipped_redriven == 0  # the one redriven once before, too


def test_list_filters_by_reason_and_shows_every_part(bootstrap: str) -> None:
    # Synchronous: the commands run their own event loop.
    names = _names()
    asyncio.run(_create(bootstrap, names))
    asyncio.run(_produce(bootstrap, [_dl(names, "events", 1, "wrong_type"), _dl(names, "requests", 2, "too_large"),
                                     _dl(names, "events", 3, "wrong_type")]))
    letters = asyncio.run(list_dead_letters(bootstrap, names["dl"], reason="wrong_type"))
    assert [x.letter.offset for x in letters if x.letter] == [1, 3]

    r = CliRunner().invoke(app, ["deadletters", "list", "--bootstrap", bootstrap, "--topic", names["dl"], "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["count"] == 3 and out["by_reason"] == {"wrong_type": 2, "too_large": 1}
    row = next(d for d in out["dead_letters"] if d["offset"] == 2)
    assert (row["reason"], row["source_topic"], row["key"], row["timestamp_ms"], row["redrives"]) == (
        "too_large", names["requests"], "user-2", 1_700_000_000_002, 0)
    assert row["redrivable"] and row["headers"] == ["trace"]

    r = CliRunner().invoke(app, ["deadletters", "redrive", "--reason", "wrong_type", "--bootstrap", bootstrap,
                                 "--topic", names["dl"], "--events-topic", names["events"],
                                 "--requests-topic", names["requests"]])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["redriven"] == 2
