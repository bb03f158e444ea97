"""Messages on every genrec topic (design.md §3, §8).

Unknown fields are ignored; missing or ill-typed fields are errors; every size is bounded so that a
message cannot make a worker allocate without limit. Values are UTF-8 JSON objects on the wire.
"""

from __future__ import annotations

import math
import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1

# Bounds (bytes/characters). Chosen so one message stays well under Kafka's default 1 MB limit.
MAX_ID_LEN = 128
MAX_QUERY_LEN = 512
MAX_K = 1000
MAX_RAW_BYTES = 4096
MAX_ERROR_LEN = 1024
MAX_MESSAGE_BYTES = 64 * 1024
# 1980-01-01 .. 2100-01-01 in epoch milliseconds. From 1980, so that upstream apps can backfill real
# historical events (MovieLens-100K is from 1997–98); any epoch-seconds value of our era is below 1e10, far
# below 1980 in milliseconds (3.2e11), so a seconds-for-milliseconds mix-up is still refused. The static upper
# bound only catches garbage: receivers also refuse times past their own clock plus the allowed skew
# (`check_not_ahead`, the worker's `max_ahead_s`).
MIN_TS_MS = 315_532_800_000
MAX_TS_MS = 4_102_444_800_000

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)]
TimestampMs = Annotated[int, Field(ge=MIN_TS_MS, le=MAX_TS_MS, strict=True)]


class EventType(StrEnum):
    CLICK = "click"
    IMPRESSION = "impression"
    QUERY = "query"
    PURCHASE = "purchase"
    RATING = "rating"


class _Message(BaseModel):
    # extra="ignore": producers may add fields without breaking consumers (forward compatibility).
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)


