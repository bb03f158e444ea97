"""The worker consumer records acks only for messages an agent finished (streams/transport.py)."""

from __future__ import annotations

import asyncio

from faust.types import TP, Message
from genrec.streams.checkpoint import UNCONFIRMED_MARKER
from genrec.streams.transport import GenrecFaustApp


def _message(topic: str, offset: int) -> Message:
    return Message(topic, 0, offset, 0.0, 0, {}, b"k", b"v", None)


def _consumer(held: set[str]) -> tuple[GenrecFaustApp, object]:
    app = GenrecFaustApp("genrec-transport-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    app.agent_acked_topics.update(held)
    for topic in ("requests", "other"):
        app.topics._acking_topics.add(topic)
    return app, app.consumer


def test_an_ack_without_the_agent_finishing_records_no_offset() -> None:
    app, consumer = _consumer({"requests"})
    skipped = _message("requests", 5)  # what Faust's stream acks when it skips a message
    consumer._unacked_messages.add(skipped)
    assert consumer.ack(skipped) is False
    assert skipped.acked and skipped not in consumer._unacked_messages  # wait_empty() does not wait for it
    assert not consumer._acked.get(TP("requests", 0))

    done = _message("requests", 5)  # its copy after the seek, which the agent serves
    app.mark_processed(done)
    assert consumer.ack(done) is True
    assert consumer._acked[TP("requests", 0)] == [5]
    assert not app.checkpoint._processed


def test_other_topics_and_apps_keep_faust_acks() -> None:
    _, consumer = _consumer({"requests"})
    assert consumer.ack(_message("other", 3)) is True
    _, plain = _consumer(set())  # e.g. the trainer's app
    assert plain.ack(_message("requests", 7)) is True
    assert plain._acked[TP("requests", 0)] == [7]


async def test_a_jump_in_read_offsets_is_not_counted_as_acked_on_the_agents_topics() -> None:
    _, consumer = _consumer({"requests"})
    await consumer._add_gap(TP("requests", 1), 10, 11)  # after a seek back: messages to serve, not holes
    assert not consumer._gap.get(TP("requests", 1))
    await consumer._add_gap(TP("other", 1), 10, 11)  # elsewhere Faust's hole handling stays
    assert consumer._gap[TP("other", 1)]
    consumer._acked[TP("other", 1)] = [9, 12]
    assert consumer._new_offset(TP("other", 1)) == 13  # 10 and 11 counted as acked by the gap


def test_commits_start_at_the_committed_offset_on_the_agents_topics() -> None:
    _, consumer = _consumer({"requests"})
    tp, other = TP("requests", 0), TP("other", 0)
    for t in (tp, other):
        consumer._committed_offset[t] = 39
        consumer._acked[t] = [40, 41]  # 39 never finished
        consumer._acked_index[t] = {40, 41}
    assert consumer._new_offset(tp) is None
    assert consumer._new_offset(other) == 42  # Faust's own rule, which passes the unfinished 39
    consumer._acked[tp].append(39)
    assert consumer._new_offset(tp) == 42


def test_finished_offsets_below_the_committed_one_do_not_block_commits() -> None:
    _, consumer = _consumer({"requests"})
    tp = TP("requests", 0)
    consumer._committed_offset[tp] = 10
    consumer._acked[tp] = [8, 9, 10, 11]  # 8 and 9 finished again after a seek back
    consumer._acked_index[tp] = {8, 9, 10, 11}
    assert consumer._new_offset(tp) == 12
    assert not consumer._acked_index[tp]


async def test_a_message_fetched_again_after_a_seek_goes_on_to_the_agent(monkeypatch) -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    _, consumer = _consumer({"requests"})
    tp, other = TP("requests", 0), TP("other", 0)
    fetched = [(tp, _message("requests", 39)), (other, _message("other", 39)), (tp, _message("requests", 5))]

    async def batch(self, timeout: float):  # what Faust's own getmany yields after the seek
        for item in fetched:
            yield item

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", batch)
    consumer._committed_offset[tp] = 32
    for t in (tp, other):
        consumer._read_offset[t] = 41  # pushed there by the batch fetched before the seek to 32
    seen = []
    async for t, m in consumer.getmany(1.0):
        seen.append((t, m.offset, consumer._read_offset[t]))
    # Faust's drain loop hands a message on when its offset >= the read offset: 39 now passes, 5 (below
    # the committed offset, finished) and the other topic's 39 keep Faust's rule and are dropped.
    assert seen == [(tp, 39, 39), (other, 39, 41), (tp, 5, 39)]


def test_messages_emptied_from_a_stream_buffer_are_read_again(monkeypatch) -> None:
    app, consumer = _consumer({"requests"})
    tp, gone, other = TP("requests", 0), TP("requests", 2), TP("other", 0)
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    for topic, partition, offset in (("requests", 0, 40), ("requests", 0, 39), ("other", 0, 7), ("requests", 2, 3)):
        message = Message(topic, partition, offset, 0.0, 0, {}, b"k", b"v", None)
        queue.put_nowait(type("Ev", (), {"message": message})())
    consumer._committed_offset[tp] = 32
    consumer._committed_offset[gone] = 0
    seeks: list[tuple[TP, int]] = []
    monkeypatch.setattr(consumer._thread, "seek", lambda t, o: seeks.append((t, o)))
    monkeypatch.setattr(consumer, "assignment", lambda: {tp, other})  # requests[2] was revoked
    consumer._read_offset[tp] = 41
    app.flow_control.resume()  # Faust empties every managed buffer on resume, even when flow was running
    assert queue.empty()
    assert seeks == [(tp, 32)]  # back to the committed offset: all below it is finished
    assert consumer._read_offset[tp] == 32


def test_records_of_live_standby_partitions_survive_the_resume_that_ends_a_recovery(monkeypatch) -> None:
    """Faust's changelog buffer is emptied on every resume; a standby's records fetched since the standbys
    resumed would be lost to it for good (the consumer reads on past them). They are kept, in order."""
    app, consumer = _consumer(set())
    standby, active, revoked = TP("t-changelog", 1), TP("t-changelog", 0), TP("t-changelog", 2)
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)  # what Faust's changelog buffer is

    def fill() -> None:
        for tp, offset in ((standby, 7), (active, 3), (standby, 8), (revoked, 1), (standby, 9)):
            message = Message(tp.topic, tp.partition, offset, 0.0, 0, {}, b"k", b"v", None)
            queue.put_nowait(type("Ev", (), {"message": message})())

    app.tables.recovery.standby_tps.update({standby, revoked})
    monkeypatch.setattr(consumer, "assignment", lambda: {standby, active})  # t-changelog[2] went elsewhere
    fill()
    app.flow_control.resume()  # the resume at the end of a recovery: flow runs on
    kept = [(e.message.tp, e.message.offset) for e in queue._queue]
    assert kept == [(standby, 7), (standby, 8), (standby, 9)]
    # A revoke empties the buffers with flow suspended; the recovery that follows seeks every standby again.
    app.flow_control.suspend()
    fill()
    app.flow_control.clear()
    assert queue.empty()


