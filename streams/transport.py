"""Faust's aiokafka transport with the worker consumer's `fetch_max_wait_ms` configurable, and commits
that never pass a message the worker's agents have not finished.

On the agents' topics (`GenrecFaustApp.agent_acked_topics`) the worker consumer changes five things in
faust-streaming 0.15.3; each could lose a message to a SIGKILL, the last three were seen doing it in the
chaos test (RELIABILITY.md):

- offsets between two fetched messages are not counted as acked (`_add_gap`);
- a message the stream skipped is not counted as acked (`ack`);
- a commit starts at the committed offset or does not happen (`_new_offset`);
- a message fetched again after a seek goes on to the agent instead of being dropped (`getmany`);
- messages emptied from a stream buffer on resume are read again (`_GenrecQueue.clear`).

None of them can drop a message, only deliver one again: agents are idempotent on events and may answer a
request twice (at-least-once).

Faust 0.15.3 passes `fetch_max_wait_ms=1500` to the worker's AIOKafkaConsumer, hard-coded. A broker
that holds a fetch until that wait runs out when data is sparse (Tansu does: docs/architecture.md, Brokers) then adds
up to 1.5 s of latency to every request at low rates. Apache Kafka answers as soon as data is there,
so a low value costs nothing there but a few more empty fetches.
"""

from __future__ import annotations

import logging
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import aiokafka
import faust
from faust import streams as faust_streams
from faust.exceptions import ConsumerNotStarted
from faust.tables import TableManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message, ServiceT
from faust.types.tuples import ack_lock
from faust.web import drivers as web_drivers
from genrec.streams import group_handoff
from genrec.streams.checkpoint import Checkpoint, commit_floor, discard_unconfirmed_state, holds_commit, reread_from
from mode.utils.futures import notify
from mode.utils.queues import ThrowableQueue

__all__ = ["GenrecFaustApp"]

