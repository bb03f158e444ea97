"""Messages on every genrec topic (README, Messages).

Unknown fields are ignored; missing or ill-typed fields are errors; every size is bounded so that a
message cannot make a worker allocate without limit. Values are UTF-8 JSON objects on the wire.
"""

from __future__ import annotations

import base64
import json
import math
import time
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1

# Bounds (bytes/characters). Chosen so one message stays well under Kafka's default 1 MB limit.
MAX_ID_LEN = 128
MAX_QUERY_LEN = 512
MAX_K = 1000
MAX_RAW_BYTES = 4096
MAX_ERROR_LEN = 1024
MAX_MESSAGE_BYTES = 64 * 1024
# Headers a dead letter keeps of its source record: count, key length, value bytes, all headers together.
MAX_HEADERS = 32
MAX_HEADER_KEY_LEN = 256
MAX_HEADER_VALUE_BYTES = 4096
MAX_HEADER_BYTES = 24 * 1024  # JSON-encoded keys + base64 values
# A dead letter's encoded size, whatever was received (the raw text alone can grow 6× in JSON escapes).
MAX_DEAD_LETTER_BYTES = 192 * 1024
# Set by `genrec deadletters redrive` on each record it sends again: how often it was redriven. A worker copies
# it into the record's next dead letter (`DeadLetter.redrives`), so a redrive can skip what failed again.
REDRIVE_HEADER = "genrec-redrive-count"

# The topics' default names (README, Messages); the worker's settings and the client for apps (genrec/client.py)
# start from them, and each can be overridden.
EVENTS_TOPIC = "genrec.events"
REQUESTS_TOPIC = "genrec.requests"
RESULTS_TOPIC = "genrec.results"
DEADLETTER_TOPIC = "genrec.deadletter"
MODELS_TOPIC = "genrec.models"
# A request's `reply_to` must start with the worker's prefix (GENREC_REPLY_TOPIC_PREFIX, default this one); the
# client names the topic it creates for itself `<prefix><uuid>`.
REPLY_TOPIC_PREFIX = "genrec.replies."
# A legal Kafka topic name: at most 249 characters of [A-Za-z0-9._-], and neither "." nor "..".
MAX_TOPIC_LEN = 249
TOPIC_NAME_PATTERN = r"^[A-Za-z0-9._-]+$"


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)

# 1980-01-01 .. 2100-01-01 in epoch milliseconds. From 1980, so that upstream apps can backfill real
# historical events (MovieLens-100K is from 1997–98); any epoch-seconds value of our era is below 1e10, far
# below 1980 in milliseconds (3.2e11), so a seconds-for-milliseconds mix-up is still refused. The static upper
# bound only catches garbage: receivers also refuse times past their own clock plus the allowed skew
# (`check_not_ahead`, the worker's `max_ahead_s`).
MIN_TS_MS = 315_532_800_000
MAX_TS_MS = 4_102_444_800_000

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)]
TopicName = Annotated[str, Field(min_length=1, max_length=MAX_TOPIC_LEN, pattern=TOPIC_NAME_PATTERN)]
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
    # The most bytes `decode` reads for this message (a DeadLetter carries a whole record, so it has more).
    max_bytes: ClassVar[int] = MAX_MESSAGE_BYTES


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
    # A topic the result is also sent to, besides the results topic (the client's own reply topic,
    # genrec/client.py). The worker writes there only under its reply prefix (GENREC_REPLY_TOPIC_PREFIX); a name
    # outside it is answered on the results topic only (README, "Client for apps").
    reply_to: TopicName | None = None

    @field_validator("query")
    @classmethod
    def _empty_query_is_none(cls, v: str | None) -> str | None:
        # An empty query is a plain recommendation request (design: empty → recommendation).
        return v or None

    @field_validator("reply_to")
    @classmethod
    def _legal_topic_name(cls, v: str | None) -> str | None:
        if v in (".", ".."):
            raise ValueError("'.' and '..' are not topic names")
        return v


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


class DeadLetterHeader(_Message):
    model_config = ConfigDict(str_strip_whitespace=False)

    key: str = Field(max_length=MAX_HEADER_KEY_LEN)
    value_b64: str | None = Field(default=None, max_length=_b64_len(MAX_HEADER_VALUE_BYTES))


