"""Training and evaluation batches from a SequenceDataset (numpy → TokenBatch + targets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from genrec.model.data import SequenceDataset
from genrec.model.search import SearchData
from genrec.model.tokens import TokenBatch, feedback_label, tokenize


@dataclass
class TrainBatch:
    tokens: TokenBatch
    ret_target: np.ndarray  # int64 [B, T]: next item at retrieval positions, 0 elsewhere
    target_ts: np.ndarray  # int64 [B, T]: that next event's timestamp (seconds)
    rank_label: np.ndarray  # int64 [B, T]: 1/0 at item positions with feedback, −1 elsewhere
    # Online learning: items shown to the user before the retrieval target and not clicked, [B, T, m] at
    # retrieval positions (0 = none); extra retrieval negatives and ranking negatives. None offline.
    impressions: np.ndarray | None = None


def window(n: int, max_events: int, rng: np.random.Generator | None) -> tuple[int, int]:
    """Event range [start, end) of a user's first n events that the model reads.

    With rng (training, random crop), users longer than L get a random window end so that every event is
    a target over the epochs; otherwise the last L events.
    """
    end = n
    if rng is not None and n > max_events:
        end = int(rng.integers(max_events, n + 1))
    return max(0, end - max_events), end


def make_train_batch(ds: SequenceDataset, users: np.ndarray, lengths: np.ndarray, max_events: int,
                     interleave: bool, rng: np.random.Generator | None, search: SearchData | None = None
                     ) -> TrainBatch:
    """Teacher-forced batch: each user's events [start, end) with end ≤ lengths[u].

    Retrieval targets: after event j (its action token, or its item token without actions) the next item;
    at a query token before event j, item j itself (personalized search).
    """
    items, actions, ts, eq = [], [], [], []
    for u in users:
        s, e = window(int(lengths[u]), max_events, rng)
        items.append(ds.items[u][s:e])
        actions.append(ds.actions[u][s:e])
        ts.append(ds.ts[u][s:e])
        if search is not None:
            eq.append(search.event_queries[u][s:e])
    tb = tokenize(items, actions, ts, interleave, event_queries=eq if search is not None else None,
                  query_vecs=search.vecs if search is not None else None)
    B, T = tb.kind.shape
    ret_target = np.zeros((B, T), np.int64)
    target_ts = np.zeros((B, T), np.int64)
    rank_label = np.full((B, T), -1, np.int64)
    for b in range(B):
        n = len(items[b])
        if n == 0:
            continue
        ip = tb.item_pos[b]
        read_pos = ip + (1 if interleave else 0)  # action token (or the item token itself)
        ret_target[b, read_pos[:-1]] = items[b][1:]
        target_ts[b, read_pos[:-1]] = ts[b][1:]
        qp = tb.query_pos[b]
        has_q = qp >= 0
        ret_target[b, qp[has_q]] = items[b][has_q]
        target_ts[b, qp[has_q]] = ts[b][has_q]
        rank_label[b, ip] = feedback_label(actions[b])
    return TrainBatch(tb, ret_target, target_ts, rank_label)


def make_eval_batch(ds: SequenceDataset, users: np.ndarray, lengths: np.ndarray, max_events: int,
                    interleave: bool, search: SearchData | None = None, with_target_query: bool = False
                    ) -> tuple[TokenBatch, np.ndarray, np.ndarray, np.ndarray]:
    """History = each user's first lengths[u] events (last L of them); target = event lengths[u].

    With `search`, past queries stay in the history; `with_target_query` appends the evaluation query built
    for the target item (a search request). Returns tokens, target items [B], target timestamps [B], target
    feedback labels [B] (−1 unknown).
    """
    items, actions, ts, eq, tq, tgt, tgt_ts, tgt_lab = [], [], [], [], [], [], [], []
    for u in users:
        n = int(lengths[u])
        s = max(0, n - max_events)
        items.append(ds.items[u][s:n])
        actions.append(ds.actions[u][s:n])
        ts.append(ds.ts[u][s:n])
        if search is not None:
            eq.append(search.event_queries[u][s:n])
            if with_target_query:
                row = int(search.target_queries[u][n])
                tq.append((row, int(ds.ts[u][n])) if row >= 0 else None)
        tgt.append(ds.items[u][n])
        tgt_ts.append(ds.ts[u][n])
        tgt_lab.append(feedback_label(ds.actions[u][n : n + 1])[0])
    vecs = None
    if search is not None:
        vecs = np.concatenate([search.vecs, search.target_vecs]) if with_target_query else search.vecs
        # target query rows index after the training queries
        tq = [None if q is None else (q[0] + len(search.vecs), q[1]) for q in tq]
    tb = tokenize(items, actions, ts, interleave, event_queries=eq if search is not None else None,
                  queries=tq if with_target_query else None, query_vecs=vecs)
    return tb, np.array(tgt, np.int64), np.array(tgt_ts, np.int64), np.array(tgt_lab, np.int64)
