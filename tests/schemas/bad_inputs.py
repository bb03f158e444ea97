"""The bad-input matrix (issue 7), shared by the decoder unit tests and the running-worker integration test.

Each case is (name, raw value, expected rejection reason). Values are built from a good message by one
change, so that each case fails for exactly the reason it names.
"""

from __future__ import annotations

import json
from typing import Any

from genrec.schemas import MAX_ID_LEN, MAX_K, MAX_MESSAGE_BYTES, MAX_QUERY_LEN

TS = 1_700_000_000_000
YEAR_2200_MS = 7_258_118_400_000


def good_event(**over: Any) -> dict[str, Any]:
    return {"event_id": "e1", "user_id": "u1", "ts": TS, "type": "click", "item_id": "42", **over}


def good_request(**over: Any) -> dict[str, Any]:
    return {"request_id": "r1", "user_id": "u1", "ts": TS, "k": 5, **over}


def _j(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


BadCase = tuple[str, bytes | None, str]


def _common(good: dict[str, Any], id_field: str) -> list[BadCase]:
    return [
        ("null value (tombstone)", None, "empty"),
        ("empty", b"", "empty"),
        ("not json", b"{not json", "not_json"),
        ("truncated json", _j(good)[:-3], "not_json"),
        ("json array", b"[1, 2, 3]", "not_object"),
        ("json string", b'"hello"', "not_object"),
        ("json number", b"42", "not_object"),
        ("json null", b"null", "not_object"),
        ("invalid utf-8 inside a string", _j(good).replace(b'"u1"', b'"u\xff\xfe"'), "invalid_utf8"),
        ("invalid utf-8 bytes", b"\xff\xfe\xfd\x00", "invalid_utf8"),
        ("over-sized", _j({**good, "padding": "x" * MAX_MESSAGE_BYTES}), "too_large"),
        (f"missing {id_field}", _j(_without(good, id_field)), "missing_field"),
        ("missing user_id", _j(_without(good, "user_id")), "missing_field"),
        ("missing ts", _j(_without(good, "ts")), "missing_field"),
        ("ts as text", _j({**good, "ts": "yesterday"}), "wrong_type"),
        ("ts as float", _j({**good, "ts": TS + 0.5}), "wrong_type"),
        ("ts as bool", _j({**good, "ts": True}), "wrong_type"),
        ("user_id as number", _j({**good, "user_id": 7}), "wrong_type"),
        ("negative ts", _j({**good, "ts": -5}), "out_of_bounds"),
        ("ts in seconds", _j({**good, "ts": TS // 1000}), "out_of_bounds"),
        ("ts before 1980", _j({**good, "ts": 315_532_799_999}), "out_of_bounds"),
        ("far-future ts", _j({**good, "ts": YEAR_2200_MS}), "out_of_bounds"),
        (f"over-long {id_field}", _j({**good, id_field: "x" * (MAX_ID_LEN + 1)}), "out_of_bounds"),
        ("over-long user_id", _j({**good, "user_id": "u" * 10_000}), "out_of_bounds"),
        ("blank user_id", _j({**good, "user_id": "   "}), "out_of_bounds"),
        ("newer schema version", _j({**good, "schema_version": 2}), "out_of_bounds"),
    ]


BAD_EVENTS: list[BadCase] = [
    *_common(good_event(), "event_id"),
    ("unknown event type", _j(good_event(type="teleport")), "wrong_type"),
    ("item_id as number", _j(good_event(item_id=42)), "wrong_type"),
    ("click without item_id", _j(_without(good_event(), "item_id")), "invalid"),
    ("query event without query", _j(good_event(type="query", item_id=None)), "invalid"),
    ("query event with blank query", _j(good_event(type="query", query="   ")), "invalid"),
    ("over-long query", _j(good_event(type="query", query="q" * (MAX_QUERY_LEN + 1))), "out_of_bounds"),
    ("NaN value", _j(good_event(type="rating", value=float("nan"))), "out_of_bounds"),
    ("Infinity value", _j(good_event(type="rating", value=float("inf"))), "out_of_bounds"),
    ("huge value", _j(good_event(type="rating", value=1e300)), "out_of_bounds"),
]

BAD_REQUESTS: list[BadCase] = [
    *_common(good_request(), "request_id"),
    ("k = 0", _j(good_request(k=0)), "out_of_bounds"),
    ("k negative", _j(good_request(k=-3)), "out_of_bounds"),
    ("k huge", _j(good_request(k=MAX_K + 1)), "out_of_bounds"),
    ("k astronomically huge", b'{"request_id": "r1", "user_id": "u1", "ts": 1700000000000, "k": 1e400}', "wrong_type"),
    ("k as text", _j(good_request(k="10")), "wrong_type"),
    ("k as float", _j(good_request(k=2.5)), "wrong_type"),
    ("k NaN", b'{"request_id": "r1", "user_id": "u1", "ts": 1700000000000, "k": NaN}', "wrong_type"),
    ("k Infinity", b'{"request_id": "r1", "user_id": "u1", "ts": 1700000000000, "k": Infinity}', "wrong_type"),
    ("over-long query", _j(good_request(query="q" * (MAX_QUERY_LEN + 1))), "out_of_bounds"),
    ("query as list", _j(good_request(query=["a", "b"])), "wrong_type"),
    ("exclude_seen as text", _j(good_request(exclude_seen="maybe")), "wrong_type"),
]

# Accepted on purpose: these must NOT be dead-lettered.
ACCEPTED_EVENTS: list[tuple[str, bytes]] = [
    ("unknown fields", _j(good_event(client="ios", tags=[1, 2], nested={"a": None}))),
    ("unknown item id (a cold item)", _j(good_event(item_id="never-seen-item"))),
    ("query event", _j(good_event(type="query", item_id=None, query="space adventure"))),
    ("rating with value", _j(good_event(type="rating", value=4.5))),
]
ACCEPTED_REQUESTS: list[tuple[str, bytes]] = [
    ("unknown fields", _j(good_request(extra={"x": 1}))),
    ("empty query is a recommendation", _j(good_request(query=""))),
    ("k at the bound", _j(good_request(k=MAX_K))),
    ("unicode query", _j(good_request(query="película 🎬 \u200b"))),
]
