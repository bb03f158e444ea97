"""Topic provisioning (README, Messages): create the genrec topics idempotently and describe them.

Partition counts matter: the worker's tables are co-partitioned with `genrec.events` and
`genrec.requests` (keyed by user), so both must have the same count, and it must not change once
state exists — an existing topic is therefore never repartitioned here, only reported.
`genrec.models` holds one key ("model") and is read whole by every replica, so it is a single,
compacted partition: compaction keeps the latest `ModelVersion` forever, however old.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code
from genrec.ops.kafka_clients import KafkaSecurity, make_admin

TOPIC_ALREADY_EXISTS = 36

DEFAULT_PARTITIONS = 6
COMPACT = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class TopicNames:
    """The README's topic defaults; every name can be overridden (flags, env)."""

    events: str = "genrec.events"
    requests: str = "genrec.requests"
    results: str = "genrec.results"
    deadletter: str = "genrec.deadletter"
    models: str = "genrec.models"

    def all(self) -> tuple[str, ...]:
        return (self.events, self.requests, self.results, self.deadletter, self.models)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a topic needs a name")
        if self.partitions < 1:
            raise ValueError(f"{self.name}: partitions must be >= 1, got {self.partitions}")
        if self.replication_factor < 1:
            raise ValueError(f"{self.name}: replication factor must be >= 1, got {self.replication_factor}")

    @property
    def compacted(self) -> bool:
        return "compact" in self.configs.get("cleanup.policy", "")


def default_specs(
    names: TopicNames | None = None,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int = 1,
    compact_changelogs: bool = True,
    extra_compacted: Iterable[str] = (),
) -> list[TopicSpec]:
    """The genrec topics; `extra_compacted` adds changelog-like topics (e.g. pre-created Faust changelogs
    on a cluster that forbids auto-creation) with the same partition count as the data topics."""
    names = names or TopicNames()
    base: dict[str, str] = {}
    if replication_factor >= 3:
        # With 3 copies, acks=all must survive one broker down yet never rest on a single copy.
        base["min.insync.replicas"] = "2"
    compact = {**base, **COMPACT} if compact_changelogs else dict(base)
    # genrec.models is always compacted, whatever `compact_changelogs` says: it holds one key that every replica
    # reads whole, and time-based retention would one day delete the version being served, so a replica
    # (re)started after that would serve its --checkpoint instead.
    models = {**base, **COMPACT}
    specs = [
        TopicSpec(names.events, partitions, replication_factor, dict(base)),
        TopicSpec(names.requests, partitions, replication_factor, dict(base)),
        TopicSpec(names.results, partitions, replication_factor, dict(base)),
        TopicSpec(names.deadletter, partitions, replication_factor, dict(base)),
        TopicSpec(names.models, 1, replication_factor, models),
    ]
    specs += [TopicSpec(name, partitions, replication_factor, compact) for name in extra_compacted]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"topic {spec.name!r} is named twice")
        seen.add(spec.name)
    return specs


def changelog_topic(app_id: str) -> str:
    """The name Faust gives the worker's history table changelog (co-partitioned with the data topics)."""
    from genrec.streams.app import HISTORY_TABLE

    return f"{app_id}-{HISTORY_TABLE}-changelog"


Status = Literal["created", "exists", "exists-different"]


@dataclass(frozen=True)
class CreateResult:
    name: str
    status: Status
    partitions: int
    detail: str = ""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    exists: bool
    partitions: int = 0
    replication_factor: int = 0
    leaders: tuple[int, ...] = ()
    under_replicated: int = 0
    configs: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "exists": self.exists,
            "partitions": self.partitions,
            "replication_factor": self.replication_factor,
            "leaders": list(self.leaders),
            "under_replicated": self.under_replicated,
            "configs": dict(self.configs),
        }


class TopicError(RuntimeError):
    pass


