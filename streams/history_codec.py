"""Per-user history as one compact binary value (the `user_history` table's value; docs/architecture.md).

The last L item events of a user, oldest first, plus the hashes of the user's most recent event ids
so that a redelivered event is recognised and not appended twice. Raw item ids are stored (not
vocabulary indices: those change between model versions). Columnar, little endian:

    header  <BBHH   magic 0x47, version, n_events, n_ids
    ids     u64[n_ids]   blake2b-64 of event_id, oldest first
    ts      i64[n]       epoch ms, non-decreasing
    actions i8[n]        model.tokens.Action
    lens    u16[n]       byte length of each item id
    blob    bytes        the item ids, UTF-8, concatenated

Columnar so that the common append (newest event, buffer full or not) is a handful of byte slices
and concatenations — no per-event Python loop on the ingest hot path.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = 0x47
VERSION = 1
_HEADER = struct.Struct("<BBHH")
_TS = struct.Struct("<q")
_LEN = struct.Struct("<H")
_ID = struct.Struct("<Q")
MAX_EVENTS = 65_535
MAX_ITEM_ID_BYTES = 65_535


class CorruptHistoryError(ValueError):
    pass


def event_hash(event_id: str) -> int:
    """A process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass
class RawHistory:
    """Decoded value: raw item ids, actions and timestamps, oldest first; recent event-id hashes."""

    item_ids: list[str] = field(default_factory=list)
    actions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    event_hashes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class _View:
    n: int
    n_ids: int
    ids: bytes
    ts: bytes
    actions: bytes
    lens: bytes
    blob: bytes


def _split(buf: bytes) -> _View:
    if len(buf) < _HEADER.size:
        raise CorruptHistoryError(f"history value of {len(buf)} bytes is shorter than its header")
    magic, version, n, n_ids = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION:
        raise CorruptHistoryError(f"unknown history encoding (magic {magic:#x}, version {version})")
    p = _HEADER.size
    ids = buf[p : p + 8 * n_ids]
    p += 8 * n_ids
    ts = buf[p : p + 8 * n]
    p += 8 * n
    actions = buf[p : p + n]
    p += n
    lens = buf[p : p + 2 * n]
    p += 2 * n
    if len(lens) != 2 * n:
        raise CorruptHistoryError("history value is truncated")
    blob = buf[p:]
    if len(blob) != _sum_lens(lens):
        raise CorruptHistoryError("history item-id blob does not match its lengths")
    return _View(n, n_ids, ids, ts, actions, lens, blob)


def _sum_lens(lens: bytes) -> int:
    return int(np.frombuffer(lens, dtype="<u2").sum()) if lens else 0


def _has_id(ids: bytes, h: int) -> bool:
    # bytes.find is a C scan; only hits on an 8-byte boundary are real entries.
    needle = _ID.pack(h)
    i = ids.find(needle)
    while i != -1:
        if i % 8 == 0:
            return True
        i = ids.find(needle, i + 1)
    return False


def _join(n: int, n_ids: int, ids: bytes, ts: bytes, actions: bytes, lens: bytes, blob: bytes) -> bytes:
    return b"".join((_HEADER.pack(MAGIC, VERSION, n, n_ids), ids, ts, actions, lens, blob))


