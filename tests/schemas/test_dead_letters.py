"""Dead letters keep the record whole, within bounds, and count redrives (issue 19 item 9)."""

from __future__ import annotations

import base64
import json

import pytest
from genrec.schemas import (
    MAX_DEAD_LETTER_BYTES,
    MAX_MESSAGE_BYTES,
    REDRIVE_HEADER,
    DeadLetter,
    dead_letter,
    decode,
    encode,
    redrive_count,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def _dl(**over: object) -> DeadLetter:
    args: dict[str, object] = {
        "source_topic": "genrec.events", "partition": 3, "offset": 41, "key": b"u1", "value": b'{"ts": "x"} ',
        "reason": "wrong_type", "error": "ts: not an int", "headers": [("trace", b"\x00\xff")],
        "timestamp_ms": 1_700_000_000_123,
    }
    args.update(over)
    return dead_letter(**args)  # type: ignore[arg-type]


def test_the_record_comes_back_byte_for_byte_after_a_round_trip_through_the_topic() -> None:
    d = decode(DeadLetter, encode(_dl()))
    assert d.record() == (b"u1", b'{"ts": "x"} ', [("trace", b"\x00\xff")])
    assert (d.timestamp_ms, d.reason, d.reason_name, d.redrives, d.truncated) == (
        1_700_000_000_123, "wrong_type", "wrong_type", 0, False)
    assert d.error == "wrong_type: ts: not an int" and d.raw == '{"ts": "x"} '  # the human-readable parts as before


@pytest.mark.parametrize(
    "over",
    [{"value": None}, {"value": b"x" * (MAX_MESSAGE_BYTES + 1)}, {"key": b"k" * 5000},
     {"headers": [("h", b"v" * 5000)]}, {"headers": [(f"h{i}", b"v") for i in range(40)]}],
    ids=["tombstone", "value over the bound", "key over the bound", "header over the bound", "too many headers"],
)
def test_a_record_that_cannot_be_kept_whole_is_marked_and_refuses_to_rebuild(over: dict[str, object]) -> None:
    d = _dl(**over)
    assert d.truncated and not d.redrivable
    with pytest.raises(ValueError, match="whole record"):
        d.record()


def test_a_dead_letter_from_before_these_fields_still_decodes_and_is_not_redrivable() -> None:
    old = {"source_topic": "genrec.requests", "partition": 0, "offset": 7, "key": "u", "raw": "{", "error":
           "not_json: EOF while parsing"}
    d = decode(DeadLetter, json.dumps(old).encode())
    assert d.reason is None and d.reason_name == "not_json" and not d.redrivable


@pytest.mark.parametrize(
    ("headers", "count"),
    [(None, 0), ([], 0), ([(REDRIVE_HEADER, b"2")], 2), ({REDRIVE_HEADER: b"1"}, 1), ([(REDRIVE_HEADER, b"x")], 0),
     ([(REDRIVE_HEADER, b"-4")], 0), ([(REDRIVE_HEADER, None)], 0), ([("other", b"3")], 0)],
)
def test_redrive_count_reads_the_header_and_never_fails(headers: object, count: int) -> None:
    assert redrive_count(headers) == count
    assert _dl(headers=headers).redrives == count


def test_the_worst_case_dead_letter_stays_under_its_bound() -> None:
    # Control characters grow 6× as JSON escapes: the raw text, the key and header keys at their longest.
    nasty = bytes(range(32)) * 4000
    d = _dl(key=nasty[:4096], value=nasty[:MAX_MESSAGE_BYTES], error="\x01" * 5000,
            headers=[("\x02" * 256, nasty[:4096]) for _ in range(32)])
    size = len(encode(d))
    assert size <= MAX_DEAD_LETTER_BYTES, size
    back = decode(DeadLetter, encode(d))
    assert back.truncated and len(back.headers) < 32  # headers past their byte budget are dropped, and said so
    assert base64.b64decode(back.value_b64 or "") == nasty[:MAX_MESSAGE_BYTES]


@settings(max_examples=200, deadline=None)
@given(
    key=st.none() | st.binary(max_size=64),
    value=st.binary(max_size=2048),
    headers=st.lists(st.tuples(st.text(max_size=16), st.none() | st.binary(max_size=64)), max_size=5),
    ts=st.none() | st.integers(-1, 2**53),
)
def test_any_record_round_trips(key: bytes | None, value: bytes, headers: list[tuple[str, bytes | None]],
                                ts: int | None) -> None:
    d = decode(DeadLetter, encode(_dl(key=key, value=value, headers=headers, timestamp_ms=ts)))
    k, v, h = d.record()
    assert (k, v, d.timestamp_ms) == (key, value, ts)
    assert h == headers
