"""Events → tokens (UniGRF): each item event is an item token followed by an action token; a query event
is one query token. Every token carries its event's timestamp.

Token layout of one user, oldest first, left-padded to a common length T:

    [pad … pad | item₁ act₁ item₂ act₂ … | query q … ]

Retrieval reads the output at action and query tokens ("what next"); ranking reads it at item tokens
("how will the user react to this item"). With `interleave_actions=False` (data sets without
feedback, e.g. ML-1M) there are only item tokens and both heads read at them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Kind(IntEnum):
    PAD = 0
    ITEM = 1
    ACTION = 2
    QUERY = 3


class Action(IntEnum):
    PAD = 0
    POSITIVE = 1  # click, or an explicit rating at or above the positive threshold
    NEGATIVE = 2  # impression without click, or a low rating
    PURCHASE = 3
    INTERACT = 4  # an interaction with no feedback label (order-only data sets)


NUM_ACTIONS = len(Action)
POSITIVE_RATING = 4.0  # ML-100K convention: rating ≥ 4 is a positive


def action_from_event(event_type: str, value: float | None = None) -> Action:
    """Map an event's type (and rating value) to its action token."""
    if event_type == "click":
        return Action.POSITIVE
    if event_type == "impression":
        return Action.NEGATIVE
    if event_type == "purchase":
        return Action.PURCHASE
    if event_type == "rating":
        if value is None:
            return Action.INTERACT
        return Action.POSITIVE if value >= POSITIVE_RATING else Action.NEGATIVE
    raise ValueError(f"event type {event_type!r} has no action token")


def feedback_label(actions: np.ndarray) -> np.ndarray:
    """Ranking label per item event: 1 positive, 0 negative, -1 unknown (ignored by the loss)."""
    label = np.full(actions.shape, -1, dtype=np.int8)
    label[(actions == Action.POSITIVE) | (actions == Action.PURCHASE)] = 1
    label[actions == Action.NEGATIVE] = 0
    return label


@dataclass(frozen=True)
class History:
    """One user's recent item events, oldest first (the worker's table value, decoded)."""

    items: np.ndarray  # int32 [n], item vocabulary indices 1..num_items (0 = padding, never stored)
    actions: np.ndarray  # int8 [n], Action
    ts_ms: np.ndarray  # int64 [n], epoch milliseconds

    def __post_init__(self) -> None:
        if not (len(self.items) == len(self.actions) == len(self.ts_ms)):
            raise ValueError("items, actions and ts_ms must have the same length")

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def empty() -> History:
        return History(np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int64))

    def last(self, n: int) -> History:
        return History(self.items[-n:], self.actions[-n:], self.ts_ms[-n:]) if n < len(self) else self


@dataclass
class TokenBatch:
    """Model input for B users, T tokens each (numpy, converted to tensors by the model)."""

    kind: np.ndarray  # int64 [B, T]
    item: np.ndarray  # int64 [B, T] item index at item tokens, else 0
    action: np.ndarray  # int64 [B, T] action at action tokens, else 0
    ts: np.ndarray  # int64 [B, T] seconds (relative times are what the model sees)
    query: np.ndarray  # int64 [B, T] row of `query_vecs` at query tokens, else -1
    query_vecs: np.ndarray | None = None  # float32 [Q, Dq]
    item_pos: list[np.ndarray] = field(default_factory=list)  # per row: position of each event's item token
    query_pos: list[np.ndarray] = field(default_factory=list)  # per row: position of each event's query, or -1


def event_layout(n: int, has_query: np.ndarray | None, interleave_actions: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Token offsets of n events: (item offsets [n], query offsets [n] (−1: none), total tokens).

    Event j is [query_j] item_j [action_j]: a search (if any) comes right before the item it led to.
    """
    per = 2 if interleave_actions else 1
    q = np.zeros(n, np.int64) if has_query is None else has_query.astype(np.int64)
    width = q + per
    start = np.concatenate([[0], np.cumsum(width)[:-1]]) if n else np.zeros(0, np.int64)
    item_off = start + q
    query_off = np.where(q > 0, start, -1)
    return item_off, query_off, int(width.sum())


def tokenize(
    items: list[np.ndarray],
    actions: list[np.ndarray],
    ts_s: list[np.ndarray],
    interleave_actions: bool,
    length: int | None = None,
    queries: list[tuple[int, int] | None] | None = None,
    query_vecs: np.ndarray | None = None,
    event_queries: list[np.ndarray] | None = None,
) -> TokenBatch:
    """Left-pad B users' event sequences into one token batch.

    `event_queries[b][j]` (row of `query_vecs`, or −1) puts a query token before user b's event j (a past
    search). `queries[b] = (row, ts_s)` appends one query token after the events: the request's query.
    """
    B = len(items)
    layouts = []
    for b in range(B):
        eq = None if event_queries is None else np.asarray(event_queries[b])
        item_off, query_off, width = event_layout(len(items[b]), None if eq is None else eq >= 0,
                                                  interleave_actions)
        trailing = 1 if (queries is not None and queries[b] is not None) else 0
        layouts.append((item_off, query_off, width, trailing, eq))
    T = max([length or 0, 1] + [w + t for _, _, w, t, _ in layouts])
    kind = np.zeros((B, T), np.int64)
    item = np.zeros((B, T), np.int64)
    action = np.zeros((B, T), np.int64)
    ts = np.zeros((B, T), np.int64)
    query = np.full((B, T), -1, np.int64)
    item_pos, query_pos = [], []
    for b, (item_off, query_off, width, trailing, eq) in enumerate(layouts):
        n = len(items[b])
        start = T - trailing - width
        ip = start + item_off
        kind[b, ip] = Kind.ITEM
        item[b, ip] = items[b]
        ts[b, ip] = ts_s[b]
        if interleave_actions:
            kind[b, ip + 1] = Kind.ACTION
            action[b, ip + 1] = actions[b]
            ts[b, ip + 1] = ts_s[b]
        has_q = query_off >= 0
        qp = np.where(has_q, start + query_off, -1)
        if has_q.any():
            assert eq is not None
            kind[b, qp[has_q]] = Kind.QUERY
            query[b, qp[has_q]] = eq[has_q]
            ts[b, qp[has_q]] = ts_s[b][has_q]
        item_pos.append(ip)
        query_pos.append(qp)
        # Padding takes the first real timestamp so relative times stay small.
        if n:
            ts[b, :start] = ts_s[b][0]
        if trailing:
            assert queries is not None
            row, q_ts = queries[b]  # type: ignore[misc]
            kind[b, T - 1] = Kind.QUERY
            query[b, T - 1] = row
            ts[b, T - 1] = q_ts
            if not n:
                ts[b, : T - 1] = q_ts
    return TokenBatch(kind, item, action, ts, query, query_vecs, item_pos, query_pos)
