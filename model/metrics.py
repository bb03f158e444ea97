"""Evaluation metrics: full-ranking HR/NDCG/MRR from target ranks; AUC and GAUC from scores and labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target among all items: the number of items scored strictly higher.

    scores [B, N+1] (column 0 is padding and must already be −inf), targets [B].
    """
    t = scores[np.arange(len(targets)), targets]
    return (scores > t[:, None]).sum(axis=1)


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = (10, 50, 200)) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else 0.0
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean()) if len(ranks) else 0.0
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (probability a random positive outscores a random negative; ties count ½)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average ranks over ties (1-based).
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_of = np.empty_like(ranks)
    rank_of[order] = ranks
    return float((rank_of[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: per-user AUC weighted by the user's number of scored items, over users with both classes."""
    scores, labels, groups = np.asarray(scores), np.asarray(labels), np.asarray(groups)
    total, weight = 0.0, 0
    for g in np.unique(groups):
        m = groups == g
        a = auc(scores[m], labels[m])
        if not np.isnan(a):
            total += a * int(m.sum())
            weight += int(m.sum())
    return total / weight if weight else float("nan")
