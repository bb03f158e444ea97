"""`genrec broker` and `genrec topics create|describe` (README; docs/architecture.md, Brokers).

Imports of aiokafka and the broker module stay inside the commands so that `genrec --help` is instant.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

BOOTSTRAP_HELP = "Kafka bootstrap HOST:PORT (env GENREC_BOOTSTRAP, else 127.0.0.1:9092)."

topics_app = typer.Typer(no_args_is_help=True, help="Create and inspect the genrec topics (idempotent).")


def _bootstrap_option() -> Any:
    return typer.Option("127.0.0.1:9092", "--bootstrap", envvar="GENREC_BOOTSTRAP", help=BOOTSTRAP_HELP)


# Topic name flags share the worker's env names (streams.settings: GENREC_EVENTS_TOPIC, …).
def _names(events: str, requests: str, results: str, deadletter: str, models: str) -> Any:
    from genrec.ops.topics import TopicNames

    return TopicNames(events=events, requests=requests, results=results, deadletter=deadletter, models=models)


EventsOpt = typer.Option("genrec.events", "--events-topic", envvar="GENREC_EVENTS_TOPIC")
RequestsOpt = typer.Option("genrec.requests", "--requests-topic", envvar="GENREC_REQUESTS_TOPIC")
ResultsOpt = typer.Option("genrec.results", "--results-topic", envvar="GENREC_RESULTS_TOPIC")
DeadletterOpt = typer.Option("genrec.deadletter", "--deadletter-topic", envvar="GENREC_DEADLETTER_TOPIC")
ModelsOpt = typer.Option("genrec.models", "--models-topic", envvar="GENREC_MODELS_TOPIC")


class BrokerKind(StrEnum):
    tansu = "tansu"
    kafka = "kafka"


def broker(
    port: int = typer.Option(9092, "--port", help="Port on 127.0.0.1; 0 picks a free one."),
    host: str = typer.Option("127.0.0.1", "--host", help="Listen address (loopback by default)."),
    kind: BrokerKind = typer.Option(
        "tansu",
        "--kind",
        help="tansu: the embedded broker (memory storage). kafka: Apache Kafka in KRaft mode, one node "
        "(needs Java 17+; its jars are fetched once with Maven, ops/kafka/pom.xml).",
    ),
    log_file: Path | None = typer.Option(None, "--log-file", help="The broker's log (default: a temp file)."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="kafka only: keep the storage here, reused on the next start (default: a temp dir)."
    ),
    ready_timeout: float | None = typer.Option(
        None, "--ready-timeout", help="Seconds to wait for readiness (default: 30 for tansu, 90 for kafka)."
    ),
) -> None:
    """Run a Kafka-protocol broker until SIGTERM/SIGINT: Tansu (default) or Apache Kafka (--kind kafka)."""
    from genrec.ops.broker import BrokerBinaryNotFoundError, BrokerProcess, BrokerStartError, EmbeddedBroker

    kind = BrokerKind(kind)
    if data_dir is not None and kind is not BrokerKind.kafka:
        typer.echo("genrec broker: --data-dir is for --kind kafka (tansu keeps its data in memory)", err=True)
        raise typer.Exit(2)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    # Installed before the start so that a SIGTERM during startup still ends in a clean stop.
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    embedded: BrokerProcess
    unavailable: tuple[type[Exception], ...]
    if kind is BrokerKind.kafka:
        from genrec.ops.kafka_broker import KafkaBroker, KafkaUnavailableError

        embedded = KafkaBroker(
            port=port or None, host=host, log_path=log_file, data_dir=data_dir, ready_timeout_s=ready_timeout or 90.0
        )
        unavailable = (KafkaUnavailableError,)
    else:
        embedded = EmbeddedBroker(
            port=port or None, host=host, log_path=log_file, ready_timeout_s=ready_timeout or 30.0
        )
        unavailable = (BrokerBinaryNotFoundError,)
    try:
        try:
            embedded.start()
        except (BrokerStartError, *unavailable) as exc:
            typer.echo(f"genrec broker: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(
            f"genrec broker ready on {embedded.bootstrap} ({kind.value} pid {embedded.pid}, log {embedded.log_path})"
        )
        sys.stdout.flush()
        while not stop.is_set():
            status = embedded.wait(0.5)
            if status is not None:
                typer.echo(
                    f"genrec broker: {kind.value} exited on its own (status {status}):\n{embedded.log_tail()}",
                    err=True,
                )
                raise typer.Exit(1)
    finally:
        embedded.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo("genrec broker stopped")


@topics_app.command("create")
def topics_create(
    bootstrap: str = _bootstrap_option(),
    partitions: int = typer.Option(
        6, "--partitions", envvar="GENREC_PARTITIONS", min=1, help="Partitions of the data topics."
    ),
    replication_factor: int = typer.Option(1, "--replication-factor", envvar="GENREC_REPLICATION", min=1),
    compact: bool = typer.Option(
        True, "--compact/--no-compact",
        help="Compact the changelog topics (--compacted, --app-id); genrec.models is always compacted."
    ),
    compacted: list[str] = typer.Option(
        [], "--compacted", help="Extra changelog topic to create compacted (repeatable)."
    ),
    app_id: list[str] = typer.Option(
        [],
        "--app-id",
        help="Also create this worker group's table changelog (<app-id>-user_history-changelog), compacted, "
        "with the data topics' partitions: for clusters that forbid auto-creation (repeatable).",
    ),
    events_topic: str = EventsOpt,
    requests_topic: str = RequestsOpt,
    results_topic: str = ResultsOpt,
    deadletter_topic: str = DeadletterOpt,
    models_topic: str = ModelsOpt,
    wait: float = typer.Option(60.0, "--wait", help="Seconds to wait for the cluster to answer first."),
    strict: bool = typer.Option(False, "--strict", help="Fail if a topic exists with other partitions."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Create the genrec topics; topics that already exist are left as they are and reported."""
    from aiokafka.errors import KafkaError
    from genrec.ops.kafka_clients import KafkaConfigError, KafkaSecurity, wait_for_kafka
    from genrec.ops.topics import TopicError, changelog_topic, create_topics, default_specs

    try:
        security = KafkaSecurity.from_env()
        specs = default_specs(
            _names(events_topic, requests_topic, results_topic, deadletter_topic, models_topic),
            partitions=partitions,
            replication_factor=replication_factor,
            compact_changelogs=compact,
            extra_compacted=[*compacted, *(changelog_topic(a) for a in app_id)],
        )
    except (KafkaConfigError, ValueError) as exc:
        typer.echo(f"genrec topics create: {exc}", err=True)
        raise typer.Exit(2) from exc

    async def _run() -> list[Any]:
        await wait_for_kafka(bootstrap, timeout_s=wait, security=security)
        return await create_topics(bootstrap, specs, security=security)

    try:
        results = asyncio.run(_run())
    except (TopicError, TimeoutError, KafkaError, OSError) as exc:
        typer.echo(f"genrec topics create: {exc}", err=True)
        raise typer.Exit(1) from exc

    by_name = {s.name: s for s in specs}
    if as_json:
        rows = [
            {
                "name": r.name,
                "status": r.status,
                "partitions": r.partitions,
                "compacted": by_name[r.name].compacted,
                "detail": r.detail,
            }
            for r in results
        ]
        typer.echo(json.dumps({"bootstrap": bootstrap, "topics": rows}))
    else:
        for r in results:
            extra = " compacted" if by_name[r.name].compacted else ""
            typer.echo(f"{r.status:>16}  {r.name}  partitions={r.partitions}{extra}  {r.detail}".rstrip())
    different = [r for r in results if r.status == "exists-different"]
    for r in different:
        typer.echo(f"warning: {r.name} {r.detail}", err=True)
    if strict and different:
        raise typer.Exit(3)


