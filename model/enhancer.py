"""Ranking-driven enhancer (UniGRF): the ranker's judgement of the retriever's top-K' feeds back into
retrieval. Items retrieved high but scored low by the ranker become hard negatives; items the ranker
scores at or above α become extra soft positives."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class EnhancerTargets:
    hard_negatives: Tensor  # [M, m] item ids, 0 where fewer than m qualify
    soft_positives: Tensor  # [M, K'] item ids, 0 where not a soft positive
    soft_weights: Tensor  # [M, K'] ranking probability above α (0 elsewhere)


def select_targets(cand_ids: Tensor, retrieval_scores: Tensor, rank_probs: Tensor, positives: Tensor, m: int,
                   hard_max_prob: float, alpha: float) -> EnhancerTargets:
    """Pick hard negatives and soft positives among each row's retrieved candidates.

    cand_ids, retrieval_scores, rank_probs: [M, K'] (candidates of one retrieval position per row);
    positives [M]: the true next item, never chosen as either.
    Hard negatives: candidates with ranking probability < hard_max_prob, the m lowest first (ties: the one
    the retriever scored higher first — it is the more harmful mistake).
    Soft positives: candidates with ranking probability ≥ α.
    """
    eligible = (cand_ids != positives[:, None]) & (cand_ids > 0)
    # Sort key: rank prob ascending, then retrieval score descending (a tiny tie-breaker term).
    key = rank_probs.double() - 1e-9 * torch.tanh(retrieval_scores.double())
    key = key.masked_fill(~(eligible & (rank_probs < hard_max_prob)), float("inf"))
    m_eff = min(m, cand_ids.shape[1])
    order = key.argsort(dim=1, stable=True)[:, :m_eff]
    chosen_key = key.gather(1, order)
    hard = cand_ids.gather(1, order).masked_fill(torch.isinf(chosen_key), 0)
    if m_eff < m:
        hard = torch.cat([hard, hard.new_zeros(hard.shape[0], m - m_eff)], dim=1)
    soft_mask = eligible & (rank_probs >= alpha)
    return EnhancerTargets(
        hard_negatives=hard,
        soft_positives=cand_ids.masked_fill(~soft_mask, 0),
        soft_weights=torch.where(soft_mask, rank_probs, torch.zeros_like(rank_probs)),
    )
