"""The worker consumer records acks only for messages an agent finished (streams/transport.py)."""

from __future__ import annotations

from faust.types import TP, Message

from streams.transport import GenrecFaustApp


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
    assert not app._processed


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
