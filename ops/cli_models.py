"""`genrec models list|promote|rollback` (issue 4): the model store and what `genrec.models` says is serving.

Promote and rollback publish a `ModelVersion` for a version already in the store; every infer replica
follows the topic, verifies the sha256 and swaps between batches. Rollback without `--to` goes back to the
parent of the version published last.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

StoreOpt = Annotated[Path, typer.Option("--store", envvar="GENREC_MODEL_STORE", help="model store directory")]
BootstrapOpt = Annotated[str, typer.Option("--bootstrap", envvar="GENREC_BOOTSTRAP",
                                           help="Kafka bootstrap HOST:PORT (env GENREC_BOOTSTRAP)")]
TopicOpt = Annotated[str, typer.Option("--models-topic", envvar="GENREC_MODELS_TOPIC")]

models_app = typer.Typer(no_args_is_help=True,
                         help="Model versions: list, promote, rollback; pause/resume the trainer's publishing.")


def read_published(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[Any]:
    """Every ModelVersion on the topic, oldest first (unreadable records skipped)."""
    return read_topic(bootstrap, topic, timeout_s)[0]


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> tuple[list[Any], Any]:
    """(every ModelVersion, oldest first; the latest PublishingControl or None); unreadable records skipped."""
    from genrec.ops.kafka_clients import make_consumer, topic_partitions
    from genrec.schemas.messages import ModelVersion, PublishingControl, decode
    from genrec.streams.models import MODEL_KEY, PUBLISHING_KEY

    control: list[Any] = [None]

    async def main() -> list[Any]:
        c = make_consumer(bootstrap)
        await c.start()
        out: list[Any] = []
        try:
            from aiokafka import TopicPartition

            parts = await topic_partitions(c, topic)
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                return out
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            ends = await c.end_offsets(tps)
            loop = asyncio.get_running_loop()
            t_end = loop.time() + timeout_s
            # Offsets, not end offsets, decide "read it all": Tansu's end offsets can run past the last record.
            while loop.time() < t_end:
                got = await c.getmany(timeout_ms=300)
                for msgs in got.values():
                    for m in msgs:
                        try:
                            if m.key == PUBLISHING_KEY:
                                control[0] = decode(PublishingControl, m.value)
                            elif m.key in (MODEL_KEY, None):
                                out.append((m.offset, decode(ModelVersion, m.value)))
                        except ValueError:
                            continue
                if not got and all([await c.position(tp) >= ends[tp] - 1 for tp in tps]):
                    break
        finally:
            await c.stop()
        return [v for _, v in sorted(out, key=lambda x: x[0])]

    versions = asyncio.run(main())
    return versions, control[0]


def publish(bootstrap: str, topic: str, msg: Any, pause: Any = None) -> None:
    """A ModelVersion (None: none), after a PublishingControl when given, in that order on the one partition."""
    from genrec.ops.kafka_clients import make_producer
    from genrec.streams.models import publish_control, publish_version

    async def main() -> None:
        p = make_producer(bootstrap, one_record_batches=True, acks="all")
        await p.start()
        try:
            if pause is not None:
                # First: a trainer that sees the rollback sees the pause with it, never a round in between.
                await publish_control(p, topic, pause)
            if msg is not None:
                await publish_version(p, topic, msg)
        finally:
            await p.stop()

    asyncio.run(main())


def _who() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"[:128]
    except (KeyError, OSError):
        return socket.gethostname()[:128]


def _verified(store: Path, version: str) -> Any:
    """The version's info after checking that its weights still match their sha256."""
    from genrec.model.checkpoint import CheckpointError, verify_checkpoint
    from genrec.model.store import ModelStore

    try:
        info = ModelStore(store).info(version)
    except (CheckpointError, ValueError, KeyError, OSError) as exc:
        typer.echo(f"genrec models: no version {version!r} in {store}: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        verify_checkpoint(info.path, info.sha256)
    except CheckpointError as exc:
        typer.echo(f"genrec models: {version}: {exc}; refusing", err=True)
        raise typer.Exit(2) from exc
    return info


@models_app.command("list")
def list_cmd(store: StoreOpt, bootstrap: BootstrapOpt = "127.0.0.1:9092", models_topic: TopicOpt = "genrec.models",
             published: Annotated[bool, typer.Option("--published/--store-only",
                                                     help="read the topic for the serving version")] = True,
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Versions in the store (oldest first), with the one `genrec.models` names as serving."""
    from genrec.model.store import ModelStore

    versions = ModelStore(store).list()
    serving = None
    control = None
    if published:
        msgs, control = read_topic(bootstrap, models_topic)
        serving = msgs[-1].version if msgs else None
    publishing = {"paused": bool(control and control.paused), "reason": control.reason if control else None,
                  "at": control.at if control else None, "by": control.by if control else None}
    rows = [{"version": v.version, "parent": v.parent, "sha256": v.sha256, "created_at": v.created_at,
             "metrics": v.metrics, "serving": v.version == serving} for v in versions]
    if as_json:
        sys.stdout.write(json.dumps({"serving": serving, "publishing": publishing, "versions": rows}) + "\n")
        return
    if publishing["paused"]:
        typer.echo(f"trainer publishing PAUSED ({publishing['reason'] or 'no reason given'}; "
                   "genrec models resume to let it publish again)")
    for r in rows:
        mark = "*" if r["serving"] else " "
        nd = r["metrics"].get("candidate_ndcg@10")
        typer.echo(f"{mark} {r['version']:<40} parent {r['parent'] or '-':<40} sha {r['sha256'][:12]}"
                   + (f"  holdout ndcg@10 {nd:.4f}" if nd is not None else ""))


@models_app.command("promote")
def promote(version: Annotated[str, typer.Argument()], store: StoreOpt, bootstrap: BootstrapOpt = "127.0.0.1:9092",
            models_topic: TopicOpt = "genrec.models") -> None:
    """Publish a stored version as the serving one."""
    from genrec.streams.models import version_message

    info = _verified(store, version)
    publish(bootstrap, models_topic, version_message(info, "promote"))
    typer.echo(json.dumps({"published": info.version, "kind": "promote"}))


@models_app.command("rollback")
def rollback(store: StoreOpt, bootstrap: BootstrapOpt = "127.0.0.1:9092", models_topic: TopicOpt = "genrec.models",
             to: Annotated[str | None, typer.Option("--to", help="version (default: parent of the serving one)")]
             = None,
             keep_publishing: Annotated[bool, typer.Option(
                 "--keep-publishing", help="do not pause the trainer (by default a rollback pauses its publishing, "
                                           "so that its next candidate does not replace the rolled-back version)")]
             = False) -> None:
    """Publish an older version: `--to VERSION`, or the parent of the version published last; pauses the
    trainer's publishing unless `--keep-publishing` (`genrec models resume` undoes it)."""
    from genrec.streams.models import publishing_control, version_message

    if to is None:
        msgs = read_published(bootstrap, models_topic)
        if not msgs:
            typer.echo("genrec models: nothing published yet; nothing to roll back", err=True)
            raise typer.Exit(2)
        to = msgs[-1].parent
        if not to:
            typer.echo(f"genrec models: {msgs[-1].version} has no parent; pass --to", err=True)
            raise typer.Exit(2)
    info = _verified(store, to)
    pause = None if keep_publishing else publishing_control(True, f"rollback to {info.version}", _who())
    publish(bootstrap, models_topic, version_message(info, "rollback"), pause)
    typer.echo(json.dumps({"published": info.version, "kind": "rollback", "publishing_paused": pause is not None}))


@models_app.command("pause")
def pause_cmd(bootstrap: BootstrapOpt = "127.0.0.1:9092", models_topic: TopicOpt = "genrec.models",
              reason: Annotated[str | None, typer.Option("--reason", help="why (shown by list and the trainer)")]
              = None) -> None:
    """Stop the trainer publishing versions (it trains no rounds meanwhile, and still follows promote/rollback)."""
    from genrec.streams.models import publishing_control

    publish(bootstrap, models_topic, None, publishing_control(True, reason, _who()))
    typer.echo(json.dumps({"publishing": "paused", "reason": reason}))


@models_app.command("resume")
def resume_cmd(bootstrap: BootstrapOpt = "127.0.0.1:9092", models_topic: TopicOpt = "genrec.models") -> None:
    """Let the trainer publish versions again."""
    from genrec.streams.models import publishing_control

    publish(bootstrap, models_topic, None, publishing_control(False, None, _who()))
    typer.echo(json.dumps({"publishing": "resumed"}))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
