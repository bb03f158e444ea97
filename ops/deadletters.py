"""`genrec deadletters list|redrive` (issue 19 item 9): read the dead letters, and send them again after a fix.

A dead letter (schemas.DeadLetter) holds its source record whole: value, key, headers, timestamp. `redrive`
re-publishes the dead letters of one reason to their source topic, so that a record refused by a bug or a
setting since fixed is processed after all. Three rules keep it from looping or repeating itself:

- **A cursor per reason.** Each reason's redrive reads the dead-letter topic through a consumer group of its
  own (`genrec-redrive-<reason>` unless `--group`) and commits how far it read once every record it sent is
  confirmed. Running it twice sends nothing the second time; dead letters of other reasons are left to their
  own cursors. (A crash between the sends and the commit sends those records again on the next run: at least
  once, like everything here; events are idempotent by `event_id`, results by `request_id`.)
- **A redrive count.** Each record sent again carries the header `genrec-redrive-count` = n + 1. A worker
  that dead-letters it again copies the count into the new dead letter (`redrives`), with the reason of the
  new failure. By default a redrive skips dead letters with `redrives >= 1`: a record that failed after a
  redrive needs a look, not another automatic round (`--max-redrives N` allows N rounds, deliberately).
- **Only the worker's own topics.** The source topic comes from the dead letter, which anyone able to write
  the dead-letter topic can forge; records are sent only to the events and requests topics (`--allow-topic`).

Records are read up to the end offsets seen at the start, so dead letters that arrive meanwhile (a redriven
record failing again, say) wait for the next run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from genrec.schemas.messages import REDRIVE_HEADER, DeadLetter, decode

DEFAULT_GROUP_PREFIX = "genrec-redrive-"


@dataclass(frozen=True)
class Letter:
    """One record of the dead-letter topic: where it sits, and its DeadLetter (None when unreadable)."""

    partition: int
    offset: int
    timestamp_ms: int
    letter: DeadLetter | None
    problem: str | None = None


@dataclass
class RedriveReport:
    reason: str
    group: str
    dry_run: bool
    read: int = 0
    matched: int = 0
    redriven: int = 0
    skipped_redriven: int = 0  # failed again after max_redrives redrives: left for a person to look at
    skipped_not_redrivable: int = 0  # the record was not kept whole (too large, a tombstone, an old dead letter)
    skipped_topic: int = 0  # a source topic outside the allowed ones
    unreadable: int = 0
    committed: dict[int, int] = field(default_factory=dict)
    by_topic: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason, "group": self.group, "dry_run": self.dry_run, "read": self.read,
            "matched": self.matched, "redriven": self.redriven, "skipped_redriven": self.skipped_redriven,
            "skipped_not_redrivable": self.skipped_not_redrivable, "skipped_topic": self.skipped_topic,
            "unreadable": self.unreadable, "by_topic": dict(self.by_topic),
            "committed": {str(p): o for p, o in sorted(self.committed.items())},
        }


def default_group(reason: str) -> str:
    return f"{DEFAULT_GROUP_PREFIX}{reason}"


async def _read(consumer: Any, topic: str, start: dict[Any, int] | None, timeout_s: float,
                idle_s: float) -> tuple[list[Letter], dict[Any, int]]:
    """Records of `topic` from `start` (None: the beginning) up to the end offsets seen now
    (`ops.kafka_clients.read_to_end`), as letters in (partition, offset) order, and each partition's position
    after the read (the next offset to read: what a cursor commits)."""
    from genrec.ops.kafka_clients import read_to_end

    records, final = await read_to_end(consumer, topic, start, timeout_s=timeout_s, idle_s=idle_s)
    out = [_letter(m) for m in records]
    out.sort(key=lambda x: (x.partition, x.offset))
    return out, final


def _letter(m: Any) -> Letter:
    try:
        return Letter(m.partition, m.offset, int(m.timestamp or 0), decode(DeadLetter, m.value))
    except ValueError as exc:
        return Letter(m.partition, m.offset, int(m.timestamp or 0), None, f"{type(exc).__name__}: {exc}"[:300])


async def list_dead_letters(bootstrap: str, topic: str, *, reason: str | None = None, timeout_s: float = 60.0,
                            idle_s: float = 2.0) -> list[Letter]:
    """Every dead letter on `topic` (of `reason`, when given), oldest first; unreadable records only unfiltered."""
    from genrec.ops.kafka_clients import make_consumer

    c = make_consumer(bootstrap)
    await c.start()
    try:
        letters, _ = await _read(c, topic, None, timeout_s, idle_s)
    finally:
        await c.stop()
    if reason is not None:
        letters = [x for x in letters if x.letter is not None and x.letter.reason_name == reason]
    return sorted(letters, key=lambda x: (x.timestamp_ms, x.partition, x.offset))


def redrive_headers(letter: DeadLetter, headers: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    """The record's headers with its redrive count raised by one (any earlier count header replaced)."""
    kept: list[tuple[str, bytes]] = [(k, v if v is not None else b"") for k, v in headers if k != REDRIVE_HEADER]
    return [*kept, (REDRIVE_HEADER, str(letter.redrives + 1).encode("ascii"))]


