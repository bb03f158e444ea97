"""`genrec export-events` (issue 20 item 1): the events topic → `interactions.csv`, to bootstrap a model from what
the stream has seen.

Reads every partition of the topic from the beginning up to the end offsets seen at the start
(`ops.kafka_clients.read_to_end`; no consumer group, nothing committed), decodes each value with the same decoder
the worker uses (`schemas.messages.decode`), and writes the item events in the format `--dataset interactions`
reads (model/interactions.py): user_id,item_id,timestamp (epoch milliseconds, as on the wire),event_type,value.

What is left out, and counted in the report: records that do not decode (by the dead-letter reason they would get:
`schemas.messages.rejection`), query events (no item), and an `event_id` a user already sent (a redelivery or a
producer retry: the worker's history records it once too). Rows are written in time order, ties in (partition,
offset) order; the file is written beside its final name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from genrec.schemas.messages import Event, EventType, decode, rejection

FILE_NAME = "interactions.csv"


class ExportError(RuntimeError):
    """Nothing to write, or the output is already there: the message says which."""


@dataclass
class ExportReport:
    topic: str
    out: str
    records: int = 0
    written: int = 0
    queries: int = 0
    duplicates: int = 0
    undecodable: Counter[str] = field(default_factory=Counter)
    partitions: int = 0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "out": self.out, "records": self.records, "written": self.written,
                "skipped_queries": self.queries, "skipped_duplicates": self.duplicates,
                "skipped_undecodable": sum(self.undecodable.values()), "undecodable_by_reason": dict(self.undecodable),
                "partitions": self.partitions, "first_ts_ms": self.first_ts_ms, "last_ts_ms": self.last_ts_ms,
                "timestamp_unit": "milliseconds"}


def event_rows(records: list[Any], report: ExportReport) -> list[tuple[str, str, int, str, float | None]]:
    """Decoded item events as (user_id, item_id, ts_ms, event_type, value), in time order (ties: read order)."""
    rows: list[tuple[str, str, int, str, float | None]] = []
    seen: set[tuple[str, str]] = set()
    for m in sorted(records, key=lambda r: (r.partition, r.offset)):
        report.records += 1
        try:
            ev = decode(Event, m.value)
        except ValueError as exc:
            report.undecodable[rejection(exc, m.value)[0]] += 1
            continue
        if ev.type is EventType.QUERY or ev.item_id is None:
            report.queries += 1
            continue
        if (ev.user_id, ev.event_id) in seen:
            report.duplicates += 1
            continue
        seen.add((ev.user_id, ev.event_id))
        rows.append((ev.user_id, ev.item_id, ev.ts, ev.type.value, ev.value))
    rows.sort(key=lambda r: r[2])  # stable: ties keep (partition, offset) order
    if rows:
        report.first_ts_ms, report.last_ts_ms = rows[0][2], rows[-1][2]
    return rows


async def read_topic(bootstrap: str, topic: str, timeout_s: float, idle_s: float) -> tuple[list[Any], int]:
    """Every record of `topic` up to its end offsets now, and the number of partitions read."""
    from genrec.ops.kafka_clients import make_consumer, read_to_end

    consumer = make_consumer(bootstrap)
    await consumer.start()
    try:
        records, positions = await read_to_end(consumer, topic, timeout_s=timeout_s, idle_s=idle_s)
    finally:
        await consumer.stop()
    return records, len(positions)


def export_events(bootstrap: str, topic: str, out_dir: Path, *, force: bool = False, timeout_s: float = 600.0,
                  idle_s: float = 2.0) -> ExportReport:
    """Write OUT_DIR/interactions.csv from the topic; ExportError when it exists (without `force`) or when the topic
    holds no item event."""
    from genrec.model.interactions import write_interactions_csv

    out = out_dir / FILE_NAME
    if out.exists() and not force:
        raise ExportError(f"{out} exists; pass --force to replace it")
    report = ExportReport(topic=topic, out=str(out))
    records, report.partitions = asyncio.run(read_topic(bootstrap, topic, timeout_s, idle_s))
    rows = event_rows(records, report)
    if not rows:
        where = f"{report.partitions} partition(s)" if report.partitions else "no partitions: does it exist?"
        raise ExportError(f"topic {topic!r} ({where}) holds no item event to export: {report.records} records, "
                          f"{sum(report.undecodable.values())} undecodable, {report.queries} queries")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    try:
        report.written = write_interactions_csv(tmp, rows)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def export_events_cmd(
    out: Annotated[Path, typer.Option("--out", help=f"folder to write {FILE_NAME} into (created if absent)")],
    topic: Annotated[str, typer.Option("--topic", envvar="GENREC_EVENTS_TOPIC", help="the events topic")]
    = "genrec.events",
    bootstrap: Annotated[str, typer.Option("--bootstrap", envvar="GENREC_BOOTSTRAP",
                                           help="Kafka bootstrap HOST:PORT (env GENREC_BOOTSTRAP)")] = "127.0.0.1:9092",
    force: Annotated[bool, typer.Option("--force", help=f"replace an existing {FILE_NAME}")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="give up reading after this many seconds")]
    = 600.0,
    idle: Annotated[float, typer.Option("--idle", min=0.1, help="end the read after this many seconds without "
                                        "records (Tansu's end offsets can overshoot)")] = 2.0,
) -> None:
    """The events topic as interactions.csv (`--dataset interactions --data-dir OUT` reads it); one JSON report."""
    try:
        report = export_events(bootstrap, topic, out, force=force, timeout_s=timeout, idle_s=idle)
    except ExportError as exc:
        typer.echo(f"genrec export-events: {exc}", err=True)
        raise typer.Exit(1) from exc
    d = report.as_dict()
    typer.echo(f"{d['out']}: {d['written']} events from {d['records']} records of {topic} ({d['skipped_queries']} "
               f"queries, {d['skipped_duplicates']} repeated event ids, {d['skipped_undecodable']} undecodable left "
               "out)", err=True)
    sys.stdout.write(json.dumps(d) + "\n")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("export-events")(export_events_cmd)
