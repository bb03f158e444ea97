"""`genrec load` and `genrec bench scale` (issue 6: operating replicas).

Heavy imports (aiokafka, numpy, the broker) stay inside the commands so that `genrec --help` is instant.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

BOOTSTRAP_HELP = "Kafka bootstrap HOST:PORT (env GENREC_BOOTSTRAP, else 127.0.0.1:9092)."


def _bootstrap_option() -> Any:
    return typer.Option("127.0.0.1:9092", "--bootstrap", envvar="GENREC_BOOTSTRAP", help=BOOTSTRAP_HELP)


def load(
    bootstrap: str = _bootstrap_option(),
    rate: float = typer.Option(50.0, "--rate", min=0.001, help="Messages per second."),
    duration: float = typer.Option(30.0, "--duration", min=0.001, help="Seconds of sending."),
    users: int = typer.Option(200, "--users", min=1, help="User ids 1..U, drawn uniformly."),
    query_share: float = typer.Option(
        0.0, "--query-share", min=0.0, max=1.0, help="Share sent as query events (searches), the rest requests."
    ),
    k: int = typer.Option(10, "--k", min=1, help="List length asked by each request."),
    drain: float = typer.Option(30.0, "--drain", help="Seconds to wait for missing results after sending."),
    events_topic: str = typer.Option("genrec.events", "--events-topic", envvar="GENREC_EVENTS_TOPIC"),
    requests_topic: str = typer.Option("genrec.requests", "--requests-topic", envvar="GENREC_REQUESTS_TOPIC"),
    results_topic: str = typer.Option("genrec.results", "--results-topic", envvar="GENREC_RESULTS_TOPIC"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Paced requests and query events; results read back from the results topic; a latency report (JSON).

    Exits 1 when a request was never answered within --drain."""
    from aiokafka.errors import KafkaError
    from genrec.ops.load import run_load

    try:
        run = asyncio.run(
            run_load(
                bootstrap,
                rate=rate,
                duration_s=duration,
                users=users,
                query_share=query_share,
                k=k,
                requests_topic=requests_topic,
                events_topic=events_topic,
                results_topic=results_topic,
                drain_s=drain,
                progress=progress,
            )
        )
    except (KafkaError, OSError) as exc:
        typer.echo(f"genrec load: {exc!r}", err=True)
        raise typer.Exit(1) from exc
    report = {"bootstrap": bootstrap, "rate": rate, "duration_s": duration, **run.report()}
    if progress:
        typer.echo(
            f"sent {report['sent']} ({report['sent_queries']} queries), answered {report['answered']}, "
            f"lost {report['lost']}, duplicates {report['duplicates']}; latency p50 {report['p50_ms']} ms, "
            f"p99 {report['p99_ms']} ms, max {report['max_ms']} ms; by worker {report['by_worker']}",
            err=True,
        )
    sys.stdout.write(json.dumps(report) + "\n")
    if report["lost"]:
        raise typer.Exit(1)


def bench_scale(
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Model to serve (default: train a tiny one)."),
    replicas: str = typer.Option("1,2,3", "--replicas", help="Replica counts to measure, comma-separated."),
    requests: int = typer.Option(1500, "--requests", min=1, help="Backlog of requests per replica count."),
    users: int = typer.Option(200, "--users", min=1),
    partitions: int = typer.Option(6, "--partitions", min=1),
    failover: bool = typer.Option(True, "--failover/--no-failover", help="SIGKILL one of the most replicas."),
    failover_rate: float = typer.Option(30.0, "--failover-rate", help="Requests/s during the failover."),
    failover_seconds: float = typer.Option(40.0, "--failover-seconds", help="Seconds of load in the failover."),
    kill_after: float = typer.Option(10.0, "--kill-after", help="Seconds into the failover load to SIGKILL."),
    failover_restart: bool = typer.Option(
        False, "--failover-restart/--no-failover-restart",
        help="Restart the killed replica at once on its state folder (a supervisor's restart).",
    ),
    worker_env: list[str] = typer.Option(
        [], "--worker-env", help="GENREC_NAME=VALUE over the bench's group settings (repeatable)."
    ),
    broker: str = typer.Option("tansu", "--broker", help="tansu (embedded) or kafka (Apache Kafka)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object last on stdout."),
    update_benchmarks: bool = typer.Option(False, "--update-benchmarks", help="Write the BENCHMARKS.md section."),
    plot: Path | None = typer.Option(None, "--plot", help="PNG of replicas against requests/s, with p99 on a second "
                                     "axis (needs the bench extra: matplotlib)."),
) -> None:
    """Requests/s with 1, 2, 3 replicas on a fresh embedded broker, ratios, CPU per process; then a SIGKILL
    failover with 3 replicas (requests lost, recovery time)."""
    from genrec.ops.bench_scale import run_bench_scale, write_benchmarks_section

    try:
        counts = [int(r) for r in replicas.split(",") if r.strip()]
    except ValueError as exc:
        typer.echo(f"genrec bench scale: bad --replicas {replicas!r}", err=True)
        raise typer.Exit(2) from exc
    if not counts or min(counts) < 1:
        typer.echo("genrec bench scale: --replicas needs counts ≥ 1", err=True)
        raise typer.Exit(2)
    from genrec.ops.bench_chaos import parse_env
    from genrec.ops.broker import check_broker_kind

    try:
        env = parse_env(worker_env)
        check_broker_kind(broker)
    except ValueError as exc:
        typer.echo(f"genrec bench scale: {exc}", err=True)
        raise typer.Exit(2) from exc
    if plot is not None:
        from genrec.ops.plots import check_matplotlib

        check_matplotlib("genrec bench scale")
    result = run_bench_scale(
        checkpoint=checkpoint,
        replicas=counts,
        requests=requests,
        users=users,
        partitions=partitions,
        failover=failover,
        failover_rate=failover_rate,
        failover_seconds=failover_seconds,
        kill_after=kill_after,
        failover_restart=failover_restart,
        worker_env=env,
        broker_kind=broker,
    )
    if update_benchmarks:
        command = "genrec bench scale " + shlex.join(a for a in sys.argv[3:] if a != "--update-benchmarks")
        write_benchmarks_section(result, Path("BENCHMARKS.md"), command.strip())
    if plot is not None:
        from genrec.ops.bench_scale import plot_scale

        result["plot"] = str(plot_scale(result, plot))
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(json.dumps(result, indent=2))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("load")(load)
    bench_app.command("scale")(bench_scale)
