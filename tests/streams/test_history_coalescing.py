"""TableStore: history writes held per user and written once per run, each in the context of its last event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genrec.streams.app import TableStore
from genrec.streams.transport import current_event, event_context


@dataclass(eq=False)
class _Message:
    partition: int


@dataclass(eq=False)
class _Event:
    message: _Message


class _Table(dict):  # type: ignore[type-arg]
    """Records each write with the partition Faust would give it (the current event's)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[bytes, bytes, int]] = []

    def __setitem__(self, key: Any, value: Any) -> None:
        event = current_event()
        assert event is not None, "Faust refuses a table write outside an event"
        self.writes.append((key, value, event.message.partition))
        super().__setitem__(key, value)


def _event(partition: int) -> _Event:
    return _Event(_Message(partition))


def test_writes_are_held_readable_and_written_once_per_key_in_their_last_events_context() -> None:
    table, counted = _Table(), []
    store = TableStore(table, on_write=lambda: counted.append(1))
    e1, e2, e3 = _event(0), _event(2), _event(0)
    with event_context(e1):
        store.set(b"u1", b"a")
    with event_context(e2):
        store.set(b"u2", b"x")
    with event_context(e3):
        assert store.get(b"u1") == b"a"  # the next event of the user reads what the last one wrote
        store.set(b"u1", b"ab")
    assert table.writes == [] and store.held == 2
    assert store.get(b"u1") == b"ab" and store.get(b"u2") == b"x"  # the infer agent reads the held values too

    assert current_event() is None
    assert store.flush() == 2
    # Each key once, with its latest value, in its last event's partition, in the order of those events.
    assert table.writes == [(b"u2", b"x", 2), (b"u1", b"ab", 0)]
    assert len(counted) == 2 and store.held == 0
    assert current_event() is None  # the flush left Faust's context as it found it
    assert store.get(b"u1") == b"ab"  # now from the table


def test_dropped_writes_are_never_written_and_reads_fall_back_to_the_table() -> None:
    table = _Table()
    with event_context(_event(1)):
        table[b"u1"] = b"old"
    table.writes.clear()
    store = TableStore(table)
    with event_context(_event(1)):
        store.set(b"u1", b"new")
    store.drop()  # the run's events were not acked: they are read again, and written then
    assert store.get(b"u1") == b"old" and store.flush() == 0 and table.writes == []

