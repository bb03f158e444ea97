"""The whole bad-input matrix at the decoder: every case rejected with the reason it names, every
accepted case accepted; random bytes and near-valid JSON either decode within bounds or are rejected
with a known reason — never another exception type."""

from __future__ import annotations

import json

import pytest
from genrec.schemas import (
    MAX_ID_LEN,
    MAX_K,
    MAX_QUERY_LEN,
    REJECT_REASONS,
    Event,
    EventType,
    RecRequest,
    decode,
    rejection,
)
from genrec.schemas.messages import MAX_ERROR_LEN
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.schemas.bad_inputs import (
    ACCEPTED_EVENTS,
    ACCEPTED_REQUESTS,
    BAD_EVENTS,
    BAD_REQUESTS,
    good_event,
    good_request,
)


def _reject(model: type, raw: bytes | None) -> tuple[str, str]:
    with pytest.raises(ValueError) as info:
        decode(model, raw)
    return rejection(info.value, raw)


@pytest.mark.parametrize(("name", "raw", "reason"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS])
def test_bad_events_are_rejected_with_their_reason(name: str, raw: bytes | None, reason: str) -> None:
    got, text = _reject(Event, raw)
    assert got == reason, text
    assert text and len(text) <= MAX_ERROR_LEN
    assert "errors.pydantic.dev" not in text  # one line for operators, no documentation links


@pytest.mark.parametrize(("name", "raw", "reason"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_are_rejected_with_their_reason(name: str, raw: bytes | None, reason: str) -> None:
    got, text = _reject(RecRequest, raw)
    assert got == reason, text
    assert text and len(text) <= MAX_ERROR_LEN


@pytest.mark.parametrize(("name", "raw"), ACCEPTED_EVENTS, ids=[c[0] for c in ACCEPTED_EVENTS])
def test_accepted_events(name: str, raw: bytes) -> None:
    ev = decode(Event, raw)
    assert ev.user_id == "u1" and not hasattr(ev, "client")


@pytest.mark.parametrize(("name", "raw"), ACCEPTED_REQUESTS, ids=[c[0] for c in ACCEPTED_REQUESTS])
def test_accepted_requests(name: str, raw: bytes) -> None:
    r = decode(RecRequest, raw)
    assert 1 <= r.k <= MAX_K and (r.query is None or r.query.strip())


def test_the_explanation_names_every_offending_field_and_does_not_echo_the_input() -> None:
    raw = json.dumps(good_request(k=0, ts="soon", request_id="secret-" + "x" * 500)).encode()
    reason, text = _reject(RecRequest, raw)
    assert reason == "wrong_type"  # a type error outranks a bound: fix the type first
    assert "k:" in text and "ts:" in text and "request_id:" in text
    assert "secret-" not in text


def test_every_reason_in_the_matrix_is_a_declared_reason() -> None:
    used = {c[2] for c in BAD_EVENTS + BAD_REQUESTS}
    assert used <= set(REJECT_REASONS)
    assert used == set(REJECT_REASONS)  # and the matrix exercises each of them


# ---------------------------------------------------------------------------------------------- fuzz


def _check_rejected_or_bounded(model: type, raw: bytes) -> None:
    try:
        msg = decode(model, raw)
    except ValueError as exc:
        reason, text = rejection(exc, raw)
        assert reason in REJECT_REASONS and text
        return
    assert 0 < len(msg.user_id) <= MAX_ID_LEN
    if isinstance(msg, RecRequest):
        assert 1 <= msg.k <= MAX_K
        assert msg.query is None or 0 < len(msg.query) <= MAX_QUERY_LEN
    else:
        assert msg.type is EventType.QUERY or msg.item_id


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1024))
def test_random_bytes_are_rejected_with_a_known_reason(raw: bytes) -> None:
    for model in (Event, RecRequest):
        _check_rejected_or_bounded(model, raw)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.text(min_size=100, max_size=700)
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_EVENT_FIELDS = [*good_event(), "query", "value", "request_id", "schema_version", "extra"]
_REQUEST_FIELDS = [*good_request(), "query", "exclude_seen", "schema_version", "extra"]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_EVENT_FIELDS), _json_values, max_size=4),
    st.sets(st.sampled_from(_EVENT_FIELDS), max_size=2),
)
def test_near_valid_events(changes: dict, drop: set) -> None:
    d = {k: v for k, v in {**good_event(), **changes}.items() if k not in drop}
    # allow_nan: NaN/Infinity literals are what a careless producer in another language sends.
    _check_rejected_or_bounded(Event, json.dumps(d, allow_nan=True).encode())


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_REQUEST_FIELDS), _json_values, max_size=4),
    st.sets(st.sampled_from(_REQUEST_FIELDS), max_size=2),
)
def test_near_valid_requests(changes: dict, drop: set) -> None:
    d = {k: v for k, v in {**good_request(), **changes}.items() if k not in drop}
    _check_rejected_or_bounded(RecRequest, json.dumps(d, allow_nan=True).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_a_dead_letter_keeps_the_raw_bytes_as_they_came(raw: bytes) -> None:
    from genrec.schemas import DeadLetter, encode, truncate_raw

    dl = DeadLetter(source_topic="t", partition=0, offset=3, key=" k ", raw=truncate_raw(raw), error="x")
    back = decode(DeadLetter, encode(dl))
    assert back.raw == raw.decode("utf-8", errors="replace") and back.key == " k "


def test_a_timestamp_far_ahead_of_the_clock_is_out_of_bounds() -> None:
    from genrec.schemas import TimestampAhead, check_not_ahead

    now = 1_800_000_000_000
    day = 86_400_000
    check_not_ahead(now + day, day, now_ms=now)  # clock skew within the allowance
    check_not_ahead(now - 10 * 365 * day, day, now_ms=now)  # the past is never "ahead"
    with pytest.raises(TimestampAhead) as info:
        check_not_ahead(now + day + 1, day, now_ms=now)
    reason, text = rejection(info.value)
    assert reason == "out_of_bounds" and "ahead of the clock" in text