def test_a_never_committed_partition_commits_only_from_its_first_fetched_offset() -> None:
    """Faust has no guard at all while nothing is committed: with the first fetched message (3) still in the
    batcher and 4, 5 finished it would commit 6, and a kill would lose 3."""
    app, consumer = _consumer({"requests"})
    tp = TP("requests", 0)
    app.checkpoint.on_fetched(tp, 3)
    app.checkpoint.on_fetched(tp, 4)
    consumer._acked[tp] = [4, 5]
    consumer._acked_index[tp] = {4, 5}
    assert consumer._new_offset(tp) is None
    consumer._acked[tp].insert(0, 3)
    consumer._acked_index[tp].add(3)
    assert consumer._new_offset(tp) == 6


def test_a_never_committed_partition_is_read_again_after_its_buffer_was_emptied(monkeypatch) -> None:
    app, consumer = _consumer({"requests"})
    tp = TP("requests", 1)
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    message = Message("requests", 1, 9, 0.0, 0, {}, b"k", b"v", None)
    queue.put_nowait(type("Ev", (), {"message": message})())
    app.checkpoint.on_fetched(tp, 5)  # fetched 5..9 since the assignment, nothing committed yet
    seeks: list[tuple[TP, int]] = []
    monkeypatch.setattr(consumer._thread, "seek", lambda t, o: seeks.append((t, o)))
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    app.flow_control.resume()
    assert seeks == [(tp, 5)]  # was skipped silently (`committed is None → continue`)
    assert consumer._read_offset[tp] == 5


def test_a_new_assignment_forgets_the_first_fetched_offsets() -> None:
    app, _ = _consumer({"requests"})
    tp = TP("requests", 0)
    app.checkpoint.on_fetched(tp, 7)
    app.checkpoint.on_fetched(tp, 2)  # a lower offset fetched after a seek back: the floor follows it down
    assert app.checkpoint.first_fetched(tp) == 2
    app.checkpoint.on_assigned({tp})
    assert app.checkpoint.first_fetched(tp) is None


async def test_no_offset_is_committed_over_a_refused_changelog_send(monkeypatch, tmp_path) -> None:
    app, consumer = _consumer({"requests"})
    app.checkpoint.state_dir = tmp_path  # where the failure marks the local state as unconfirmed
    tp = TP("requests", 0)
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    app.checkpoint.on_failure = crash
    committed: list[dict] = []

    async def faust_commit(offsets) -> bool:  # the broker round trip of Faust's commit
        committed.append(dict(offsets))
        return True

    monkeypatch.setattr(consumer, "_commit", faust_commit)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    assert await consumer._commit_offsets({tp: 4}) is True
    assert committed == [{tp: 4}]

    # A table write whose changelog record the broker refused (Faust only logs it).
    table = app.Table("h", default=None, key_type=bytes, value_type=bytes, partitions=1)
    fut = table.send_changelog(0, b"u", b"v")
    assert fut in app.checkpoint._pending  # every changelog send is tracked
    fut.set_exception(TimeoutError("not confirmed"))
    await asyncio.sleep(0.01)
    assert await consumer._commit_offsets({tp: 6}) is False
    assert committed == [{tp: 4}] and len(crashed) == 1
    assert (tmp_path / UNCONFIRMED_MARKER).exists()


def test_table_manager_start_is_fausts_without_the_one_second_sleep() -> None:
    """streams/transport.py's _TableManager.on_start re-states Faust's without its fixed 1 s sleep (a second of
    every restart). If a Faust upgrade adds a step there, this says so before a restart silently skips it."""
    import inspect

    from faust.tables import TableManager
    from genrec.streams.transport import _TableManager

    def body(fn: object) -> list[str]:
        lines = [ln.strip() for ln in inspect.getsource(fn).splitlines()[1:]]  # type: ignore[arg-type]
        return [ln for ln in lines if ln and not ln.startswith(("#", '"""'))]

    theirs = body(TableManager.on_start)
    assert theirs == [
        "await self.sleep(1.0)",
        "if not self.should_stop:",
        "await self._update_channels()",
        "await self.recovery.start()",
    ], theirs
    assert body(_TableManager.on_start) == theirs[1:]