def _finite(v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


class Event(_Message):
    """A user's behaviour: an item interaction or a search query."""

    event_id: Id
    user_id: Id
    ts: TimestampMs
    type: EventType
    item_id: Id | None = None
    query: Annotated[str, Field(max_length=MAX_QUERY_LEN)] | None = None
    value: float | None = Field(default=None, ge=-1e6, le=1e6)
    request_id: Id | None = None

    _check_value = field_validator("value")(classmethod(lambda cls, v: _finite(v)))

    @model_validator(mode="after")
    def _payload_matches_type(self) -> Event:
        if self.type is EventType.QUERY:
            if not self.query:
                raise ValueError("a query event needs a non-empty 'query'")
        elif self.item_id is None:
            raise ValueError(f"a {self.type.value} event needs an 'item_id'")
        return self


class RecRequest(_Message):
    """Ask for k items for a user; with a query it is a personalized search."""

    request_id: Id
    user_id: Id
    ts: TimestampMs
    k: int = Field(default=10, ge=1, le=MAX_K, strict=True)
    query: Annotated[str, Field(max_length=MAX_QUERY_LEN)] | None = None
    exclude_seen: bool = True

    @field_validator("query")
    @classmethod
    def _empty_query_is_none(cls, v: str | None) -> str | None:
        # An empty query is a plain recommendation request (design: empty → recommendation).
        return v or None


class ScoredItem(_Message):
    item_id: Id
    rank: int = Field(ge=1, le=MAX_K)
    score: float
    retrieval_score: float

    _check_scores = field_validator("score", "retrieval_score")(classmethod(lambda cls, v: _finite(v)))


class RecResult(_Message):
    request_id: Id
    user_id: Id
    query: str | None = Field(default=None, max_length=MAX_QUERY_LEN)
    model_version: str = Field(max_length=MAX_ID_LEN)
    items: list[ScoredItem] = Field(max_length=MAX_K)
    latency_ms: float = Field(ge=0)
    worker: str = Field(max_length=MAX_ID_LEN)


class DeadLetter(_Message):
    # The offending bytes as they came: stripping whitespace here would alter the evidence.
    model_config = ConfigDict(str_strip_whitespace=False)

    source_topic: str = Field(max_length=256)
    partition: int = Field(ge=-1)
    offset: int = Field(ge=-1)
    key: str | None = Field(default=None, max_length=MAX_RAW_BYTES)
    # The offending bytes, decoded with errors="replace" and truncated to MAX_RAW_BYTES.
    raw: str = Field(max_length=MAX_RAW_BYTES + 64)
    error: str = Field(max_length=MAX_ERROR_LEN + 64)


class ModelVersion(_Message):
    version: Id
    path: str = Field(max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parent: str | None = Field(default=None, max_length=MAX_ID_LEN)
    created_at: float
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    kind: Literal["publish", "rollback", "promote"] = "publish"


class MessageTooLarge(ValueError):
    pass


class TimestampAhead(ValueError):
    """A timestamp too far ahead of the receiver's clock (the schema's static bound cannot know "now")."""


def check_not_ahead(ts_ms: int, max_ahead_ms: int, now_ms: int | None = None) -> None:
    """Raise TimestampAhead if `ts_ms` is more than `max_ahead_ms` after `now_ms` (default: the wall clock).

    One event stamped years ahead would stay the newest of its user's history for good: every later real
    event would be filed before it, and the model would read it as the user's latest action.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts_ms > now + max_ahead_ms:
        raise TimestampAhead(
            f"ts: {ts_ms} is {(ts_ms - now) / 3_600_000:.1f} h ahead of the clock "
            f"(at most {max_ahead_ms / 3_600_000:.1f} h allowed)"
        )


class MessageEmpty(ValueError):
    pass


def decode(model: type[_Message], raw: bytes | str | None) -> Any:
    """Bytes off the wire → a validated message. Raises ValueError (pydantic's included) on bad input."""
    if raw is None:
        # A null value (a tombstone) carries no message; it must fail like any bad input, not as a TypeError.
        raise MessageEmpty("null message value (a tombstone)")
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message of {len(raw)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte bound")
    # model_validate_json rejects invalid UTF-8, NaN/Infinity literals and non-objects with a clear error.
    return model.model_validate_json(raw)


def encode(msg: _Message) -> bytes:
    return msg.model_dump_json(exclude_none=False).encode("utf-8")


def truncate_raw(raw: bytes | None) -> str:
    if raw is None:
        return ""
    return raw[:MAX_RAW_BYTES].decode("utf-8", errors="replace")


# Why a message was rejected: a small closed set, so it can label a metric without unbounded cardinality.
REJECT_REASONS = (
    "empty",
    "too_large",
    "invalid_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "out_of_bounds",
    "invalid",
)
_BOUND_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "string_too_short",
    "string_too_long",
    "too_short",
    "too_long",
    "finite_number",
}
_MAX_REPORTED_ERRORS = 5


def rejection(exc: BaseException, raw: bytes | str | None = None) -> tuple[str, str]:
    """(reason, one-line explanation) of a `decode` failure, for dead letters and metrics.

    The explanation names each offending field without pydantic's documentation links, and never
    echoes more than a short prefix of the input (the dead letter carries the raw bytes anyway).
    """
    if isinstance(exc, MessageTooLarge):
        return "too_large", str(exc)
    if isinstance(exc, TimestampAhead):
        return "out_of_bounds", str(exc)
    if isinstance(exc, MessageEmpty) or raw is None or raw in (b"", ""):
        return "empty", str(exc) if isinstance(exc, MessageEmpty) else "empty message"
    if not isinstance(exc, ValidationError):
        return "invalid", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LEN]
    errors = exc.errors(include_url=False, include_input=False)
    types = {e["type"] for e in errors}
    if "json_invalid" in types:
        if isinstance(raw, bytes):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as u:
                return "invalid_utf8", f"not UTF-8: {u.reason} at byte {u.start}"
        return "not_json", errors[0]["msg"]
    if "model_type" in types:
        return "not_object", "the value is JSON but not an object"
    if "missing" in types:
        reason = "missing_field"
    elif types <= _BOUND_ERRORS:
        reason = "out_of_bounds"
    elif any(t.endswith("_type") or t.endswith("_parsing") or t == "enum" for t in types):
        reason = "wrong_type"
    else:
        reason = "invalid"
    parts = [f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in errors[:_MAX_REPORTED_ERRORS]]
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"… {len(errors) - _MAX_REPORTED_ERRORS} more")
    return reason, "; ".join(parts)[:MAX_ERROR_LEN]


ALL_MESSAGES: dict[str, type[_Message]] = {
    "Event": Event,
    "RecRequest": RecRequest,
    "RecResult": RecResult,
    "DeadLetter": DeadLetter,
    "ModelVersion": ModelVersion,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of every message, for producers in other languages."""
    return {name: m.model_json_schema() for name, m in ALL_MESSAGES.items()}