log = logging.getLogger(__name__)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait = getattr(self.app, "fetch_max_wait_ms", None)
        if wait is not None:
            # aiokafka reads this attribute when it builds its Fetcher in start(), which has not run yet.
            if not hasattr(consumer, "_fetch_max_wait_ms"):
                raise RuntimeError("aiokafka changed: cannot override the consumer's fetch_max_wait_ms")
            consumer._fetch_max_wait_ms = int(wait)
        return consumer

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # The member id the coordinator gave this process, kept in the state folder, so that a restart on the
        # same folder can take it out of the group at once (streams/group_handoff.py).
        state_dir = getattr(self.app, "member_file_dir", None)
        if state_dir is not None:
            try:
                member_id = self._ensure_consumer()._coordinator.member_id
                group_handoff.remember(state_dir, self.app.conf.id, member_id)
            except Exception as exc:  # a restart then only waits out the session, as without the file
                log.warning("could not record the group member id: %r", exc)
        await super().on_partitions_assigned(assigned, generation_id)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def commit_and_end_transactions(self) -> None:
        """The last commit of a stop (SIGTERM) or of a revoke (rebalance), after every in-flight event
        was acked.

        Faust's `commit()` returns without committing when another commit is in flight: it waits for that
        one, whose offsets were read before the last acks. The final commit then misses the last batch,
        and the next owner of the partitions answers those requests again. Waiting first (no await
        between the wait and `commit()`'s own check) makes this commit one that starts after the acks.
        """
        while await self.maybe_wait_for_commit_to_finish():
            pass
        await super().commit_and_end_transactions()

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Every commit (the periodic one, a stop's, a revoke's) first finishes the work agents hold unacked
        (`GenrecFaustApp.finish_held_work`): the ingest holds its events until their coalesced history writes
        are made, and acking them here lets this commit cover them instead of the next one."""
        await self.app.finish_held()
        return await super().force_commit(topics, start_new_transaction=start_new_transaction)

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        """Every offset commit goes through the commit protocol (streams/checkpoint.py): outputs and
        changelogs flushed, every send confirmed, then Faust's commit; a failed send commits nothing."""
        faust_commit = super()._commit_offsets
        return await self.app.checkpoint.commit(lambda: faust_commit(offsets, start_new_transaction))

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        self.app.checkpoint.on_assigned(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """Commit what was acked before Faust forgets it.

        Faust's revoke drops the acked-but-uncommitted offsets of the revoked partitions first and commits
        afterwards (in its revoke callback), so every request answered since the last periodic commit is
        answered again after the rebalance, by whichever replica gets its partition (the same one, with
        eager rebalancing, as often as not). Committing here, while the generation is still valid, is the
        commit Kafka's own rebalance listener contract asks for; the callback's commit still covers the
        in-flight batch that is acked after this point.
        """
        if self.assignment():
            await self.commit_and_end_transactions()
        await super().on_partitions_revoked(revoked)

    def ack(self, message: Message) -> bool:
        """Record an ack only for a message that one of the worker's agents finished.

        Faust's stream acks a message it skips (one of an older consumer generation, or one that arrives
        while flow control is suspended) as if it had been processed; the message comes back only through
        the seek that follows a rebalance, so that ack could be committed before the copy is served. Found
        by reading faust-streaming 0.15.3 (`Stream._py_aiter`), not seen in a test: for the agents' topics
        such a message is marked done here without recording its offset.
        """
        app = self.app
        if message.topic in app.agent_acked_topics and not app.take_processed(message):
            with ack_lock:
                message.acked = True
                self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
            log.info("not committing %s[%d]@%d: skipped by the stream, it comes again after the seek",
                     message.topic, message.partition, message.offset)
            return False
        return super().ack(message)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Never count offsets of the agents' topics as acked because the read offset jumped.

        Faust treats the offsets between two fetched messages as holes (compacted topics, transaction
        markers) and counts them as acked. On a restart, `perform_seek` moves the read offset back to the
        committed offset while messages fetched before the seek are still arriving, so the next one looks
        like a jump (seen in the SIGKILL chaos test as "requests[1]@10..11" after a restart). Committed
        before those requests are served, such offsets are lost to a kill: the likely cause of the one
        unanswered request that test showed twice. The agents' topics are neither compacted nor
        transactional, so their offsets have no holes.
        """
        if tp.topic in self.app.agent_acked_topics:
            log.info("not counting %s[%d]@%d..%d as acked: a jump in read offsets, not a hole",
                     tp.topic, tp.partition, offset_from, offset_to)
            return
        await super()._add_gap(tp, offset_from, offset_to)

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit: on the agents' topics, only when the first unfinished offset is finished.

        Faust's own check is `min(acked) - committed > 1`, so with `committed` unfinished and
        `committed + 1` finished it commits past `committed` (seen in the chaos test: committed 39, the
        message at 39 lost in the worker, see `getmany`, 40 and 41 finished, Faust committed 42), and it
        has no check at all on a partition never committed. Here the floor is the committed offset, or the
        first offset fetched since the assignment on a partition never committed (`checkpoint.commit_floor`).
        """
        if tp.topic in self.app.agent_acked_topics:
            acked = self._acked[tp]
            if acked:
                floor = commit_floor(self._committed_offset[tp], self.app.checkpoint.first_fetched(tp))
                if floor is not None:
                    stale = [o for o in acked if o < floor]  # finished twice, committed meanwhile
                    if stale:
                        acked[:] = [o for o in acked if o >= floor]
                        self._acked_index[tp].difference_update(stale)
                if holds_commit(floor, acked):
                    return None
        return super()._new_offset(tp)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's fetch loop, with no message of the agents' topics dropped as already read.

        Faust drops a fetched message whose offset is below the last one it handed on (`_read_offset`),
        taking it for a copy of one already processed. After a seek that is wrong: messages of the batch
        fetched before the seek keep coming and push the read offset past the seek point, so the copies
        the seek fetches again are dropped, and any of them whose first copy never reached the agent
        (emptied from the stream buffer on resume, skipped while flow was stopped) is lost. Seen in the
        chaos test after a restart: 32..38 handed on, seek to 32, 39..41 of the old batch, then the
        refetched 32..41 all dropped; 39 (by its timing emptied from the buffer on resume) never came again.
        Here such a message goes on to the agent, which processes it again (at-least-once).
        """
        held = self.app.agent_acked_topics
        read_offset = self._read_offset
        committed = self._committed_offset
        checkpoint = self.app.checkpoint
        async for tp, message in super().getmany(timeout):
            if tp.topic in held:
                checkpoint.on_fetched(tp, message.offset)
                r = read_offset.get(tp)
                c = committed[tp]
                # Below the committed offset everything is finished: those copies may still be dropped.
                if r is not None and message.offset < r and (c is None or message.offset >= c):
                    read_offset[tp] = message.offset
            yield tp, message

    def reread_dropped(self, dropped: dict[TP, int]) -> None:
        """Seek partitions back to their first unfinished offset: messages of theirs were dropped unprocessed.

        Only backwards (`checkpoint.reread_from`): everything below the floor is finished (`_new_offset`), and
        anything between it and the dropped message may be unfinished too. A partition never committed is
        read again from the first offset fetched since its assignment (it was skipped once, silently, and
        with no guard on its commits either: the likely cause of a CI run's "history has 2 of 8 events").
        """
        try:
            assignment = self.assignment()
        except ConsumerNotStarted:
            return  # nothing fetched yet, or stopping: the next start reads from the committed offsets
        checkpoint = self.app.checkpoint
        for tp, offset in dropped.items():
            if tp not in assignment:
                continue  # not ours any more: its next owner starts at the committed offset
            committed = self._committed_offset[tp]
            seek_to = reread_from(committed, checkpoint.first_fetched(tp), offset)
            if seek_to is None:
                if committed is None and checkpoint.first_fetched(tp) is None:
                    log.warning("%s[%d]@%d dropped from the stream buffer with no known start offset",
                                tp.topic, tp.partition, offset)
                continue  # a seek already went back past it
            log.info("reading %s[%d] again from %d: offset %d was dropped from the stream buffer unprocessed",
                     tp.topic, tp.partition, seek_to, offset)
            self._thread.seek(tp, seek_to)  # what Faust's own seek() does, without an await in between
            self._read_offset[tp] = seek_to or None


class _GenrecQueue(ThrowableQueue):
    """A stream buffer that, when Faust empties it, has its dropped agent messages read again and keeps the
    records of live standby partitions.

    `FlowControlEvent.resume()` empties every stream buffer, also when flow was already running: at the
    end of a recovery that follows a changelog restore, right after the seek to the committed offsets,
    messages fetched after that seek are in the buffer and are thrown away. The changelog buffer is one of
    them: standby records fetched since the standbys resumed would be dropped while the consumer reads on
    past them, and the standby copy would miss those updates for good (later records move its offset on).
    """

    app: Any = None

    def _live_standbys(self) -> set[TP]:
        """Standby partitions whose buffered records are still wanted: only on a resume (a revoke empties
        the buffers while flow is suspended, and recovery then seeks them again) and while still assigned."""
        app = self.app
        if app is None or not self._flow_control.is_active():  # type: ignore[attr-defined]
            return set()
        recovery = getattr(app.tables, "_recovery", None)  # not created yet: no standby either
        if recovery is None:
            return set()
        try:
            return set(recovery.standby_tps) & set(app.consumer.assignment())
        except ConsumerNotStarted:
            return set()

    def clear(self) -> None:
        app = self.app
        dropped: dict[TP, int] = {}
        kept: list[Any] = []
        if app is not None:
            standbys = self._live_standbys()
            for item in self._queue:  # type: ignore[attr-defined]
                message = getattr(item, "message", None)
                if message is None:
                    continue
                if message.topic in app.agent_acked_topics:
                    tp = message.tp
                    dropped[tp] = min(dropped.get(tp, message.offset), message.offset)
                elif message.tp in standbys:
                    kept.append(item)  # in fetch order: the standby applies them as if never emptied
        super().clear()
        self._queue.extend(kept)  # type: ignore[attr-defined]
        if dropped:
            app.consumer.reread_dropped(dropped)


class _GenrecTable(faust.Table):
    """A table whose changelog sends are confirmed before any commit (streams/checkpoint.py, step 3).

    Faust only logs a changelog record the broker refused and commits the source offset anyway: a restart
    on another replica (or an empty state folder) then restores a history without that write.
    """

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        checkpoint = getattr(self.app, "checkpoint", None)
        if checkpoint is not None:
            checkpoint.track_send(fut, f"changelog {self.changelog_topic.get_topic_name()}")
        return fut


class _TableManager(TableManager):
    async def on_start(self) -> None:
        # Faust's own on_start sleeps 1 s first, so that tables an agent creates as it starts are registered
        # before the changelogs are subscribed. Every genrec table is created with its app (streams/app.py,
        # streams/trainer.py), so the second only delays every start and every restart (issue 19 item 10).
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class _Producer(faust_aiokafka.Producer):
    def _settings_extra(self) -> Any:
        # Faust 0.15.3 has no setting for an idempotent producer outside transactions (exactly_once, which
        # genrec does not use): add it here. acks stays -1 (all), which idempotence requires.
        extra = dict(super()._settings_extra())
        if getattr(self.app, "producer_idempotence", False):
            extra["enable_idempotence"] = True
        return extra


class _Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[Any] = _Consumer
    Producer: ClassVar[Any] = _Producer


class GenrecFaustApp(faust.App):
    """A Faust app whose worker consumer uses `fetch_max_wait_ms`, and whose own services
    (`first_services`) start before Faust's producer/consumer/agents and stop after them."""

    fetch_max_wait_ms: int | None = None
    # Faust's producer (the changelogs) idempotent (_Producer): on Apache Kafka (StreamSettings.producer_profile).
    producer_idempotence: bool = False
    # A listening socket for the web server, claimed before the app starts (streams/web_port.py); None: Faust
    # binds conf.web_port itself.
    web_socket: socket.socket | None = None

    def __init__(
        self, *args: Any, fetch_max_wait_ms: int | None = None, producer_idempotence: bool = False, **kwargs: Any
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.producer_idempotence = producer_idempotence
        self.first_services: list[ServiceT] = []
        # Topics whose messages count as acked only after mark_processed (see _Consumer.ack).
        self.agent_acked_topics: set[str] = set()
        # Work an agent holds unacked (the ingest's coalesced run, streams/app.py), finished and acked before every
        # offset commit, so that the commit covers it, and before Faust waits for every fetched message to be
        # acked (a stop, a revoke), which would otherwise wait for a timer that a stop has already cancelled.
        self.finish_held_work: list[Callable[[], Awaitable[None]]] = []
        kwargs.setdefault("Table", _GenrecTable)
        kwargs.setdefault("TableManager", _TableManager)
        super().__init__(*args, **kwargs)
        datadir = Path(self.conf.datadir)
        self.member_file_dir: Path | None = datadir  # streams/group_handoff.py
        # The commit protocol: every offset commit, every tracked send, the ordered acks (streams/checkpoint.py).
        self.checkpoint = Checkpoint(
            confirm_timeout_s=float(self.conf.broker_request_timeout) + 5.0,
            on_failure=self.crash,
            state_dir=datadir,
        )
        self.checkpoint.add_changelog("changelogs", lambda: self.producer.flush())
        discard_unconfirmed_state(datadir, Path(self.conf.tabledir))

    async def finish_held(self) -> None:
        """Run `finish_held_work`: before every offset commit and before Faust waits for every fetched message to
        be acked."""
        for finish in self.finish_held_work:
            await finish()

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        await self.finish_held()
        await super()._consumer_wait_empty(consumer, logger)

    def mark_processed(self, message: Message) -> None:
        """Call right before acking a message of `agent_acked_topics` that the agent has finished."""
        self.checkpoint.mark_processed(message)

    def take_processed(self, message: Message) -> bool:
        return self.checkpoint.take_processed(message)

    def FlowControlQueue(self, maxsize: int | None = None, *, clear_on_resume: bool = False) -> ThrowableQueue:  # noqa: N802
        queue = _GenrecQueue(maxsize=maxsize, flow_control=self.flow_control, clear_on_resume=clear_on_resume)
        queue.app = self
        return queue

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    def _new_web(self) -> Any:
        # Faust's built-in pages include /router and /table, which answer any table key (user
        # histories) to anyone who can reach the port, plus stats and graph pages. The worker serves
        # only its own pages (app.page: /health, /ready, /metrics).
        base = web_drivers.by_url(self.conf.web)

        class _OwnPagesOnly(base):  # type: ignore[valid-type, misc]
            default_blueprints: ClassVar[list[Any]] = []
            production_blueprints: ClassVar[list[Any]] = []
            debug_blueprints: ClassVar[list[Any]] = []
            optional_blueprints: ClassVar[list[Any]] = []

            def _new_transport_tcp(self) -> Any:
                # The socket `genrec worker` claimed before Faust started (streams/web_port.py): serve on it as
                # bound, so that a port picked with --web-port 0 is the one logged.
                sock = self.app.web_socket
                if sock is None:
                    return super()._new_transport_tcp()
                from aiohttp.web import SockSite

                return SockSite(self._runner, sock, ssl_context=self.app.conf.web_ssl_context)

        return _OwnPagesOnly(self)

    def on_init_dependencies(self) -> Any:
        # mode stops children in reverse order: these outlive the agents that use them.
        deps = list(super().on_init_dependencies())
        # The web server before everything else: while the model loads and the tables recover, /health
        # answers (a liveness probe must not kill a slow start) and /ready says 503 instead of refusing
        # the connection, so an operator can tell "starting" from "dead".
        web = [d for d in deps if d is self.web] if self.conf.web_enabled else []
        return [*web, *self.first_services, *(d for d in deps if not any(d is w for w in web))]


@contextmanager
def event_context(event: EventT) -> Iterator[None]:
    """Faust's current event is `event` inside the block. A table write takes its RocksDB partition and its
    changelog partition from the current event (Faust's Collection.partition_for_key and the RocksDB store's
    `_set`), so a write made after the loop moved on (TableStore.flush) names the event it belongs to."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def current_event() -> EventT | None:
    """The event Faust is processing in this context (None outside an agent)."""
    return faust_streams.current_event()
