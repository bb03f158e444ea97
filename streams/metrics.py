"""Prometheus metrics of one worker (README, metrics; docs/architecture.md), on a registry of its own.

Rates (events/s, requests/s) are `rate()` of the counters; lag is computed at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# aiohttp wants the charset outside content_type; the exposition format is ASCII anyway.
CONTENT_TYPE = "text/plain; version=0.0.4"

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# genrec_replies_total{outcome}: `sent` (confirmed by the broker), `refused` (reply_to outside the reply prefix, or
# one of the worker's own topics: answered on the results topic only), `no_topic` (the topic does not exist: its
# client has gone), `failed` (refused by the broker, or not confirmed within reply_timeout_s), `dropped` (more
# replies waiting than max_pending).
REPLY_OUTCOMES = ("sent", "refused", "no_topic", "failed", "dropped")


class _LagCollector(Collector):
    def __init__(self, lag: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self._lag = lag

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "genrec_consumer_lag",
            "Log end offset minus the next offset to read",
            labels=["topic", "partition"],
        )
        for topic, partition, lag in self._lag():
            g.add_metric([topic, str(partition)], lag)
        yield g


# Faust's own sensors (messages in and out, per-stream events, table operations, send/commit/rebalance latencies)
# are exported under this prefix, the same for every role and app id, so that one dashboard query fits all.
FAUST_PREFIX = "faust"


class _ChildProcessCollector(Collector):
    """CPU and memory of a child process (the inference child), read by PID from /proc at scrape time.

    prometheus_client's ProcessCollector does the reading (the same numbers as the worker's own `process_*`);
    this only skips the scrape while there is no child (the model not loaded yet, or on a thread), instead of
    reporting a process that does not exist. A restarted child is a new PID: its CPU counter starts again at
    zero, which `rate()` reads as a counter reset.
    """

    def __init__(self, namespace: str, pid: Callable[[], int | None]) -> None:
        self._pid = pid
        self._current: int | None = None
        self._inner = ProcessCollector(namespace=namespace, pid=lambda: self._current or "self", registry=None)

    def collect(self) -> Iterable[Metric]:
        pid = self._pid()
        if pid is None:
            return []
        self._current = pid
        return self._inner.collect()

    def describe(self) -> Iterable[Metric]:
        return []  # names known only once a child runs; nothing else on the registry shares them


def install_faust_sensors(app: Any, registry: CollectorRegistry) -> None:
    """Faust's Prometheus sensors on `registry`, served by our own /metrics, with the per-message and per-event
    ones counted cheaply and exported at scrape time (streams/faust_monitor.py says why).

    faust's `setup_prometheus_sensors` would also add a second /metrics page and default to the global registry;
    only its metrics are taken. The monitor is a Faust Monitor, so the offsets the lag gauge reads
    (tp_read_offsets, tp_end_offsets) are kept as before. Call before the app starts: Faust registers the
    monitor as a sensor then.
    """
    from genrec.streams import faust_monitor

    faust_monitor.install(app, registry, FAUST_PREFIX)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # CPU, memory, open files and start time of this process (`process_*`, as on the default registry).
        ProcessCollector(registry=r)
        self.events = Counter(
            "genrec_events", "Events consumed, by outcome", ["outcome"], registry=r
        )  # appended | duplicate | query | dead_letter
        # events appended / history writes = how much the ingest coalesced (streams/app.py, TableStore).
        self.history_writes = Counter(
            "genrec_history_writes", "History table writes (RocksDB put + changelog record)", registry=r
        )
        self.requests = Counter("genrec_requests", "Requests received, by source", ["source"], registry=r)
        self.results = Counter("genrec_results", "Results sent", registry=r)
        self.dead_letters = Counter("genrec_dead_letters", "Dead letters sent", ["source_topic"], registry=r)
        self.rerouted = Counter(
            "genrec_rerouted",
            "Records re-published under the user id to its murmur2 partition (wrong key or partition)",
            ["topic"],
            registry=r,
        )
        # Reasons are schemas.REJECT_REASONS plus "inference": a closed set, so the label stays bounded.
        self.rejected = Counter(
            "genrec_rejected",
            "Messages dead-lettered, by source topic and reason",
            ["source_topic", "reason"],
            registry=r,
        )
        self.failed_requests = Counter(
            "genrec_failed_requests", "Requests the model failed on (dead-lettered)", registry=r
        )
        self.batch_size = Histogram(
            "genrec_batch_size", "Requests per inference batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "genrec_inference_seconds", "Model time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.e2e_seconds = Histogram(
            "genrec_end_to_end_latency_seconds",
            "Request produced (Kafka timestamp) → result sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge("genrec_pending_requests", "Requests waiting for inference", registry=r)
        self.model_info = Gauge("genrec_model_info", "Model version being served (value 1)", ["version"], registry=r)
        self.model_swaps = Counter(
            "genrec_model_swaps", "Published model versions swapped in or refused", ["outcome"], registry=r
        )  # swapped | refused
        for outcome in ("swapped", "refused"):  # exported at 0 from the start, so increase() sees the first one
            self.model_swaps.labels(outcome=outcome)
        self.model_loaded_at = Gauge(
            "genrec_model_loaded_timestamp_seconds",
            "Unix time the serving model was loaded here (at start, or swapped in)",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "genrec_assigned_partitions", "Partitions assigned to this replica", ["topic", "kind"], registry=r
        )  # kind: active (served here) | standby (a warm copy of another replica's table)
        self.recovery_stalls = Counter(
            "genrec_recovery_stalls", "Changelog restores that made no progress for recovery_stall_s", registry=r
        )
        self.broker_info = Gauge(
            "genrec_broker_info", "The broker kind the producers are set for (value 1)", ["kind"], registry=r
        )  # kind: tansu (one-record changelog batches) | kafka (batched, idempotent); streams/broker_kind.py
        # Results also sent to a request's `reply_to` topic (streams/replies.py), by outcome: REPLY_OUTCOMES.
        self.replies = Counter(
            "genrec_replies", "Results also sent to a request's reply_to topic, by outcome", ["outcome"], registry=r
        )
        for outcome in REPLY_OUTCOMES:  # exported at 0 from the start
            self.replies.labels(outcome=outcome)
        self.ready = Gauge("genrec_ready", "1 when the worker serves (model loaded, partitions recovered)", registry=r)

    def set_model_version(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        self.model_loaded_at.set(time.time())

    def add_inference_process(self, pid: Callable[[], int | None]) -> None:
        """`genrec_inference_process_*`: CPU and memory of the model's child process (`pid()`: None when none)."""
        self.registry.register(_ChildProcessCollector("genrec_inference", pid))

    def add_lag_source(self, lag: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.registry.register(_LagCollector(lag))

    def render(self) -> bytes:
        return generate_latest(self.registry)
