"""History codec: round trip, bounds, idempotency, ordering, and that it is compact binary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from genrec.streams import history_codec as hc
from hypothesis import given, settings
from hypothesis import strategies as st

item_ids = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
events = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=20),  # event id
        item_ids,
        st.integers(0, 4),  # action
        st.integers(946_684_800_000, 4_102_444_800_000),  # ts
    ),
    max_size=60,
)


def _replay(codec: hc.HistoryCodec, evs: list[tuple[str, str, int, int]]) -> tuple[bytes | None, list]:
    """Append through the codec and compute the expected kept events with a plain-Python model."""
    buf: bytes | None = None
    kept: list[tuple[int, str, int]] = []  # (ts, item, action), time-ordered, stable for equal ts
    seen: list[str] = []
    for eid, item, action, ts in evs:
        new = codec.append(buf, event_id=eid, item_id=item, action=action, ts_ms=ts)
        if eid in seen[-codec.max_ids :] if codec.max_ids else False:
            assert new is None
            continue
        assert new is not None
        buf = new
        seen.append(eid)
        pos = len(kept)
        while pos > 0 and kept[pos - 1][0] > ts:
            pos -= 1
        kept.insert(pos, (ts, item, action))
        kept = kept[-codec.max_events :]
    return buf, kept


@given(events, st.integers(1, 30), st.integers(0, 20))
@settings(max_examples=300, deadline=None)
def test_round_trip_matches_reference_model(evs, max_events, max_ids):
    codec = hc.HistoryCodec(max_events=max_events, max_ids=max_ids)
    buf, kept = _replay(codec, evs)
    h = hc.decode(buf)
    assert len(h) == len(kept) <= max_events
    assert h.item_ids == [k[1] for k in kept]
    assert h.ts_ms.tolist() == [k[0] for k in kept]
    assert h.actions.tolist() == [k[2] for k in kept]
    assert len(h.event_hashes) <= max_ids
    assert np.all(np.diff(h.ts_ms) >= 0)
    if buf is not None:
        assert hc.encode(h) == buf  # canonical: decode∘encode is the identity on stored values


@given(st.lists(st.tuples(item_ids, st.integers(-128, 127), st.integers(-(2**62), 2**62)), max_size=50))
@settings(max_examples=200, deadline=None)
def test_encode_decode_round_trip(rows):
    rows.sort(key=lambda r: r[2])
    h = hc.RawHistory(
        item_ids=[r[0] for r in rows],
        actions=np.array([r[1] for r in rows], np.int8),
        ts_ms=np.array([r[2] for r in rows], np.int64),
        event_hashes=[hc.event_hash(str(i)) for i in range(len(rows))],
    )
    back = hc.decode(hc.encode(h))
    assert back.item_ids == h.item_ids
    assert back.actions.tolist() == h.actions.tolist()
    assert back.ts_ms.tolist() == h.ts_ms.tolist()
    assert back.event_hashes == h.event_hashes


def test_bounded_length_and_size():
    codec = hc.HistoryCodec(max_events=200, max_ids=64)
    buf = None
    for i in range(1000):
        buf = codec.append(buf, event_id=f"e{i}", item_id=f"item-{i % 1682}", action=1, ts_ms=1_700_000_000_000 + i)
    h = hc.decode(buf)
    assert len(h) == 200
    assert h.item_ids[0] == "item-800" and h.item_ids[-1] == f"item-{999 % 1682}"
    assert len(h.event_hashes) == 64
    # header + 64 ids + 200 × (ts 8 + action 1 + len 2 + ~8 id bytes): far below a JSON encoding.
    assert len(buf) < 6 + 64 * 8 + 200 * 20
    as_json = json.dumps({"items": h.item_ids, "actions": h.actions.tolist(), "ts": h.ts_ms.tolist()})
    assert len(buf) < len(as_json)
    with pytest.raises(UnicodeDecodeError):
        buf.decode("utf-8")  # not a text format


def test_duplicate_event_is_not_appended_twice():
    codec = hc.HistoryCodec(max_events=10, max_ids=4)
    b1 = codec.append(None, event_id="a", item_id="x", action=1, ts_ms=1)
    assert codec.seen(b1, "a") and not codec.seen(b1, "b")
    assert codec.append(b1, event_id="a", item_id="x", action=1, ts_ms=1) is None
    b2 = codec.append(b1, event_id="b", item_id="y", action=2, ts_ms=2)
    assert hc.decode(b2).item_ids == ["x", "y"]


def test_query_event_records_only_its_id():
    codec = hc.HistoryCodec(max_events=10, max_ids=4)
    b = codec.append(None, event_id="q1", item_id=None, action=0, ts_ms=5)
    assert len(hc.decode(b)) == 0 and codec.seen(b, "q1")
    assert codec.append(b, event_id="q1", item_id=None, action=0, ts_ms=5) is None


def test_dedup_window_is_bounded():
    codec = hc.HistoryCodec(max_events=100, max_ids=3)
    b = None
    for e in "abcd":
        b = codec.append(b, event_id=e, item_id=e, action=1, ts_ms=1)
    assert not codec.seen(b, "a")  # fell out of the window
    assert all(codec.seen(b, e) for e in "bcd")


def test_late_event_is_inserted_in_time_order_and_oldest_dropped():
    codec = hc.HistoryCodec(max_events=3, max_ids=0)
    b = None
    for i, ts in enumerate([10, 20, 30]):
        b = codec.append(b, event_id=str(i), item_id=f"i{ts}", action=1, ts_ms=ts)
    b = codec.append(b, event_id="late", item_id="i15", action=2, ts_ms=15)
    assert hc.decode(b).item_ids == ["i15", "i20", "i30"]
    b = codec.append(b, event_id="older", item_id="i1", action=2, ts_ms=1)  # older than all kept: not kept
    assert hc.decode(b).item_ids == ["i15", "i20", "i30"]


def test_multibyte_and_long_item_ids():
    codec = hc.HistoryCodec(max_events=5)
    long_id = "é" * 300  # 600 bytes: needs more than a one-byte length
    b = codec.append(None, event_id="1", item_id=long_id, action=1, ts_ms=1)
    b = codec.append(b, event_id="2", item_id="電影", action=1, ts_ms=2)
    assert hc.decode(b).item_ids == [long_id, "電影"]


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00", b"\x47\x01\x05\x00\x00\x00", b"\x99\x01\x00\x00\x00\x00", b'{"items": []}'],
)
def test_corrupt_values_are_rejected(bad):
    if bad == b"":
        assert len(hc.decode(bad)) == 0  # empty value = no history
        return
    with pytest.raises(hc.CorruptHistoryError):
        hc.decode(bad)