async def redrive(bootstrap: str, topic: str, reason: str, *, allowed_topics: Sequence[str],
                  group: str | None = None, max_redrives: int = 1, dry_run: bool = False,
                  from_beginning: bool = False, timeout_s: float = 120.0, idle_s: float = 2.0) -> RedriveReport:
    """Re-publish the dead letters of `reason` not redriven yet by this reason's cursor (module docstring)."""
    from aiokafka.structs import OffsetAndMetadata
    from genrec.ops.kafka_clients import make_consumer, make_producer, topic_partitions

    group = group or default_group(reason)
    report = RedriveReport(reason=reason, group=group, dry_run=dry_run)
    allowed = set(allowed_topics)
    consumer = make_consumer(bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    producer = None
    try:
        start: dict[Any, int] = {}
        if not from_beginning:
            from aiokafka import TopicPartition

            for p in await topic_partitions(consumer, topic):
                tp = TopicPartition(topic, p)
                committed = await consumer.committed(tp)
                if committed is not None and committed >= 0:
                    start[tp] = committed
        letters, positions = await _read(consumer, topic, start, timeout_s, idle_s)
        report.read = len(letters)
        to_send: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
        for x in letters:
            d = x.letter
            if d is None:
                report.unreadable += 1
                continue
            if d.reason_name != reason:
                continue
            report.matched += 1
            if d.redrives >= max_redrives:
                report.skipped_redriven += 1
            elif not d.redrivable:
                report.skipped_not_redrivable += 1
            elif d.source_topic not in allowed:
                report.skipped_topic += 1
            else:
                key, value, headers = d.record()
                to_send.append((d.source_topic, key, value, redrive_headers(d, headers)))
        if dry_run:
            report.redriven = len(to_send)
            for t, *_ in to_send:
                report.by_topic[t] += 1
            return report
        if to_send:
            # acks=all and one record per batch: the worker's source topics, read on the embedded broker too.
            producer = make_producer(bootstrap, one_record_batches=True, acks="all")
            await producer.start()
            futures = [await producer.send(t, value=v, key=k, headers=h) for t, k, v, h in to_send]
            await producer.flush()
            for f in futures:
                await f  # raises if the broker refused one: then nothing is committed, the next run sends again
            for t, *_ in to_send:
                report.by_topic[t] += 1
            report.redriven = len(to_send)
        if positions:
            await consumer.commit({tp: OffsetAndMetadata(o, f"redrive {reason} {time.time():.0f}")
                                   for tp, o in positions.items()})
            report.committed = {tp.partition: o for tp, o in positions.items()}
        return report
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
