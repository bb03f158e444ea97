"""Trivial baselines evaluated with the same protocol: most popular, and most popular recently."""

from __future__ import annotations

import numpy as np
from genrec.model.data import SequenceDataset, eval_users, split_lengths
from genrec.model.metrics import ranking_metrics


def _counts(ds: SequenceDataset, users: np.ndarray, lengths: np.ndarray, recent_share: float | None) -> np.ndarray:
    counts = np.zeros(ds.num_items + 1, np.float64)
    if recent_share is None:
        for u in users:
            np.add.at(counts, ds.items[u][: lengths[u]], 1.0)
        return counts
    if ds.has_time:
        # The latest `recent_share` of the visible timeline (global time).
        all_ts = np.concatenate([ds.ts[u][: lengths[u]] for u in users])
        cutoff = np.quantile(all_ts, 1.0 - recent_share)
        for u in users:
            n = lengths[u]
            keep = ds.ts[u][:n] >= cutoff
            np.add.at(counts, ds.items[u][:n][keep], 1.0)
    else:
        # Order-only data: each user's latest `recent_share` of events.
        for u in users:
            n = int(lengths[u])
            start = n - max(1, round(n * recent_share))
            np.add.at(counts, ds.items[u][start:n], 1.0)
    return counts


def popularity_scores(ds: SequenceDataset, split: str, recent_share: float | None = None) -> np.ndarray:
    """One score vector [N+1] for everyone: counts over the events visible before the split's targets.

    Ties are broken by a fixed tiny per-item offset so that ranks are well defined and reproducible.
    """
    users = eval_users(ds)
    counts = _counts(ds, users, split_lengths(ds, split), recent_share)
    scores = counts - 1e-6 * np.arange(ds.num_items + 1) / (ds.num_items + 1)
    scores[0] = -np.inf
    return scores


def evaluate_popularity(ds: SequenceDataset, split: str = "test", recent_share: float | None = None,
                        exclude_seen: bool = True) -> dict[str, float]:
    """The same protocol as `model.evaluate.evaluate` (seen items out of each user's ranking by default)."""
    users = eval_users(ds)
    lengths = split_lengths(ds, split)
    targets = np.array([ds.items[u][lengths[u]] for u in users], np.int64)
    scores = popularity_scores(ds, split, recent_share)
    # Same score row for every user: the rank of a target is the number of items scored above it, less the
    # user's own seen items among those.
    sorted_scores = np.sort(scores)
    ranks = len(scores) - np.searchsorted(sorted_scores, scores[targets], side="right")
    if exclude_seen:
        for i, u in enumerate(users):
            seen = np.unique(ds.items[u][: lengths[u]])
            seen = seen[seen != targets[i]]
            ranks[i] -= int((scores[seen] > scores[targets[i]]).sum())
    out = ranking_metrics(ranks)
    out["users"] = float(len(users))
    return out