async def create_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    *,
    timeout_ms: int = 30_000,
    security: KafkaSecurity | None = None,
) -> list[CreateResult]:
    """Create what is missing; existing topics are fine and reported (never altered)."""
    admin = make_admin(bootstrap, security=security, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        new = [
            NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs)) for s in specs
        ]
        response = await admin.create_topics(new, timeout_ms=timeout_ms)
        errors = {name: (code, message) for name, code, message in _topic_errors(response)}
        existing = [s.name for s in specs if errors.get(s.name, (0, None))[0] == TOPIC_ALREADY_EXISTS]
        actual = await _partition_counts(admin, existing) if existing else {}
        created = {s.name: s.partitions for s in specs if errors.get(s.name, (0, None))[0] == 0}
        if created:
            await _wait_visible(admin, created, timeout_ms / 1000)
    finally:
        await admin.close()

    results: list[CreateResult] = []
    failures: list[str] = []
    for spec in specs:
        code, message = errors.get(spec.name, (0, None))
        if code == 0:
            results.append(CreateResult(spec.name, "created", spec.partitions))
        elif code == TOPIC_ALREADY_EXISTS:
            have = actual.get(spec.name, 0)
            if have == spec.partitions:
                results.append(CreateResult(spec.name, "exists", have))
            else:
                results.append(
                    CreateResult(
                        spec.name,
                        "exists-different",
                        have,
                        f"has {have} partitions, asked for {spec.partitions}; left as is "
                        "(repartitioning would move users away from their state)",
                    )
                )
        else:
            failures.append(f"{spec.name}: {for_code(code).__name__} ({code}) {message or ''}".rstrip())
    if failures:
        raise TopicError("could not create topics: " + "; ".join(failures))
    return results


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    out: list[tuple[str, int, str | None]] = []
    for entry in response.topic_errors:
        # CreateTopics v0 has (name, code); v1+ adds the message.
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        out.append((name, code, message))
    return out


async def _wait_visible(admin: Any, created: dict[str, int], timeout_s: float) -> None:
    """Until every created topic shows in the broker's metadata with all its partitions led.

    Apache Kafka answers CreateTopics once its controller has committed the topics; the brokers' metadata
    follows a moment later, so a `describe` or a worker started right after could find them missing (seen on
    the single-node test broker; Tansu shows them at once). Returning only when they are visible makes
    `genrec topics create && genrec worker …` safe. Past the timeout it returns anyway: they were created.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(list(created))
        ready = {
            t["topic"] for t in described
            if t["error_code"] == 0 and len(t["partitions"]) == created.get(t["topic"])
            and all(part["leader"] >= 0 for part in t["partitions"])
        }
        if ready >= set(created) or loop.time() >= deadline:
            return
        await asyncio.sleep(0.05)


async def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    described = await admin.describe_topics(names)
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


async def describe_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    timeout_ms: int = 30_000,
    security: KafkaSecurity | None = None,
) -> list[TopicInfo]:
    """Partitions, leaders, replication and explicitly set configs of each topic (missing ones too).

    Lists the cluster's topics first and describes only those that exist: a Metadata request naming an
    unknown topic auto-creates it on brokers that allow that (Tansu does, with its own defaults).
    """
    names = list(dict.fromkeys(names))
    admin = make_admin(bootstrap, security=security, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        present = set(await admin.list_topics())
        wanted = [n for n in names if n in present]
        described = await admin.describe_topics(wanted) if wanted else []
        configs = await _topic_configs(admin, wanted) if wanted else {}
    finally:
        await admin.close()

    by_name = {t["topic"]: t for t in described}
    infos: list[TopicInfo] = []
    for name in names:
        topic = by_name.get(name)
        if topic is None or topic["error_code"] != 0:
            infos.append(TopicInfo(name, exists=False))
            continue
        partitions = sorted(topic["partitions"], key=lambda p: p["partition"])
        infos.append(
            TopicInfo(
                name=name,
                exists=True,
                partitions=len(partitions),
                replication_factor=min((len(p["replicas"]) for p in partitions), default=0),
                leaders=tuple(p["leader"] for p in partitions),
                under_replicated=sum(1 for p in partitions if len(p["isr"]) < len(p["replicas"])),
                configs=configs.get(name, {}),
            )
        )
    return infos


# What operators check on genrec topics (Kafka lists ~40 configs per topic).
DESCRIBED_CONFIGS = ("cleanup.policy", "retention.ms", "min.insync.replicas", "max.message.bytes")


async def _topic_configs(admin: Any, names: list[str]) -> dict[str, dict[str, str]]:
    # Ask for everything and filter here: Tansu answers a by-name filter with no entries at all.
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    except KafkaError:
        return {}  # a broker without DescribeConfigs: describe the layout anyway
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != 0:
                continue
            entries = out.setdefault(resource["resource_name"], {})
            for entry in resource["config_entries"]:
                if entry["config_names"] in DESCRIBED_CONFIGS and entry["config_value"] is not None:
                    entries[entry["config_names"]] = entry["config_value"]
    return out
