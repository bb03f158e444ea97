"""A table recovery that stops making progress: noticed, explained in the log, and restarted by a seek.

Faust restores a taken-over partition's user histories from its changelog before the replica serves any
of its partitions, and it has no timeout for that: if the changelog records it waits for never reach it,
the replica stays paused, not ready, forever, and every request of its partitions waits (seen in the
scale-out test, RELIABILITY.md). A changelog partition whose restored offset stays below its highwater
for `stall_s` is stalled; the watch then logs what the Kafka client holds for it (its position, whether
it is paused or waiting for an offset reset, the fetches in flight) and seeks the partition back to the
first offset not yet restored, which makes the client fetch those records again. Restoring a record
twice is harmless: a changelog record is the whole value of its key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mode import Service

log = logging.getLogger(__name__)


@dataclass
class StallDetector:
    """Which partitions' restored offsets have not moved for `stall_s` while below their highwater.

    `observe` is called periodically with the recovery's offsets (last restored offset, -1 for none) and
    highwaters (last offset in the changelog, -1 for an empty one); a partition is reported once per stall
    and again only after `stall_s` more without progress.
    """

    stall_s: float
    _since: dict[Any, tuple[int, float]] = field(default_factory=dict)

    def observe(self, offsets: Mapping[Any, int | None], highwaters: Mapping[Any, int | None], now: float) -> list[Any]:
        stalled = []
        for tp, high in highwaters.items():
            done = offsets.get(tp)
            done = -1 if done is None else int(done)
            if high is None or done >= int(high):
                self._since.pop(tp, None)
                continue
            last = self._since.get(tp)
            if last is None or last[0] != done:
                self._since[tp] = (done, now)
            elif now - last[1] >= self.stall_s:
                stalled.append(tp)
                self._since[tp] = (done, now)
        for tp in [tp for tp in self._since if tp not in highwaters]:
            del self._since[tp]
        return stalled

    def reset(self) -> None:
        self._since.clear()


def client_state(app: Any, tp: Any) -> dict[str, Any]:
    """What Faust's Kafka client holds for `tp`: everything that decides whether it is fetched.

    Reads private attributes of faust-streaming 0.15 and aiokafka 0.13; anything missing is reported as
    such rather than raised, since this only serves the log line of a stall.
    """
    out: dict[str, Any] = {}
    try:
        consumer = app.consumer
        out["faust_paused"] = tp in consumer._paused_partitions
        out["faust_read_offset"] = consumer._read_offset.get(tp)
        out["flow_active"] = consumer.flow_active
        out["changelog_queue"] = app.tables.changelog_queue.qsize()  # fetched, not yet restored
        client = consumer._thread._ensure_consumer()
        fetcher = client._fetcher
        assignment = client._subscription.subscription.assignment
        state = assignment.state_value(tp)
        out["assigned"] = state is not None
        if state is not None:
            out["position"] = state.position if state.has_valid_position else None
            out["paused"] = state.paused
            out["awaiting_reset"] = state.awaiting_reset
            out["highwater"] = state.highwater
        waiting = [t for t in assignment.tps if not assignment.state_value(t).has_valid_position]
        out["partitions_without_position"] = sorted(f"{t.topic}[{t.partition}]" for t in waiting)
        out["fetches_in_flight_to_nodes"] = sorted(fetcher._in_flight)
        out["buffered"] = sorted(f"{t.topic}[{t.partition}]" for t in fetcher._records)
    except Exception as exc:  # a diagnostic must never take the worker down
        out["unavailable"] = repr(exc)
    return out


async def check(app: Any, detector: StallDetector, now: float) -> list[Any]:
    """One look at the app's recovery: log and re-seek every stalled active changelog partition."""
    recovery = app.tables.recovery
    if not recovery.in_recovery:
        detector.reset()
        return []
    offsets = dict(recovery.active_offsets)
    stalled = detector.observe(offsets, dict(recovery.active_highwaters), now)
    for tp in stalled:
        done = offsets.get(tp)
        start = 0 if done is None or done < 0 else int(done) + 1
        log.error(
            "recovery of %s[%d] made no progress for %.3g s (restored up to %s of %s): client state %s; "
            "seeking it to %d to fetch the rest again",
            tp.topic, tp.partition, detector.stall_s, done, recovery.active_highwaters.get(tp),
            client_state(app, tp), start,
        )
        try:
            await app.consumer.seek(tp, start)
        except Exception as exc:  # revoked meanwhile, or the client stopping: the next look decides again
            log.warning("could not seek %s[%d] to %d: %r", tp.topic, tp.partition, start, exc)
    return stalled


class RecoveryWatch(Service):
    """Looks at `app`'s recovery every few seconds, from before the first one starts.

    A service rather than an `app.timer`: Faust starts timers only after the first recovery completed, so a
    timer would never see a replica whose first recovery hangs.
    """

    def __init__(self, app: Any, stall_s: float, on_stalls: Callable[[int], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.faust_app = app
        self.detector = StallDetector(stall_s)
        self.on_stalls = on_stalls
        self.interval_s = min(5.0, stall_s / 2)

    async def tick(self) -> list[Any]:
        stalled = await check(self.faust_app, self.detector, time.monotonic())
        if stalled and self.on_stalls is not None:
            self.on_stalls(len(stalled))
        return stalled

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval_s)
            if not self.should_stop:
                try:
                    await self.tick()
                except Exception:  # a watch must never take the worker down with it
                    log.exception("recovery watch failed; it looks again in %.1f s", self.interval_s)


def install(app: Any, stall_s: float, on_stalls: Callable[[int], None] | None = None) -> RecoveryWatch:
    """Watch `app`'s recoveries; `on_stalls(n)` counts the stalls found. `app` is a GenrecFaustApp."""
    watch = RecoveryWatch(app, stall_s, on_stalls)
    app.first_services.append(watch)
    return watch
