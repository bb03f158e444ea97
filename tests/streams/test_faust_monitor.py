"""Faust's per-message and per-event metrics, counted in ints and exported at scrape time (streams/faust_monitor.py):
the same names and values Faust's own PrometheusMonitor gives, without its per-event Prometheus calls."""

from __future__ import annotations

from typing import Any

import faust
import pytest
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from genrec.streams.faust_monitor import SCRAPE_TIME_FIELDS, ScrapeTimeMonitor, install
from prometheus_client import CollectorRegistry


class _Task:
    pass


class _Stream:
    shortlabel = "Stream: Topic: genrec.events"

    def __init__(self) -> None:
        self.task_owner = _Task()  # Faust's Monitor keeps it in a WeakKeyDictionary

    def __str__(self) -> str:
        return "stream-1"


class _Table:
    name = "user_history"


class _Message:
    time_in: float | None = None
    time_out: float | None = None
    time_total: float | None = None


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in registry.collect():
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _drive(monitor: Any) -> None:
    """What Faust reports for three events read from two partitions, two table reads and a table write."""
    stream, table = _Stream(), _Table()
    for offset, tp in enumerate([TP("genrec.events", 0), TP("genrec.events", 1), TP("genrec.events", 0)]):
        msg = _Message()
        monitor.on_message_in(tp, offset, msg)
        state = monitor.on_stream_event_in(tp, offset, stream, None)
        monitor.on_table_get(table, b"u")
        monitor.on_stream_event_out(tp, offset, stream, None, state)
        if offset < 2:
            monitor.on_message_out(tp, offset, msg)
    monitor.on_table_set(table, b"u", b"h")
    monitor.on_table_del(table, b"v")


def test_same_samples_as_faust_prometheus_monitor() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    _drive(PrometheusMonitor(metrics=FaustMetrics.create(theirs, "faust")))
    app = faust.App("genrec-monitor-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    monitor = install(app, ours, "faust")
    assert app.monitor is monitor
    _drive(monitor)
    expected = {k: v for k, v in _samples(theirs).items() if not k.startswith("faust_events_runtime_ms")}
    got = _samples(ours)
    assert got == expected, sorted(set(got.items()) ^ set(expected.items()))
    assert got["faust_messages_received_total{}"] == 3
    assert got["faust_active_messages{}"] == 1  # one message not acked yet
    assert got["faust_total_events_total{}"] == 3 and got["faust_total_active_events{}"] == 0
    assert got["faust_messages_received_per_topics_partition{partition=0,topic=genrec.events}"] == 2
    assert got["faust_table_operations_total{operation=keys_retrieved,table=table.user_history}"] == 3
    assert got["faust_total_events_per_stream_total{stream=stream.topic_genrec.events.events}"] == 3
    assert not any(k.startswith("faust_events_runtime_ms") for k in got)


def test_hot_path_makes_no_prometheus_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the class: a message or event that passes through touches no Prometheus metric."""
    registry = CollectorRegistry()
    monitor = ScrapeTimeMonitor(FaustMetrics.create(registry, "faust"), "faust")
    for name in SCRAPE_TIME_FIELDS:
        metric = getattr(monitor._metrics, name)
        for method in ("inc", "dec", "set", "observe", "labels"):
            if hasattr(metric, method):
                monkeypatch.setattr(metric, method, _forbidden)
    _drive(monitor)
    assert monitor.events_total == 3 and monitor.messages_received_total == 3


def _forbidden(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a Prometheus metric was updated on the hot path")
