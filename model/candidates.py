"""Candidate slots: the ranker trained on what it will be asked to rank, and the enhancer that feeds its judgement
back into retrieval (UniGRF's ranking-driven enhancer; SynerGen's hybrid ranking loss).

At serving time the ranker scores the retrieval top-K' appended after the history, each candidate attending to
the history and to itself (model/serving.py). Training asks the same question at a few retrieval positions t per
user (teacher forcing: the prefix up to t is the history):

    scores     s_t = <û_t, ê_i>/τ over every item, the prefix's items left out (as served), no gradient
    candidates C_t = the target i*_{t+1} + the `top` highest-retrieved other items + `sampled` drawn uniformly from
                     the rest of the top-K'                                                      [M, C]
    labels     y_c = 1[c = i*_{t+1}]
    ranking    L_rank = mean_c BCE(r_c, y_c) + λ_list · CE(softmax_c r_c, i*)      (pointwise + listwise)
    enhancer   L_distill = KL(softmax(sg(r)/T) ‖ softmax(s/τ)) over C_t, gradient into retrieval only

r_c is the served ranking logit (model/generative.py `rank_logits`), read at the candidate's slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class CandidateSet:
    items: Tensor  # [M, C] item ids; column 0 is the target
    labels: Tensor  # [M, C] float: 1 at the target
    in_top: Tensor  # [M] bool: the target was among the retrieval top-K' (serving would have asked about it)


def sample_positions(ret_mask: Tensor, per_user: int, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Up to `per_user` distinct retrieval positions per row of ret_mask [B, T] → (rows [M], positions [M])."""
    has = ret_mask.any(dim=1)
    rows = torch.arange(ret_mask.shape[0], device=ret_mask.device)[has]
    if not len(rows):
        return rows, rows
    prob = ret_mask[has].float().cpu()
    k = int(min(per_user, int(prob.sum(1).min())))
    pos = torch.multinomial(prob, k, replacement=False, generator=generator).to(ret_mask.device)  # [R, k]
    return rows.repeat_interleave(k), pos.reshape(-1)


def exclude_prefix(scores: Tensor, prefix_items: Tensor, prefix_len: Tensor, targets: Tensor) -> Tensor:
    """Leave each context's already-seen items out of its scores [M, N+1] (in place), the target kept in:
    prefix_items [M, T] item ids at token positions (0 elsewhere), prefix_len [M] tokens that count as seen."""
    T = prefix_items.shape[1]
    seen = prefix_items.masked_fill(torch.arange(T, device=scores.device)[None, :] >= prefix_len[:, None], 0)
    seen = seen.masked_fill(seen == targets[:, None], 0)
    scores.scatter_(1, seen, float("-inf"))
    scores[:, 0] = float("-inf")
    return scores


def build_candidates(scores: Tensor, targets: Tensor, k_prime: int, top: int, sampled: int,
                     generator: torch.Generator | None = None) -> CandidateSet:
    """Candidates of each context from its retrieval scores [M, N+1] (exclusions already −inf) and targets [M].

    The target is column 0; then the `top` highest-scored other items of the top-K', then `sampled` others drawn
    uniformly without replacement from the rest of the top-K'. C = 1 + top + sampled (fewer only when the
    catalogue is too small)."""
    M = scores.shape[0]
    kp = min(k_prime, scores.shape[1] - 1)
    top_s, top_i = scores.topk(kp, dim=1)  # [M, K']
    valid = torch.isfinite(top_s) & (top_i != targets[:, None])
    in_top = ((top_i == targets[:, None]) & torch.isfinite(top_s)).any(dim=1)
    # Every non-target retrieved item gets a key: the first `top` by rank, then a uniform random order.
    rand = torch.rand(top_i.shape, generator=generator, device="cpu").to(scores.device)
    rank = torch.arange(kp, device=scores.device, dtype=torch.float32)[None, :].expand(M, kp)
    key = torch.where(rank < top, rank - kp, rand)  # the top ones sort first
    key = key.masked_fill(~valid, float("inf"))
    n_neg = min(top + sampled, kp - 1) if kp > 1 else 0
    pick = key.argsort(dim=1)[:, :n_neg]
    neg = top_i.gather(1, pick).masked_fill(torch.isinf(key.gather(1, pick)), 0)
    items = torch.cat([targets[:, None], neg], dim=1)
    labels = torch.zeros(items.shape, device=scores.device)
    labels[:, 0] = 1.0
    return CandidateSet(items, labels, in_top)


def candidate_ranking_loss(logits: Tensor, labels: Tensor, valid: Tensor, listwise_weight: float) -> Tensor:
    """SynerGen's hybrid ranking loss within each context: pointwise BCE over the real candidates plus a listwise
    softmax cross-entropy of the positive (column 0). logits, labels, valid [M, C]."""
    bce = F.binary_cross_entropy_with_logits(logits[valid], labels[valid])
    if listwise_weight == 0.0:
        return bce
    lw = logits.masked_fill(~valid, float("-inf"))
    listwise = -(lw[:, 0] - torch.logsumexp(lw, dim=1)).mean()
    return bce + listwise_weight * listwise


def distillation_loss(retrieval_logits: Tensor, rank_logits: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """KL(p_rank ‖ p_ret) over each context's candidates, the ranker's side detached: the ranker's judgement
    moves retrieval, never the reverse. retrieval_logits (s/τ), rank_logits, valid [M, C]."""
    teacher = F.softmax((rank_logits.detach() / temperature).masked_fill(~valid, float("-inf")), dim=1)
    log_student = F.log_softmax(retrieval_logits.masked_fill(~valid, float("-inf")), dim=1)
    # 0 · log 0 is 0 here: invalid columns have teacher weight 0 and are masked out of the sum.
    kl = teacher * (torch.log(teacher.clamp_min(1e-12)) - log_student.masked_fill(~valid, 0.0))
    return kl.masked_fill(~valid, 0.0).sum(dim=1).mean()
