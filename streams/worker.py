"""Run one worker in the foreground until SIGTERM/SIGINT (graceful: in-flight batch finished, offsets
committed) or a crash (non-zero exit, so a supervisor restarts it)."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError
from genrec.streams import broker_kind, group_handoff, logs, web_port
from genrec.streams.settings import StreamSettings

log = logging.getLogger("genrec.worker")


@dataclass(frozen=True)
class ClusterProbe:
    """What one metadata round trip at start tells a worker about its cluster."""

    # Partition counts of the worker's source topics that already exist.
    partitions: dict[str, int]
    # The broker's ApiVersions answer (API key → (min, max)); None when it could not be read.
    api_versions: dict[int, tuple[int, int]] | None


async def probe_cluster(settings: StreamSettings, timeout_s: float = 15.0) -> ClusterProbe:
    """The source topics' partition counts and the ApiVersions of a broker, in one client's round trips."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        **settings.aiokafka_security(),
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        topics = [settings.events_topic, settings.requests_topic]
        await asyncio.wait_for(client._metadata_update(client.cluster, topics), timeout_s)
        out = {}
        for t in topics:
            parts = client.cluster.partitions_for_topic(t)
            if parts:
                out[t] = len(parts)
        return ClusterProbe(out, await _api_versions(client, timeout_s))
    finally:
        await client.close()


async def _existing_partitions(settings: StreamSettings, timeout_s: float = 15.0) -> dict[str, int]:
    """Partition counts of the worker's source topics that already exist on the cluster."""
    return (await probe_cluster(settings, timeout_s)).partitions


async def _api_versions(client: Any, timeout_s: float) -> dict[int, tuple[int, int]] | None:
    """The ApiVersions answer aiokafka's connection already holds (it asks on every connect)."""
    brokers = sorted(b.nodeId for b in client.cluster.brokers())
    if not brokers:
        return None
    try:
        conn = await asyncio.wait_for(client._get_conn(brokers[0]), timeout_s)
    except (OSError, TimeoutError, KafkaError) as exc:
        log.warning("broker kind: could not connect to broker %s: %r", brokers[0], exc)
        return None
    versions = getattr(conn, "_versions", None) if conn is not None else None
    if not isinstance(versions, dict) or not versions:
        log.warning("broker kind: aiokafka's connection holds no ApiVersions (aiokafka changed?)")
        return None
    return {int(k): (int(v[0]), int(v[1])) for k, v in versions.items()}


def resolve_cluster(settings: StreamSettings) -> StreamSettings:
    """Adopt the source topics' partition count (co-partitioning) and resolve `broker_kind`."""
    probe = asyncio.run(probe_cluster(settings))
    settings = resolve_partitions(settings, probe.partitions)
    kind = broker_kind.resolve_kind(settings.broker_kind, probe.api_versions)
    how = "detected" if settings.broker_kind == "auto" else "configured"
    settings = settings.model_copy(update={"broker_kind": kind})
    profile = settings.producer_profile
    log.info(
        "broker kind: %s (%s; %s API keys); producers: changelog batches of %d bytes, linger %d ms, "
        "compression %s, idempotent %s",
        kind, how, len(probe.api_versions) if probe.api_versions else "no", profile.changelog_max_batch_size,
        profile.changelog_linger_ms, profile.compression, profile.idempotence,
    )
    return settings


def resolve_partitions(settings: StreamSettings, found: dict[str, int]) -> StreamSettings:
    """Co-partitioning needs table partitions == source topic partitions: adopt an existing count."""
    counts = set(found.values())
    if len(counts) > 1:
        raise SystemExit(
            f"genrec worker: {found} — events and requests must have the same partition count "
            "(they are co-partitioned by user)"
        )
    if counts and (n := counts.pop()) != settings.partitions:
        log.warning("topics have %d partitions; using that instead of partitions=%d", n, settings.partitions)
        return settings.model_copy(update={"partitions": n})
    return settings


def run_worker(settings: StreamSettings) -> int:
    if settings.checkpoint is None:
        print(f"genrec worker: --checkpoint (or GENREC_CHECKPOINT) is required for the {settings.role} role",
              file=sys.stderr)
        return 2
    if settings.role == "trainer" and settings.model_store is None:
        print("genrec worker: --model-store (or GENREC_MODEL_STORE) is required for the trainer role", file=sys.stderr)
        return 2
    if not settings.checkpoint.exists():
        print(f"genrec worker: checkpoint {settings.checkpoint} does not exist", file=sys.stderr)
        return 2
    logging_config = logs.setup_logging(settings)
    # Before anything slow (Kafka, the model): a taken port is one line naming --web-port, not a traceback.
    web_socket = None
    if settings.web_enabled:
        try:
            web_socket = web_port.claim_web_port(settings.web_bind, settings.web_port)
        except web_port.WebPortError as exc:
            print(f"genrec worker: {exc}", file=sys.stderr)
            return 2
        settings = settings.model_copy(update={"web_port": web_port.bound_port(web_socket)})
        web_port.write_port_file(settings.state_dir, settings.web_port)
        log.info("web port: %d", settings.web_port)
    settings = resolve_cluster(settings)
    log.info("settings: %s", settings.safe_dump())

    import faust
    from genrec.streams.app import GenrecWorker

    if settings.role == "trainer":
        from genrec.streams.trainer import GenrecTrainer

        worker: Any = GenrecTrainer(settings)
    else:
        worker = GenrecWorker(settings)
    # Before Faust joins: take this state folder's previous (killed) member out of the group, so that the
    # coordinator does not hold the join for it (streams/group_handoff.py).
    app = worker.app
    app.web_socket = web_socket
    if app.member_file_dir is not None:
        asyncio.run(
            group_handoff.leave_previous(
                settings.bootstrap_servers, app.conf.id, app.member_file_dir, settings.aiokafka_security()
            )
        )
    runner = faust.Worker(worker.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
                          logging_config=logging_config)
    try:
        runner.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:  # execute_from_commandline always raises SystemExit; keep the type checker honest
        code = 0
    if worker.app._crashed.is_set() or runner._crashed.is_set():
        log.error("worker crashed: %r", worker.app.crash_reason or runner.crash_reason)
        _exit_now(code or 1)
    return code


def _exit_now(code: int) -> None:
    """Exit at once after a crash, whatever is still running.

    A crash can interrupt Faust's shutdown half-way (a producer buffer that cannot flush any more stops the
    app's children from stopping), leaving the consumer's thread alive: the process then never exits and its
    supervisor never restarts it. Nothing is lost by not waiting: the commit protocol committed nothing past
    the failure (streams/checkpoint.py), so this is as safe as the SIGKILLs the chaos test injects. The
    inference child exits when its pipe closes.
    """
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
