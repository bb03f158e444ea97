"""Faust's Prometheus sensors, with the per-message and per-event ones counted in plain ints and exported at scrape
time.

Faust's `PrometheusMonitor` updates up to eight Prometheus metrics for every message an agent reads: a labelled
counter's `labels()` is a dict lookup under a lock, the per-stream label is rebuilt with a regex for every event,
and every event's runtime goes into a histogram. Measured on the ingest (docs/bench/history.md, "History written at
each commit"): about 30 µs an event, a seventh of what the whole ingest cost on Apache Kafka. Faust's base
`Monitor` already counts the same things in plain ints and dicts (the lag gauge reads its offsets); this monitor
keeps only those on the hot path and turns them into the same metric families, under the same names, when
/metrics is scraped.

What changes for a dashboard: nothing, except that `faust_events_runtime_ms` is not exported. With manual acks an
event "ends" when the agent asks for the next one, which measures the agent's loop, not the event; genrec's own
histograms time what matters (`genrec_end_to_end_latency_seconds`, `genrec_inference_seconds`). Sends, commits,
rebalances and assignments are rare next to events and keep Faust's own Prometheus metrics.
"""

from __future__ import annotations

import weakref
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP, CollectionT, EventT, Message, StreamT
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# FaustMetrics fields whose values this monitor computes at scrape time instead (all but the first are replaced
# under the same name; the runtime histogram is dropped: the module docstring says why).
SCRAPE_TIME_FIELDS = (
    "events_runtime_latency",
    "messages_received",
    "active_messages",
    "messages_received_per_topics",
    "messages_received_per_topics_partition",
    "total_events",
    "total_active_events",
    "total_events_per_stream",
    "table_operations",
)


class ScrapeTimeMonitor(PrometheusMonitor):
    """`PrometheusMonitor` whose message, event and table sensors only count (Faust's `Monitor`); `collector()`
    exports those counts under the names `FaustMetrics` gives them."""

    def __init__(self, metrics: FaustMetrics, prefix: str, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self._prefix = prefix
        # Faust's label of each stream, made once per stream (weakly held: an agent that restarts makes new ones).
        self._stream_labels: weakref.WeakKeyDictionary[StreamT, str] = weakref.WeakKeyDictionary()
        self._events_per_stream: Tally[str] = Tally()

    # ------------------------------------------------------------------ hot path: ints and dicts only

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        Monitor.on_message_in(self, tp, offset, message)

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT, event: EventT) -> None:
        self.events_total += 1
        self.events_active += 1
        label = self._stream_labels.get(stream)
        if label is None:
            label = self._stream_labels[stream] = f"stream.{self._stream_label(stream)}.events"
        self._events_per_stream[label] += 1

    def on_stream_event_out(self, tp: TP, offset: int, stream: StreamT, event: EventT, state: Any = None) -> None:
        self.events_active -= 1

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        Monitor.on_message_out(self, tp, offset, message)

    def on_table_get(self, table: CollectionT, key: Any) -> None:
        Monitor.on_table_get(self, table, key)

    def on_table_set(self, table: CollectionT, key: Any, value: Any) -> None:
        Monitor.on_table_set(self, table, key, value)

    def on_table_del(self, table: CollectionT, key: Any) -> None:
        Monitor.on_table_del(self, table, key)

    # ------------------------------------------------------------------ scrape time

    def collector(self) -> Collector:
        return _ScrapeTimeCollector(self)

    def families(self) -> Iterable[Metric]:
        p = self._prefix
        yield CounterMetricFamily(f"{p}_messages_received", "Total messages received",
                                  value=self.messages_received_total)
        yield GaugeMetricFamily(f"{p}_active_messages", "Total active messages", value=self.messages_active)
        yield _by_label(CounterMetricFamily(f"{p}_messages_received_per_topic", "Messages received per topic",
                                            labels=["topic"]), self.messages_received_by_topic)
        per_tp = GaugeMetricFamily(f"{p}_messages_received_per_topics_partition",
                                   "Messages received per topic/partition", labels=["topic", "partition"])
        for tp, offset in list(self.tp_read_offsets.items()):
            per_tp.add_metric([tp.topic, str(tp.partition)], offset)
        yield per_tp
        yield CounterMetricFamily(f"{p}_total_events", "Total events received", value=self.events_total)
        yield GaugeMetricFamily(f"{p}_total_active_events", "Total active events", value=self.events_active)
        yield _by_label(CounterMetricFamily(f"{p}_total_events_per_stream", "Events received per Stream",
                                            labels=["stream"]), self._events_per_stream)
        tables = CounterMetricFamily(f"{p}_table_operations", "Total table operations",
                                     labels=["table", "operation"])
        for name, state in list(self.tables.items()):
            for operation, n in ((self.KEYS_RETRIEVED, state.keys_retrieved), (self.KEYS_UPDATED, state.keys_updated),
                                 (self.KEYS_DELETED, state.keys_deleted)):
                tables.add_metric([f"table.{name}", operation], n)
        yield tables


def _by_label(family: CounterMetricFamily, counts: Mapping[str, int]) -> CounterMetricFamily:
    """`family` with one sample per key of `counts` (copied first: Faust's loop may add a key meanwhile)."""
    for label, n in list(counts.items()):
        family.add_metric([label], n)
    return family


class _ScrapeTimeCollector(Collector):
    def __init__(self, monitor: ScrapeTimeMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterable[Metric]:
        return list(self._monitor.families())


def install(app: Any, registry: CollectorRegistry, prefix: str) -> ScrapeTimeMonitor:
    """Faust's metrics on `registry` under `prefix`, the hot ones counted by a `ScrapeTimeMonitor` that becomes
    the app's monitor (call before the app starts: Faust registers its monitor as a sensor then)."""
    metrics = FaustMetrics.create(registry, prefix)
    for name in SCRAPE_TIME_FIELDS:
        registry.unregister(getattr(metrics, name))
    monitor = ScrapeTimeMonitor(metrics, prefix)
    registry.register(monitor.collector())
    app.monitor = monitor
    return monitor
