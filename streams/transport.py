"""Faust's aiokafka transport with the worker consumer's `fetch_max_wait_ms` configurable, and commits
that never pass a message the worker's agents have not finished.

Faust 0.15.3 passes `fetch_max_wait_ms=1500` to the worker's AIOKafkaConsumer, hard-coded. A broker
that holds a fetch until that wait runs out when data is sparse (Tansu does, design.md §6b) then adds
up to 1.5 s of latency to every request at low rates. Apache Kafka answers as soon as data is there,
so a low value costs nothing there but a few more empty fetches.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message, ServiceT
from faust.types.tuples import ack_lock
from faust.web import drivers as web_drivers
from mode.utils.futures import notify

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


class _Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[Any] = _Consumer


class GenrecFaustApp(faust.App):
    """A Faust app whose worker consumer uses `fetch_max_wait_ms`, and whose own services
    (`first_services`) start before Faust's producer/consumer/agents and stop after them."""

    fetch_max_wait_ms: int | None = None

    def __init__(self, *args: Any, fetch_max_wait_ms: int | None = None, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.first_services: list[ServiceT] = []
        # Topics whose messages count as acked only after mark_processed (see _Consumer.ack).
        self.agent_acked_topics: set[str] = set()
        self._processed: set[int] = set()  # id() of messages an agent finished, until their ack lands
        super().__init__(*args, **kwargs)

    def mark_processed(self, message: Message) -> None:
        """Call right before acking a message of `agent_acked_topics` that the agent has finished."""
        self._processed.add(id(message))

    def take_processed(self, message: Message) -> bool:
        try:
            self._processed.remove(id(message))
        except KeyError:
            return False
        return True

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

        return _OwnPagesOnly(self)

    def on_init_dependencies(self) -> Any:
        # mode stops children in reverse order: these outlive the agents that use them.
        deps = list(super().on_init_dependencies())
        # The web server before everything else: while the model loads and the tables recover, /health
        # answers (a liveness probe must not kill a slow start) and /ready says 503 instead of refusing
        # the connection, so an operator can tell "starting" from "dead".
        web = [d for d in deps if d is self.web] if self.conf.web_enabled else []
        return [*web, *self.first_services, *(d for d in deps if not any(d is w for w in web))]
