"""Faust's aiokafka transport with the worker consumer's `fetch_max_wait_ms` configurable.

Faust 0.15.3 passes `fetch_max_wait_ms=1500` to the worker's AIOKafkaConsumer, hard-coded. A broker
that holds a fetch until that wait runs out when data is sparse (Tansu does, design.md §6b) then adds
up to 1.5 s of latency to every request at low rates. Apache Kafka answers as soon as data is there,
so a low value costs nothing there but a few more empty fetches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import ServiceT
from faust.web import drivers as web_drivers

__all__ = ["GenrecFaustApp"]


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


class _Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[Any] = _Consumer


class GenrecFaustApp(faust.App):
    """A Faust app whose worker consumer uses `fetch_max_wait_ms`, and whose own services
    (`first_services`) start before Faust's producer/consumer/agents and stop after them."""

    fetch_max_wait_ms: int | None = None

    def __init__(self, *args: Any, fetch_max_wait_ms: int | None = None, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.first_services: list[ServiceT] = []
        super().__init__(*args, **kwargs)

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
