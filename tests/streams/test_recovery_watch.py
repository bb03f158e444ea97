"""The recovery watch: a changelog restore that stops short of its highwater is noticed and re-fetched."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from genrec.streams.recovery_watch import StallDetector, check, client_state

A, B = TP("app-user_history-changelog", 0), TP("app-user_history-changelog", 3)


def test_a_partition_is_stalled_only_after_stall_s_without_progress_below_its_highwater() -> None:
    d = StallDetector(stall_s=10.0)
    assert d.observe({A: 5, B: -1}, {A: 9, B: 41}, now=0.0) == []
    assert d.observe({A: 7, B: -1}, {A: 9, B: 41}, now=9.0) == []
    # A moved at 9 s, B has not moved since 0 s
    assert d.observe({A: 7, B: -1}, {A: 9, B: 41}, now=10.0) == [B]
    # reported once per stall_s, not at every look
    assert d.observe({A: 7, B: -1}, {A: 9, B: 41}, now=12.0) == []
    assert d.observe({A: 7, B: -1}, {A: 9, B: 41}, now=19.5) == [A]
    assert d.observe({A: 9, B: -1}, {A: 9, B: 41}, now=20.0) == [B]


def test_done_empty_and_unknown_partitions_never_stall() -> None:
    d = StallDetector(stall_s=1.0)
    for now in (0.0, 5.0, 10.0):
        # restored to the highwater; an empty changelog (-1); no restored offset yet but nothing to read
        assert d.observe({A: 9, B: None}, {A: 9, B: -1}, now=now) == []
    assert d.observe({}, {A: None}, now=20.0) == []


def test_a_partition_no_longer_recovered_is_forgotten() -> None:
    d = StallDetector(stall_s=10.0)
    d.observe({B: -1}, {B: 41}, now=0.0)
    d.observe({}, {}, now=5.0)  # B was revoked
    assert d.observe({B: -1}, {B: 41}, now=11.0) == []  # its clock restarted at 11 s


class _Consumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[Any, int]] = []
        self._paused_partitions: set[Any] = set()
        self._read_offset: dict[Any, int] = {}
        self.flow_active = True

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


def _app(in_recovery: bool, offsets: dict[Any, int], highwaters: dict[Any, int]) -> Any:
    recovery = SimpleNamespace(in_recovery=in_recovery, active_offsets=offsets, active_highwaters=highwaters)
    queue = asyncio.Queue()  # type: ignore[var-annotated]
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery, changelog_queue=queue), consumer=_Consumer())


def test_check_seeks_a_stalled_partition_back_to_its_first_unrestored_offset(caplog: Any) -> None:
    app = _app(True, {A: 4, B: -1}, {A: 9, B: 41})
    d = StallDetector(stall_s=10.0)
    assert asyncio.run(check(app, d, now=0.0)) == []
    assert asyncio.run(check(app, d, now=10.0)) == [A, B]
    assert sorted(app.consumer.seeks) == sorted([(A, 5), (B, 0)])
    assert "made no progress for 10 s" in caplog.text and "seeking it to 0" in caplog.text


def test_check_does_nothing_outside_a_recovery() -> None:
    app = _app(False, {B: -1}, {B: 41})
    d = StallDetector(stall_s=1.0)
    for now in (0.0, 5.0, 10.0):
        assert asyncio.run(check(app, d, now=now)) == []
    assert app.consumer.seeks == []


def test_client_state_reports_rather_than_raises_when_the_client_is_not_there() -> None:
    app = _app(True, {}, {})
    state = client_state(app, B)
    assert state["faust_paused"] is False and state["flow_active"] is True and state["changelog_queue"] == 0
    assert "unavailable" in state  # no Kafka client behind the fake consumer


def test_the_installed_watch_starts_with_the_app_and_counts_stalls(monkeypatch: Any) -> None:
    from genrec.streams import recovery_watch as rw

    app = _app(True, {B: -1}, {B: 41})
    app.first_services = []  # started before Faust's consumer (GenrecFaustApp), unlike an app.timer
    counted: list[int] = []
    clock = iter([0.0, 30.0])
    monkeypatch.setattr(rw, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    watch = rw.install(app, stall_s=20.0, on_stalls=counted.append)
    assert app.first_services == [watch] and watch.interval_s == 5.0
    assert asyncio.run(watch.tick()) == []
    assert asyncio.run(watch.tick()) == [B]
    assert counted == [1] and app.consumer.seeks == [(B, 0)]