@topics_app.command("describe")
def topics_describe(
    topics: list[str] = typer.Argument(None, help="Topics to describe (default: the five genrec topics)."),
    bootstrap: str = _bootstrap_option(),
    events_topic: str = EventsOpt,
    requests_topic: str = RequestsOpt,
    results_topic: str = ResultsOpt,
    deadletter_topic: str = DeadletterOpt,
    models_topic: str = ModelsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Partitions, leaders, replication and configs; exits 1 if a topic is missing."""
    from aiokafka.errors import KafkaError
    from genrec.ops.kafka_clients import KafkaConfigError, KafkaSecurity
    from genrec.ops.topics import describe_topics

    names = (
        list(topics)
        if topics
        else list(_names(events_topic, requests_topic, results_topic, deadletter_topic, models_topic).all())
    )
    try:
        security = KafkaSecurity.from_env()
    except KafkaConfigError as exc:
        typer.echo(f"genrec topics describe: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        infos = asyncio.run(describe_topics(bootstrap, names, security=security))
    except (KafkaError, OSError, TimeoutError) as exc:  # refused, auth failure, timeout: report it
        typer.echo(f"genrec topics describe: cannot reach {bootstrap}: {exc!r}", err=True)
        raise typer.Exit(1) from exc

    if as_json:
        typer.echo(json.dumps({"bootstrap": bootstrap, "topics": [i.as_dict() for i in infos]}))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"topics on {bootstrap}")
        for column in ("topic", "partitions", "replication", "under-replicated", "leaders", "configs"):
            table.add_column(column, overflow="fold")
        for i in infos:
            if not i.exists:
                table.add_row(i.name, "[red]missing[/red]", "", "", "", "")
                continue
            leaders = ",".join(str(x) for x in sorted(set(i.leaders)))
            configs = " ".join(f"{k}={v}" for k, v in sorted(i.configs.items()))
            numbers = (str(i.partitions), str(i.replication_factor), str(i.under_replicated))
            table.add_row(i.name, *numbers, leaders, configs)
        Console().print(table)
    if any(not i.exists for i in infos):
        raise typer.Exit(1)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("broker")(broker)
    app.add_typer(topics_app, name="topics")