class DeadLetter(_Message):
    """A record a worker could not process, with what it takes to read it and to send it again.

    `raw` is for people (the first MAX_RAW_BYTES as text); `value_b64`, `key_b64`, `headers` and `timestamp_ms`
    are the record as it came, for `genrec deadletters redrive`. Dead letters written before these fields
    existed have none of them and cannot be redriven. `redrives` counts how often the record had already been
    redriven when it failed (REDRIVE_HEADER): a redrive skips a record that failed again after one.
    """

    # The offending bytes as they came: stripping whitespace here would alter the evidence.
    model_config = ConfigDict(str_strip_whitespace=False)
    max_bytes: ClassVar[int] = MAX_DEAD_LETTER_BYTES

    source_topic: str = Field(max_length=256)
    partition: int = Field(ge=-1)
    offset: int = Field(ge=-1)
    key: str | None = Field(default=None, max_length=MAX_RAW_BYTES)
    # The offending bytes, decoded with errors="replace" and truncated to MAX_RAW_BYTES.
    raw: str = Field(max_length=MAX_RAW_BYTES + 64)
    error: str = Field(max_length=MAX_ERROR_LEN + 64)
    # Since issue 19: the reason alone (also the prefix of `error`), and the record itself.
    reason: str | None = Field(default=None, max_length=32)
    value_b64: str | None = Field(default=None, max_length=_b64_len(MAX_MESSAGE_BYTES))
    key_b64: str | None = Field(default=None, max_length=_b64_len(MAX_RAW_BYTES))
    headers: list[DeadLetterHeader] = Field(default_factory=list, max_length=MAX_HEADERS)
    timestamp_ms: int | None = None
    # Value, key or headers cut to their bounds (or a null value): the record cannot be sent again as it was.
    truncated: bool = False
    redrives: int = Field(default=0, ge=0)

    @property
    def reason_name(self) -> str:
        """The reason, also for dead letters written before `reason` had a field of its own."""
        return self.reason or self.error.split(":", 1)[0].strip()

    @property
    def redrivable(self) -> bool:
        return self.value_b64 is not None and not self.truncated

    def record(self) -> tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]:
        """(key, value, headers) as the source record had them; ValueError if that cannot be rebuilt."""
        if not self.redrivable:
            raise ValueError("this dead letter does not hold the whole record")
        assert self.value_b64 is not None
        key = base64.b64decode(self.key_b64, validate=True) if self.key_b64 is not None else None
        value = base64.b64decode(self.value_b64, validate=True)
        headers = [(h.key, base64.b64decode(h.value_b64, validate=True) if h.value_b64 is not None else None)
                   for h in self.headers]
        return key, value, headers


def redrive_count(headers: Any) -> int:
    """How often a record was redriven, from its REDRIVE_HEADER (0 when absent or unreadable)."""
    for k, v in _header_items(headers):
        if k == REDRIVE_HEADER:
            try:
                return max(0, int(bytes(v or b"").decode("ascii")))
            except (ValueError, UnicodeDecodeError):
                return 0
    return 0


def _header_items(headers: Any) -> list[tuple[str, bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    out: list[tuple[str, bytes | None]] = []
    for k, v in items:
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        out.append((key, v if isinstance(v, bytes | None) else str(v).encode("utf-8")))
    return out


def dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    error: str,
    headers: Any = None,
    timestamp_ms: int | None = None,
) -> DeadLetter:
    """The dead letter of one source record, every part within its bound (encoded, under MAX_DEAD_LETTER_BYTES)."""
    truncated = value is None or len(value) > MAX_MESSAGE_BYTES
    if key is not None and len(key) > MAX_RAW_BYTES:
        truncated = True
    kept: list[DeadLetterHeader] = []
    budget = MAX_HEADER_BYTES
    for k, v in _header_items(headers):
        if len(kept) >= MAX_HEADERS or len(k) > MAX_HEADER_KEY_LEN or len(v or b"") > MAX_HEADER_VALUE_BYTES:
            truncated = True
            continue
        v64 = _b64(v) if v is not None else None
        size = len(json.dumps(k)) + len(v64 or "")  # as written: a key of control characters grows 6×
        if size > budget:
            truncated = True
            continue
        budget -= size
        kept.append(DeadLetterHeader(key=k, value_b64=v64))
    return DeadLetter(
        source_topic=source_topic[:256],
        partition=partition,
        offset=offset,
        key=truncate_raw(key) if key is not None else None,
        raw=truncate_raw(value),
        error=f"{reason}: {error}"[:MAX_ERROR_LEN],
        reason=reason[:32],
        value_b64=_b64(value[:MAX_MESSAGE_BYTES]) if value is not None else None,
        key_b64=_b64(key[:MAX_RAW_BYTES]) if key is not None else None,
        headers=kept,
        timestamp_ms=timestamp_ms,
        truncated=truncated,
        redrives=redrive_count(headers),
    )


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


class ModelVersion(_Message):
    version: Id
    path: str = Field(max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parent: str | None = Field(default=None, max_length=MAX_ID_LEN)
    created_at: float
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    kind: Literal["publish", "rollback", "promote"] = "publish"


class PublishingControl(_Message):
    """On `genrec.models` under the key "publishing" (latest wins): whether the trainer may publish versions.

    `genrec models pause` writes `paused=true` (and `genrec models rollback` does, unless told otherwise), so
    that a rolled-back version is not replaced by the trainer's next candidate; `resume` writes `paused=false`.
    """

    paused: bool
    reason: str | None = Field(default=None, max_length=MAX_ERROR_LEN)
    at: float
    by: str | None = Field(default=None, max_length=MAX_ID_LEN)


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
    if len(raw) > model.max_bytes:
        raise MessageTooLarge(f"message of {len(raw)} bytes exceeds the {model.max_bytes}-byte bound")
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
    "PublishingControl": PublishingControl,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of every message, for producers in other languages."""
    return {name: m.model_json_schema() for name, m in ALL_MESSAGES.items()}


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
JSON_SCHEMA_SUFFIX = ".schema.json"


def json_schema_files() -> dict[str, str]:
    """`{file name: text}` written by `genrec schemas export` and committed under schemas/json/.

    The text is deterministic (sorted keys, fixed indent, trailing newline) so that the committed copies can be
    compared byte for byte with what the models produce now (tests/schemas/test_json_export.py), and `$schema`
    names the dialect, which validators in other languages need to pick their draft.
    """
    return {
        f"{name}{JSON_SCHEMA_SUFFIX}": json.dumps({"$schema": JSON_SCHEMA_DIALECT, **schema}, indent=2,
                                                   sort_keys=True, ensure_ascii=False) + "\n"
        for name, schema in json_schemas().items()
    }
