"""`genrec worker`, `genrec replay` and `genrec bench stream` (README; docs/architecture.md).

Heavy imports (faust, torch, the data loaders) stay inside the commands.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import typer

BOOTSTRAP_HELP = "Kafka bootstrap HOST:PORT (env GENREC_BOOTSTRAP, else 127.0.0.1:9092)."


def _bootstrap_option() -> Any:
    return typer.Option("127.0.0.1:9092", "--bootstrap", envvar="GENREC_BOOTSTRAP", help=BOOTSTRAP_HELP)


def worker(
    bootstrap: str = _bootstrap_option(),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", envvar="GENREC_CHECKPOINT", help="Model dir."),
    role: str = typer.Option("infer", "--role", help="infer (serving) | trainer (online learning, one replica)."),
    model_store: Path | None = typer.Option(None, "--model-store", envvar="GENREC_MODEL_STORE",
                                            help="Model store: versions the trainer publishes, replicas follow."),
    state_dir: Path | None = typer.Option(None, "--state-dir",
                                          help="The worker's own RocksDB state folder (env GENREC_STATE_DIR); "
                                               "never a data set folder."),
    # The old names of --state-dir, refused rather than aliased: everywhere else --data-dir is the data set
    # folder, and a worker pointed at one wrote its RocksDB files into it (issue 19).
    legacy_state_dir: Path | None = typer.Option(None, "--datadir", "--data-dir", hidden=True),
    web_port: str | None = typer.Option(None, "--web-port",
                                        help="Port of /health, /ready, /metrics (default 6066); 0 or auto: a free "
                                             "one, logged as `web port: N` and written to STATE_DIR/web-port."),
    app_id: str | None = typer.Option(None, "--app-id", help="Faust app id = consumer group (default genrec)."),
    worker_id: str | None = typer.Option(None, "--worker-id", help="Name written into each result."),
    partitions: int | None = typer.Option(None, "--partitions", help="Partitions of new topics."),
    max_batch: int | None = typer.Option(None, "--max-batch", help="Requests per inference batch, at most."),
    max_wait_ms: float | None = typer.Option(None, "--max-wait-ms", help="Longest wait to fill a batch."),
    history_len: int | None = typer.Option(None, "--history-len", help="Events kept per user (L)."),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads for inference (default: torch's)."),
    # No envvar here: StreamSettings reads GENREC_DEVICE itself, and a flag given wins over it.
    device: str | None = typer.Option(None, "--device", help="Where the model serves (env GENREC_DEVICE): auto | "
                                      "cpu | cuda[:N]; auto: a CUDA GPU when torch sees one, else the CPU."),
    log_level: str | None = typer.Option(None, "--log-level"),
) -> None:
    """Run a worker in the foreground until SIGTERM (graceful) — ingest + infer agents over RocksDB."""
    import os

    from genrec.streams.settings import StreamSettings
    from genrec.streams.worker import run_worker
    from pydantic import ValidationError

    if legacy_state_dir is not None or os.environ.get("GENREC_DATADIR"):
        given = "--datadir/--data-dir" if legacy_state_dir is not None else "GENREC_DATADIR"
        typer.echo(f"genrec worker: {given} is gone: the worker's state folder is --state-dir (env "
                   "GENREC_STATE_DIR); --data-dir names a data set folder everywhere else", err=True)
        raise typer.Exit(2)
    if role not in ("infer", "trainer"):
        typer.echo(f"genrec worker: unknown role {role!r} (infer | trainer)", err=True)
        raise typer.Exit(2)
    try:
        settings = StreamSettings.from_flags(
            bootstrap=bootstrap,
            checkpoint=checkpoint,
            role=role,
            model_store=model_store,
            state_dir=state_dir,
            web_port=web_port,
            app_id=app_id,
            worker_id=worker_id,
            partitions=partitions,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            history_len=history_len,
            torch_threads=threads,
            device=device,
            log_level=log_level,
        )
    except ValidationError as exc:
        # One line per error, in full (str(exc) shortens long messages); never the input (secrets).
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                 for e in exc.errors(include_url=False, include_input=False)]
        typer.echo("genrec worker: invalid settings:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(run_worker(settings))


def replay(
    bootstrap: str = _bootstrap_option(),
    dataset: str = typer.Option("ml-100k", "--dataset",
                                help="ml-100k | ml-1m | amazon-beauty | synthetic | interactions (your own) …"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder holding the data set files."),
    rate: float = typer.Option(500.0, "--rate", help="Messages per second (0 = as fast as possible)."),
    limit: int | None = typer.Option(None, "--limit", help="Replay only the first N events (time order)."),
    requests_every: int = typer.Option(0, "--requests-every", help="A request after every M-th event (0: none)."),
    k: int = typer.Option(10, "--k", help="List length asked by each request."),
    events_topic: str = typer.Option("genrec.events", "--events-topic", envvar="GENREC_EVENTS_TOPIC"),
    requests_topic: str = typer.Option("genrec.requests", "--requests-topic", envvar="GENREC_REQUESTS_TOPIC"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    real_times: bool = typer.Option(False, "--real-times", help="Send the data set's own times (a backfill) "
                                    "instead of shifting the last event to now."),
) -> None:
    """Replay a data set's events (and requests) onto Kafka in time order, at a given rate."""
    from genrec.model.data import load_dataset
    from genrec.ops.kafka_clients import make_producer
    from genrec.ops.replay import dataset_events, replay_items
    from genrec.ops.replay import replay as do_replay

    try:
        ds = load_dataset(dataset, data_dir)
    except (ValueError, FileNotFoundError, OSError) as exc:
        typer.echo(f"genrec replay: cannot load {dataset}: {exc}", err=True)
        raise typer.Exit(2) from exc
    n_events = ds.num_events if limit is None else min(limit, ds.num_events)
    total = n_events + (n_events // requests_every if requests_every else 0)
    typer.echo(f"replaying {n_events} events of {dataset} ({ds.num_users} users) at {rate:g}/s", err=True)

    async def main() -> dict[str, Any]:
        producer = make_producer(bootstrap, one_record_batches=False, linger_ms=5, acks="all")
        await producer.start()
        try:
            events = dataset_events(ds, limit=limit, real_times=real_times)
            items = replay_items(events, requests_every=requests_every, k=k)
            stats = await do_replay(
                producer,
                items,
                events_topic=events_topic,
                requests_topic=requests_topic,
                rate=rate,
                total=total,
                progress=progress,
            )
        finally:
            await producer.stop()
        return {"dataset": dataset, **stats.as_dict()}

    summary = asyncio.run(main())
    typer.echo(json.dumps(summary))


def bench_stream(
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Model to serve (default: train a tiny one)."),
    rates: str = typer.Option("100,200,300,400", "--rates", help="Request rates to sustain, comma-separated."),
    seconds: float = typer.Option(10.0, "--seconds", help="Duration of each rate step."),
    ceiling_events: int = typer.Option(20_000, "--ceiling-events", help="Events for each ceiling measurement."),
    users: int = typer.Option(200, "--users", help="Distinct users in the load."),
    ingest_rounds: int = typer.Option(3, "--ingest-rounds", min=1,
                                      help="Alternated pass-through / stateful-ceiling / ingest measurements "
                                           "(best of each; each round's ingest / pass-through kept)."),
    broker: str = typer.Option("tansu", "--broker",
                               help="tansu (embedded) or kafka (Apache Kafka, one KRaft node; adds the Kafka "
                                    "Streams peer)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object last on stdout."),
    update_benchmarks: bool = typer.Option(False, "--update-benchmarks", help="Write the BENCHMARKS.md section."),
    plot: Path | None = typer.Option(None, "--plot", help="PNG of the end-to-end latency CDF per offered rate "
                                     "(needs the bench extra: matplotlib)."),
) -> None:
    """Sustained requests at increasing rates on a fresh broker; throughput, latency percentiles, and the
    pass-through / stateful Faust ceilings (and on Kafka the Kafka Streams peer) measured in the same run."""
    from genrec.ops.bench_stream import run_bench_stream, write_benchmarks_section

    try:
        rate_list = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError as exc:
        typer.echo(f"genrec bench stream: bad --rates {rates!r}", err=True)
        raise typer.Exit(2) from exc
    if broker not in ("tansu", "kafka"):
        typer.echo(f"genrec bench stream: --broker must be tansu or kafka, not {broker!r}", err=True)
        raise typer.Exit(2)
    if plot is not None:
        from genrec.ops.plots import check_matplotlib

        check_matplotlib("genrec bench stream")
    result = run_bench_stream(
        plot=plot,
        broker=broker,
        checkpoint=checkpoint,
        rates=rate_list,
        seconds=seconds,
        ceiling_events=ceiling_events,
        users=users,
        ingest_rounds=ingest_rounds,
    )
    if update_benchmarks:
        write_benchmarks_section(result, Path("BENCHMARKS.md"))
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(json.dumps(result, indent=2))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("replay")(replay)
    bench_app.command("stream")(bench_stream)
