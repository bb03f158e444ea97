"""The commit protocol of a worker, as one object: what must be true before a source offset is committed.

A committed offset says "everything below it is done": its events are in the history table and in the
table's changelog, its requests' results (or dead letters) are on their topics. After a crash the worker
(or the replica that takes its partitions) starts at the committed offset and rebuilds its state from the
changelog, so an offset committed past a record whose changelog write or result was lost loses that record
for good. `Checkpoint.commit` therefore runs these steps, in this order, and a failure at any step fails
the checkpoint (modelled on Quix Streams' `Checkpoint.commit`):

1. **Flush the outputs**: the results/forwards/dead-letters producer (`streams.app.KafkaOutput`). Copies of
   results to a request's `reply_to` (the apps' client) are in no step: they go through a producer of their own
   (`streams/replies.py`), so a reply to a topic that has vanished never holds up a commit.
2. **Flush the changelogs**: Faust's producer (its send buffer, then the Kafka client).
3. **Confirm every send**: each send registered with `track_send` before this commit started has been
   confirmed by the broker. One that failed, or that is still unconfirmed after `confirm_timeout_s`, fails
   the task (Kafka Streams' default `ProductionExceptionHandler`: FAIL): nothing is committed, now or later
   in this process (the final commit of the shutdown included), and the worker exits non-zero so that its
   supervisor restarts it from the last commit.
4. **Commit the offsets**: the offsets Faust computed, under two rules that hold back a commit rather than
   pass a record that was never finished:
   - a partition's messages are acked in arrival order (`InOrderAcks`);
   - a commit starts at the first unfinished offset: the committed one, or, on a partition never committed,
     the first offset this consumer fetched since its assignment (`commit_floor`).

Beside the steps it owns the rest of what decides an offset (the Faust consumer and stream buffer in
`streams/transport.py` only call in here): which messages an agent finished (`mark_processed`), where a
partition whose buffered messages were dropped must be read again (`reread_from`), and the local state
that a failed changelog send makes untrustworthy (`UNCONFIRMED_MARKER`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[Any]]
Flush = Callable[[], Awaitable[Any]]

# Written into the state folder when a changelog send failed: the local RocksDB holds a write the changelog
# does not, and a redelivered event would then look like a duplicate there and never reach the changelog.
UNCONFIRMED_MARKER = "genrec-unconfirmed-changelog.json"


class SendFailedError(RuntimeError):
    """A result, forward, dead letter or changelog record the broker did not confirm: the task fails."""


# ------------------------------------------------------------------------------------------ pure rules


def commit_floor(committed: int | None, first_fetched: int | None) -> int | None:
    """The first offset of a partition that may still be unfinished: the committed offset, or, on a partition
    never committed, the first offset fetched since the assignment (None: nothing fetched yet)."""
    return committed if committed is not None else first_fetched


def holds_commit(floor: int | None, acked: Iterable[int]) -> bool:
    """True when a commit must wait: the first unfinished offset is not among the acked ones.

    With no floor (a never-committed partition of which nothing was fetched) nothing acked can be trusted.
    """
    acked = list(acked)
    if not acked:
        return False
    return floor is None or min(acked) != floor


def reread_from(committed: int | None, first_fetched: int | None, dropped: int) -> int | None:
    """Where to seek a partition whose message at `dropped` was thrown away unprocessed; None: no seek needed.

    Back to the first offset that may be unfinished (everything from there to the dropped message may be
    unfinished too), never forward: a floor above the dropped offset means a seek already went back past it.
    """
    floor = commit_floor(committed, first_fetched)
    if floor is None or floor > dropped:
        return None
    return floor


# ----------------------------------------------------------------------------------------- ordered acks


class _Slot:
    __slots__ = ("ack", "done", "processed", "skip")

    def __init__(self, ack: Ack, skip: Ack | None) -> None:
        self.ack = ack
        self.skip = skip
        self.done = False
        self.processed = True


class InOrderAcks:
    """`track(tp, ack)` when a message arrives; call the returned `finish` when its work is done.

    Why: faust-streaming 0.15.3 commits past an offset that was never acked. Its `Consumer._new_offset` only
    holds back when the lowest acked offset is more than one above the committed one (and not at all while the
    committed offset is 0 or unknown), so with offset C waiting in the micro-batcher and C+1 dead-lettered and
    acked at once, it commits C+2; a crash then loses request C.

    The underlying acks run in tracking order within each partition: a message finished early waits for
    every earlier message of its partition. Different partitions never wait for each other.
    `finish(processed=False)` ends a slot whose work failed (a send the broker refused): its `skip` runs in
    its turn instead of its ack, so the slots behind it are not stuck forever, and no offset is recorded for
    it, so no commit passes it.
    """

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[_Slot]] = {}
        self._releasing: set[Hashable] = set()

    def track(self, tp: Hashable, ack: Ack, skip: Ack | None = None) -> Callable[..., Awaitable[None]]:
        slot = _Slot(ack, skip)
        self._queues.setdefault(tp, deque()).append(slot)

        async def finish(processed: bool = True) -> None:
            slot.processed = processed
            slot.done = True
            await self._release(tp)

        return finish

    def waiting(self, tp: Hashable | None = None) -> int:
        """Messages tracked and not yet acked (done or not), for one partition or all."""
        if tp is not None:
            return len(self._queues.get(tp, ()))
        return sum(len(q) for q in self._queues.values())

    async def _release(self, tp: Hashable) -> None:
        # One releaser per partition: a finish() that lands while another one awaits an ack only marks its
        # slot, and the running loop acks it in turn (two loops could interleave their awaits out of order).
        if tp in self._releasing:
            return
        self._releasing.add(tp)
        try:
            q = self._queues.get(tp)
            while q and q[0].done:
                slot = q.popleft()
                if slot.processed:
                    await slot.ack()
                elif slot.skip is not None:
                    await slot.skip()
            if q is not None and not q:
                del self._queues[tp]
        finally:
            self._releasing.discard(tp)


# ------------------------------------------------------------------------------------------- checkpoint


class Checkpoint:
    """The commit protocol of one worker process (see the module docstring for the steps).

    `on_failure` is called once, with the first failed send: the app crashes (the worker exits non-zero and
    its supervisor restarts it). `state_dir`, when given, receives `UNCONFIRMED_MARKER` when a changelog send
    failed, so that the restart rebuilds the tables from the changelog (`discard_unconfirmed_state`).
    """

    def __init__(
        self,
        *,
        confirm_timeout_s: float = 60.0,
        on_failure: Callable[[BaseException], Awaitable[Any]] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.confirm_timeout_s = confirm_timeout_s
        self.on_failure = on_failure
        self.state_dir = state_dir
        self.acks = InOrderAcks()
        self.failed: BaseException | None = None
        self._outputs: list[tuple[str, Flush]] = []
        self._changelogs: list[tuple[str, Flush]] = []
        self._pending: dict[asyncio.Future[Any], str] = {}
        self._processed: set[int] = set()  # id() of messages an agent finished, until their ack lands
        self._first_fetched: dict[Hashable, int] = {}
        self._failure_task: asyncio.Task[Any] | None = None
        self.commits = 0

    # -------------------------------------------------------------- what the steps act on

    def add_output(self, name: str, flush: Flush) -> None:
        """A producer of results, forwards or dead letters: flushed in step 1."""
        self._outputs.append((name, flush))

    def add_changelog(self, name: str, flush: Flush) -> None:
        """The producer of the tables' changelogs: flushed in step 2."""
        self._changelogs.append((name, flush))

    def track_send(self, fut: asyncio.Future[Any], what: str) -> None:
        """A send whose confirmation a later commit must see (step 3). A failure fails the task at once."""
        if fut.done():
            self._settled(fut, what)
            return
        self._pending[fut] = what
        fut.add_done_callback(lambda f: self._settled(f, self._pending.pop(f, what)))

    def _settled(self, fut: asyncio.Future[Any], what: str) -> None:
        if fut.cancelled():
            self.fail(SendFailedError(f"{what} send cancelled"))
            return
        exc = fut.exception()
        if exc is not None:
            self.fail(SendFailedError(f"{what} send failed: {exc!r}"), changelog=what.startswith("changelog"))

    def fail(self, exc: BaseException, *, changelog: bool = False) -> None:
        """Fail the task: no commit from now on in this process; `on_failure` runs once, soon."""
        if changelog:
            self._mark_unconfirmed(str(exc))
        if self.failed is not None:
            return
        self.failed = exc
        log.error("checkpoint failed, nothing more is committed; the worker stops: %s", exc)
        if self.on_failure is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._failure_task = loop.create_task(self.on_failure(exc))

    # -------------------------------------------------------------- the protocol

    async def commit(self, commit_offsets: Callable[[], Awaitable[bool]]) -> bool:
        """Run the steps in order; `commit_offsets` is step 4 (Faust's offset commit). False: nothing committed."""
        if self.failed is not None:
            log.warning("not committing: an earlier send failed (%s)", self.failed)
            return False
        sends = list(self._pending)  # the sends of every message acked so far (acks follow their sends)
        try:
            # Steps 1 and 2: outputs first, then the changelogs.
            for name, flush in [*self._outputs, *self._changelogs]:
                try:
                    await flush()
                except Exception as exc:
                    raise SendFailedError(f"flushing {name} failed: {exc!r}") from exc
            # Step 3: every send is confirmed; a failed one has already failed the checkpoint.
            await self._confirm(sends)
        except SendFailedError as exc:
            self.fail(exc)
        if self.failed is not None:
            return False
        # Step 4.
        committed = await commit_offsets()
        if committed:
            self.commits += 1
        return committed

    async def _confirm(self, sends: list[asyncio.Future[Any]]) -> None:
        waiting = [f for f in sends if not f.done()]
        if waiting:
            _, still = await asyncio.wait(waiting, timeout=self.confirm_timeout_s)
            if still:
                raise SendFailedError(f"{len(still)} sends unconfirmed after {self.confirm_timeout_s:.0f} s")
        if self.failed is not None:
            raise SendFailedError(str(self.failed))

    # -------------------------------------------------------------- which offsets may be committed

    def mark_processed(self, message: Any) -> None:
        """An agent finished this message (call right before acking it): only then does its ack count."""
        self._processed.add(id(message))

    def take_processed(self, message: Any) -> bool:
        try:
            self._processed.remove(id(message))
        except KeyError:
            return False
        return True

    def on_assigned(self, tps: Iterable[Hashable]) -> None:
        """A new assignment: the consumer starts these partitions at the committed offset or the reset one."""
        for tp in tps:
            self._first_fetched.pop(tp, None)

    def on_fetched(self, tp: Hashable, offset: int) -> None:
        """The lowest offset fetched since the assignment: where a never-committed partition's consumption
        began. The lowest, not the first: a record of a fetch made before the assignment's seek may arrive
        first, and every fetched record reaches the agent (or is fetched again), so the lowest is acked too."""
        known = self._first_fetched.get(tp)
        if known is None or offset < known:
            self._first_fetched[tp] = offset

    def first_fetched(self, tp: Hashable) -> int | None:
        return self._first_fetched.get(tp)

    # -------------------------------------------------------------- local state after a failed changelog send

    def _mark_unconfirmed(self, reason: str) -> None:
        if self.state_dir is None:
            return
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / UNCONFIRMED_MARKER).write_text(json.dumps({"reason": reason[:2000]}))
        except OSError:
            log.exception("could not mark the local state as unconfirmed")


def discard_unconfirmed_state(state_dir: Path, table_dir: Path) -> bool:
    """On start: if the last run failed a changelog send, drop the local tables (they hold writes the
    changelog lacks) so that recovery rebuilds them from the changelog. True when something was dropped."""
    marker = state_dir / UNCONFIRMED_MARKER
    if not marker.exists():
        return False
    log.warning("the last run could not confirm a changelog send: rebuilding %s from the changelog", table_dir)
    shutil.rmtree(table_dir, ignore_errors=True)
    marker.unlink(missing_ok=True)
    return True