def decode(buf: bytes | None) -> RawHistory:
    if not buf:
        return RawHistory()
    v = _split(buf)
    lens = np.frombuffer(v.lens, dtype="<u2")
    ends = np.cumsum(lens, dtype=np.int64)
    starts = ends - lens
    blob = v.blob
    items = [blob[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    return RawHistory(
        item_ids=items,
        actions=np.frombuffer(v.actions, dtype=np.int8).copy(),
        ts_ms=np.frombuffer(v.ts, dtype="<i8").astype(np.int64),
        event_hashes=np.frombuffer(v.ids, dtype="<u8").tolist(),
    )


def encode(h: RawHistory) -> bytes:
    n = len(h.item_ids)
    if n > MAX_EVENTS or len(h.event_hashes) > MAX_EVENTS:
        raise ValueError("too many events for one history value")
    if not (n == len(h.actions) == len(h.ts_ms)):
        raise ValueError("item_ids, actions and ts_ms must have the same length")
    raw = [i.encode("utf-8") for i in h.item_ids]
    for r in raw:
        if len(r) > MAX_ITEM_ID_BYTES:
            raise ValueError("item id too long")
    return _join(
        n,
        len(h.event_hashes),
        b"".join(_ID.pack(x) for x in h.event_hashes),
        np.asarray(h.ts_ms, dtype="<i8").tobytes(),
        np.asarray(h.actions, dtype=np.int8).tobytes(),
        np.asarray([len(r) for r in raw], dtype="<u2").tobytes(),
        b"".join(raw),
    )


class HistoryCodec:
    """Appends to encoded histories, bounded to `max_events` events and `max_ids` event-id hashes."""

    def __init__(self, max_events: int = 200, max_ids: int = 64) -> None:
        if not 1 <= max_events <= MAX_EVENTS or not 0 <= max_ids <= MAX_EVENTS:
            raise ValueError("max_events must be in 1..65535 and max_ids in 0..65535")
        self.max_events = max_events
        self.max_ids = max_ids

    def seen(self, buf: bytes | None, event_id: str) -> bool:
        if not buf or self.max_ids == 0:
            return False
        v = _split(buf)
        return _has_id(v.ids, event_hash(event_id))

    def append(self, buf: bytes | None, *, event_id: str, item_id: str | None, action: int, ts_ms: int) -> bytes | None:
        """The new value, or None if `event_id` is already recorded (a redelivery: nothing to write).

        `item_id=None` records only the event id (a query event: not part of the item history).
        An event older than every kept event of a full buffer is recorded as seen but not kept.
        """
        h = event_hash(event_id)
        if not buf:
            v = _View(0, 0, b"", b"", b"", b"", b"")
        else:
            v = _split(buf)
            if self.max_ids and _has_id(v.ids, h):
                return None
        ids, n_ids = v.ids, v.n_ids
        if self.max_ids:
            ids += _ID.pack(h)
            n_ids += 1
            if n_ids > self.max_ids:
                drop = n_ids - self.max_ids
                ids = ids[8 * drop :]
                n_ids = self.max_ids
        if item_id is None:
            return _join(v.n, n_ids, ids, v.ts, v.actions, v.lens, v.blob)
        raw = item_id.encode("utf-8")
        if len(raw) > MAX_ITEM_ID_BYTES:
            raise ValueError("item id too long")
        if not -128 <= action <= 127:
            raise ValueError("action must fit in int8")
        n = v.n
        last_ts = _TS.unpack_from(v.ts, 8 * (n - 1))[0] if n else None
        if last_ts is not None and ts_ms < last_ts:
            return self._insert_late(v, ids, n_ids, raw, action, ts_ms)
        ts, actions, lens, blob = v.ts, v.actions, v.lens, v.blob
        if n >= self.max_events:
            # Drop the oldest events so that the new one fits (also shrinks after L was lowered).
            drop = n - self.max_events + 1
            cut = _sum_lens(lens[: 2 * drop])
            ts, actions, lens, blob = ts[8 * drop :], actions[drop:], lens[2 * drop :], blob[cut:]
            n -= drop
        return _join(
            n + 1,
            n_ids,
            ids,
            ts + _TS.pack(ts_ms),
            actions + struct.pack("<b", action),
            lens + _LEN.pack(len(raw)),
            blob + raw,
        )

    def _insert_late(self, v: _View, ids: bytes, n_ids: int, raw: bytes, action: int, ts_ms: int) -> bytes:
        # Rare path (an event delivered out of time order): decode, insert in place, re-encode.
        ts = np.frombuffer(v.ts, dtype="<i8").tolist()
        lens = np.frombuffer(v.lens, dtype="<u2").tolist()
        pos = bisect.bisect_right(ts, ts_ms)
        acts = list(v.actions)
        offsets = [0]
        for ln in lens:
            offsets.append(offsets[-1] + ln)
        chunks = [v.blob[offsets[i] : offsets[i + 1]] for i in range(len(lens))]
        ts.insert(pos, ts_ms)
        acts.insert(pos, action & 0xFF)
        lens.insert(pos, len(raw))
        chunks.insert(pos, raw)
        if len(ts) > self.max_events:
            drop = len(ts) - self.max_events
            ts, acts, lens, chunks = ts[drop:], acts[drop:], lens[drop:], chunks[drop:]
        return _join(
            len(ts),
            n_ids,
            ids,
            np.asarray(ts, dtype="<i8").tobytes(),
            bytes(acts),
            np.asarray(lens, dtype="<u2").tobytes(),
            b"".join(chunks),
        )
