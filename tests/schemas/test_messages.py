"""Schema validation: bounds, unknown fields, bad bytes — property-based where it pays."""

from __future__ import annotations

import contextlib
import json

import pytest
from genrec.schemas import (
    MAX_K,
    MAX_MESSAGE_BYTES,
    MAX_QUERY_LEN,
    Event,
    MessageTooLarge,
    RecRequest,
    RecResult,
    ScoredItem,
    decode,
    encode,
    json_schemas,
    rejection,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

TS = 1_700_000_000_000
GOOD_EVENT = {"event_id": "e1", "user_id": "u1", "ts": TS, "type": "click", "item_id": "42"}
GOOD_REQUEST = {"request_id": "r1", "user_id": "u1", "ts": TS, "k": 10}


def test_good_messages_round_trip_and_unknown_fields_are_ignored() -> None:
    e = decode(Event, json.dumps({**GOOD_EVENT, "future_field": [1, 2]}).encode())
    assert e.item_id == "42" and decode(Event, encode(e)) == e
    r = decode(RecRequest, json.dumps(GOOD_REQUEST).encode())
    assert r.exclude_seen is True and r.query is None
    res = RecResult(
        request_id="r1",
        user_id="u1",
        model_version="v1",
        latency_ms=3.0,
        worker="w",
        items=[ScoredItem(item_id="1", rank=1, score=0.9, retrieval_score=0.5)],
    )
    assert decode(RecResult, encode(res)) == res


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b"\xff\xfe\xfd",
        b"",
        json.dumps({**GOOD_REQUEST, "k": 0}).encode(),
        json.dumps({**GOOD_REQUEST, "k": MAX_K + 1}).encode(),
        json.dumps({**GOOD_REQUEST, "k": "10"}).encode(),
        json.dumps({**GOOD_REQUEST, "ts": 1_700_000_000}).encode(),  # seconds, not ms
        json.dumps({**GOOD_REQUEST, "ts": -5}).encode(),
        json.dumps({**GOOD_REQUEST, "query": "x" * (MAX_QUERY_LEN + 1)}).encode(),
        json.dumps({**GOOD_REQUEST, "user_id": "u" * 1000}).encode(),
        json.dumps({k: v for k, v in GOOD_REQUEST.items() if k != "request_id"}).encode(),
        b'{"request_id": "r", "user_id": "u", "ts": 1700000000000, "k": NaN}',
    ],
)
def test_bad_requests_are_rejected_with_a_validation_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode(RecRequest, raw)


def test_event_payload_must_match_its_type() -> None:
    with pytest.raises(ValidationError, match="item_id"):
        decode(Event, json.dumps({**GOOD_EVENT, "item_id": None}).encode())
    with pytest.raises(ValidationError, match="query"):
        decode(Event, json.dumps({**GOOD_EVENT, "type": "query", "item_id": None}).encode())
    with pytest.raises(ValidationError):
        decode(Event, json.dumps({**GOOD_EVENT, "type": "rating", "value": float("inf")}).encode())


def test_oversized_messages_are_rejected_before_parsing() -> None:
    with pytest.raises(MessageTooLarge):
        decode(Event, b" " * (MAX_MESSAGE_BYTES + 1))


def test_json_schema_export_covers_every_message() -> None:
    schemas = json_schemas()
    assert set(schemas) == {"Event", "RecRequest", "RecResult", "DeadLetter", "ModelVersion", "PublishingControl"}
    assert schemas["RecRequest"]["properties"]["k"]["maximum"] == MAX_K


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_decoder(raw: bytes) -> None:
    for model in (Event, RecRequest):
        # Rejected with a clear error is the only other allowed outcome.
        with contextlib.suppress(ValueError):
            decode(model, raw)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD_REQUEST, "query", "exclude_seen", "x"]), _json_values))
def test_near_valid_requests_either_validate_within_bounds_or_raise(fields: dict) -> None:
    raw = json.dumps({**GOOD_REQUEST, **fields}).encode()
    try:
        r = decode(RecRequest, raw)
    except ValueError:
        return
    assert 1 <= r.k <= MAX_K
    assert r.query is None or 0 < len(r.query) <= MAX_QUERY_LEN
    assert isinstance(r.ts, int)


# ---- timestamps (issue 19 item 7): historical backfills are accepted, seconds are still caught ----------------

ML100K_FIRST_S = 874_724_710  # the earliest event of MovieLens-100K (1997-09-20), in epoch seconds
JAN_1980_MS = 315_532_800_000


@pytest.mark.parametrize(
    "ts_ms",
    [ML100K_FIRST_S * 1000, 893_286_638_000, JAN_1980_MS, 946_684_799_999, TS],
    ids=["ml-100k first", "ml-100k last", "1980-01-01", "1999-12-31", "2023"],
)
def test_historical_times_from_1980_on_are_accepted(ts_ms: int) -> None:
    e = decode(Event, json.dumps({**GOOD_EVENT, "ts": ts_ms}).encode())
    r = decode(RecRequest, json.dumps({**GOOD_REQUEST, "ts": ts_ms}).encode())
    assert e.ts == r.ts == ts_ms


def test_a_time_before_1980_is_out_of_bounds() -> None:
    with pytest.raises(ValidationError) as exc:
        decode(Event, json.dumps({**GOOD_EVENT, "ts": JAN_1980_MS - 1}).encode())
    assert rejection(exc.value, b"x")[0] == "out_of_bounds"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**10 - 1))
def test_any_epoch_seconds_value_is_refused_as_milliseconds(ts_s: int) -> None:
    # Epoch seconds stay below 1e10 until the year 2286: each is refused, never read as a 1970 date.
    with pytest.raises(ValidationError) as exc:
        decode(Event, json.dumps({**GOOD_EVENT, "ts": ts_s}).encode())
    assert rejection(exc.value, b"x")[0] == "out_of_bounds"
