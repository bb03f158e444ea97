"""`genrec deadletters list|redrive` (issue 19 item 9); the work is in ops/deadletters.py."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer

BootstrapOpt = Annotated[str, typer.Option("--bootstrap", envvar="GENREC_BOOTSTRAP",
                                           help="Kafka bootstrap HOST:PORT (env GENREC_BOOTSTRAP)")]
TopicOpt = Annotated[str, typer.Option("--topic", envvar="GENREC_DEADLETTER_TOPIC", help="the dead-letter topic")]

deadletters_app = typer.Typer(no_args_is_help=True, help="Dead letters: list them, redrive them after a fix.")


def _row(x: Any) -> dict[str, Any]:
    d = x.letter
    row: dict[str, Any] = {"dl_partition": x.partition, "dl_offset": x.offset, "dl_timestamp_ms": x.timestamp_ms}
    if d is None:
        return {**row, "unreadable": x.problem}
    return {
        **row,
        "reason": d.reason_name,
        "source_topic": d.source_topic,
        "partition": d.partition,
        "offset": d.offset,
        "key": d.key,
        "timestamp_ms": d.timestamp_ms,
        "redrives": d.redrives,
        "redrivable": d.redrivable,
        "headers": [h.key for h in d.headers],
        "error": d.error,
        "raw": d.raw,
    }


@deadletters_app.command("list")
def list_cmd(
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = "genrec.deadletter",
    reason: Annotated[str | None, typer.Option("--reason", help="only this reason (e.g. out_of_bounds)")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="the newest N (0: all)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """The dead letters, oldest first: reason, source record, redrive count, error (counts by reason last)."""
    from genrec.ops.deadletters import list_dead_letters

    letters = asyncio.run(list_dead_letters(bootstrap, topic, reason=reason))
    by_reason: dict[str, int] = {}
    for x in letters:
        name = x.letter.reason_name if x.letter is not None else "(unreadable)"
        by_reason[name] = by_reason.get(name, 0) + 1
    shown = letters[-limit:] if limit else letters
    if as_json:
        out = {"count": len(letters), "by_reason": by_reason, "dead_letters": [_row(x) for x in shown]}
        sys.stdout.write(json.dumps(out) + "\n")
        return
    for x in shown:
        r = _row(x)
        if "unreadable" in r:
            typer.echo(f"{x.partition}@{x.offset}  (unreadable: {r['unreadable']})")
            continue
        flag = "" if r["redrivable"] else "  [not redrivable]"
        typer.echo(f"{x.partition}@{x.offset}  {r['reason']:<14} {r['source_topic']}[{r['partition']}]@{r['offset']}"
                   f"  key={r['key']!r}  redrives={r['redrives']}{flag}  {r['error'][:160]}")
    typer.echo(f"{len(letters)} dead letters" + (f" ({len(shown)} shown)" if len(shown) < len(letters) else "")
               + ": " + ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())), err=True)


@deadletters_app.command("redrive")
def redrive_cmd(
    reason: Annotated[str, typer.Option("--reason", help="redrive the dead letters of this reason")],
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    topic: TopicOpt = "genrec.deadletter",
    events_topic: Annotated[str, typer.Option("--events-topic", envvar="GENREC_EVENTS_TOPIC")] = "genrec.events",
    requests_topic: Annotated[str, typer.Option("--requests-topic", envvar="GENREC_REQUESTS_TOPIC")]
    = "genrec.requests",
    allow_topic: Annotated[list[str] | None, typer.Option("--allow-topic",
                                                          help="another topic records may be sent back to")] = None,
    group: Annotated[str | None, typer.Option("--group", help="cursor group (default genrec-redrive-<reason>)")]
    = None,
    max_redrives: Annotated[int, typer.Option("--max-redrives", min=1,
                                              help="skip records already redriven this often (default 1: "
                                                   "a record that failed again after a redrive stays)")] = 1,
    from_beginning: Annotated[bool, typer.Option("--from-beginning",
                                                 help="ignore the cursor: every dead letter of the reason")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be sent; send and commit nothing")]
    = False,
) -> None:
    """Send the dead letters of one reason back to their source topic, once each (see ops/deadletters.py)."""
    from genrec.ops.deadletters import redrive

    allowed = [events_topic, requests_topic, *(allow_topic or [])]
    report = asyncio.run(redrive(bootstrap, topic, reason, allowed_topics=allowed, group=group,
                                 max_redrives=max_redrives, dry_run=dry_run, from_beginning=from_beginning))
    sys.stdout.write(json.dumps(report.as_dict()) + "\n")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.add_typer(deadletters_app, name="deadletters")
