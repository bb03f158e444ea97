"""Losses: sampled-softmax InfoNCE for retrieval; pointwise BCE + pairwise BPR for ranking.

References: InfoNCE (van den Oord et al., "Representation Learning with Contrastive Predictive Coding", arXiv
1807.03748) over uniform + in-batch negatives with the log-Q correction for the sampling bias (Yi et al.,
"Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019), or the exact
softmax over every item; BPR (Rendle et al., UAI 2009, arXiv 1205.2618). Retrieval and ranking losses summed over
one shared model, as in UniGRF ("Killing Two Birds with One Stone: Unifying Retrieval and Ranking with a Single
Generative Recommendation Model", SIGIR 2025, arXiv 2504.16454); the candidate-slot ranking loss (BCE + listwise,
SynerGen's hybrid loss) is in model/candidates.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_negatives(targets: Tensor, num_items: int, n_uniform: int, n_inbatch: int,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Shared negatives for a batch: uniform over items 1..N plus draws from the batch's targets.

    Returns (ids [n_u + n_b], log_q [n_u + n_b]) where q_j = n_u/N + n_b·c_j/M is the expected number of
    times item j is drawn (c_j: its count among the M targets) — the log-Q correction of the mixture.
    """
    dev = targets.device
    M = targets.numel()
    uni = torch.randint(1, num_items + 1, (n_uniform,), device=dev, generator=generator)
    pick = torch.randint(0, M, (n_inbatch,), device=dev, generator=generator) if M else targets[:0]
    inb = targets[pick] if n_inbatch and M else targets[:0]
    ids = torch.cat([uni, inb])
    log_q = log_sampling_prob(ids, targets, num_items, n_uniform, n_inbatch)
    return ids, log_q


def log_sampling_prob(ids: Tensor, targets: Tensor, num_items: int, n_uniform: int, n_inbatch: int) -> Tensor:
    counts = torch.bincount(targets, minlength=num_items + 1).to(torch.float32)
    M = max(targets.numel(), 1)
    q = n_uniform / num_items + n_inbatch * counts[ids] / M
    return torch.log(q.clamp_min(1e-12))


def info_nce(user: Tensor, pos_vec: Tensor, pos_log_q: Tensor, pos_ids: Tensor, neg_vec: Tensor, neg_log_q: Tensor,
             neg_ids: Tensor, tau: float, extra_logits: Tensor | None = None, pos_bias: Tensor | None = None,
             neg_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sampled-softmax InfoNCE with log-Q correction.

    user [M, D] and item vectors are L2-normalised. pos_vec [M, D]; neg_vec [K, D] shared by all rows.
    Accidental hits (a negative equal to the row's positive) are masked. extra_logits [M, E]: already
    scored extra negatives (e.g. the enhancer's hard negatives; −inf where absent), not corrected.
    pos_bias [M] / neg_bias [M, K]: extra similarity (cosine units) added before the temperature, e.g. the
    query–item text match at search positions.
    Returns (mean loss, logits [M, 1 + K (+ E)]) — the logits let callers add soft-label terms.
    """
    pos_sim = (user * pos_vec).sum(-1)
    neg_sim = user @ neg_vec.T
    if pos_bias is not None and neg_bias is not None:
        pos_sim, neg_sim = pos_sim + pos_bias, neg_sim + neg_bias
    pos = pos_sim[:, None] / tau - pos_log_q[:, None]  # [M, 1]
    neg = neg_sim / tau - neg_log_q[None, :]  # [M, K]
    neg = neg.masked_fill(neg_ids[None, :] == pos_ids[:, None], float("-inf"))
    parts = [pos, neg] if extra_logits is None else [pos, neg, extra_logits]
    logits = torch.cat(parts, dim=1)
    loss = -(logits[:, 0] - torch.logsumexp(logits, dim=1))
    return loss.mean(), logits


def full_softmax_nce(user: Tensor, items: Tensor, pos_ids: Tensor, tau: float, extra_logits: Tensor | None = None,
                     bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """InfoNCE with every item of the catalogue as a negative: the exact softmax cross-entropy, no sampling.

    user [M, D] and items [N + 1, D] are L2-normalised; row 0 of items is padding and never a candidate.
    pos_ids [M] in 1..N. bias [M, N]: extra similarity (cosine units) per item, as in `info_nce`.
    extra_logits [M, E]: already scaled extra negatives (−inf where absent), added to the denominator.
    Returns (mean loss, logits [M, N (+ E)]) with item j at column j − 1. One fused cross-entropy instead of
    the sampled path's concatenation and accidental-hit mask: on ML-1M (N = 3706) that mask alone is a
    [M, N] pass per step.
    """
    sim = user @ items[1:].T  # [M, N]
    if bias is not None:
        sim = sim + bias
    logits = sim / tau
    if extra_logits is not None:
        logits = torch.cat([logits, extra_logits], dim=1)
    return F.cross_entropy(logits, pos_ids - 1), logits


def ranking_loss(logits: Tensor, labels: Tensor, bpr_weight: float) -> Tensor:
    """Pointwise BCE on every labelled item position plus BPR between a user's positives and negatives.

    logits, labels (1/0; −1 = no label) [B, P], one row per user; BPR pairs never cross users.
    """
    mask = labels >= 0
    if not mask.any():
        return logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(logits[mask], labels[mask].float())
    if bpr_weight == 0.0:
        return bce
    pos = labels == 1
    neg = labels == 0
    pair = pos[:, :, None] & neg[:, None, :]  # [B, T, T]
    if not pair.any():
        return bce
    diff = logits[:, :, None] - logits[:, None, :]
    bpr = -F.logsigmoid(diff[pair]).mean()
    return bce + bpr_weight * bpr
