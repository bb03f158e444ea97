"""Losses and the adaptive weighter on hand-made inputs (candidate slots and the enhancer: test_candidates.py)."""

from __future__ import annotations

import math

import pytest
import torch
from genrec.model.config import WeighterConfig
from genrec.model.losses import full_softmax_nce, info_nce, log_sampling_prob, ranking_loss, sample_negatives
from genrec.model.weighting import AdaptiveWeighter


def test_weighter_moves_weight_toward_the_slower_descending_loss() -> None:
    w = AdaptiveWeighter(WeighterConfig(mode="adaptive", every=1, ema=0.0))
    for t in range(1, 30):
        fast = 2.0 * 0.8**t  # task 0 falls fast
        slow = 1.0 * 0.99**t  # task 1 barely moves
        w.observe([fast, slow])
        if w.due():
            w.update([1.0, 1.0])  # equal gradient norms: only the training rates differ
    assert w.weights[1] > w.weights[0]
    assert math.isclose(sum(w.weights), 2.0, rel_tol=1e-9)


def test_weighter_balances_gradient_norms_when_rates_are_equal() -> None:
    w = AdaptiveWeighter(WeighterConfig(mode="adaptive", every=1, ema=0.0, step=0.5, min_weight=0.01,
                                        grad_reference="absolute"))
    for t in range(1, 60):
        w.observe([0.9**t, 0.9**t])
        w.update([4.0, 1.0])  # task 0 has 4x the gradient: its weight must fall toward 1/4 of task 1's
    assert w.weights[0] < w.weights[1]
    assert math.isclose(w.weights[0] * 4.0, w.weights[1] * 1.0, rel_tol=0.05)


def test_weighter_relative_to_initial_norms_ignores_a_constant_scale_gap() -> None:
    w = AdaptiveWeighter(WeighterConfig(mode="adaptive", every=1, ema=0.0, step=0.5))
    for t in range(1, 60):
        w.observe([0.9**t, 0.9**t])
        w.update([4.0 * 0.95**t, 0.95**t])  # 4x the gradient throughout, equal rates: nothing to correct
    assert w.weights == pytest.approx([1.0, 1.0], rel=1e-6)
    for t in range(60, 120):
        w.observe([0.9**60, 0.9**t])  # task 0 stalls from here on
        w.update([4.0 * 0.95**60, 0.95**60])
    assert w.weights[0] > w.weights[1]


def test_static_weighter_never_moves() -> None:
    w = AdaptiveWeighter(WeighterConfig(mode="static", static_weights=(1.0, 0.5), every=1))
    w.observe([1.0, 1.0])
    w.observe([0.1, 1.0])
    assert not w.due()
    assert w.update([1.0, 9.0]) == [1.0, 0.5]


def test_log_q_correction_is_exact_for_the_mixture() -> None:
    targets = torch.tensor([1, 1, 1, 2])  # item 1 is 3/4 of the batch
    lq = log_sampling_prob(torch.tensor([1, 2, 3]), targets, num_items=10, n_uniform=5, n_inbatch=8)
    expected = torch.log(torch.tensor([5 / 10 + 8 * 3 / 4, 5 / 10 + 8 * 1 / 4, 5 / 10]))
    assert torch.allclose(lq, expected)


def test_info_nce_masks_accidental_hits_and_prefers_the_positive() -> None:
    torch.manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(11, 8), dim=-1)
    pos = torch.tensor([3, 4])
    user = table[pos]  # user states equal to their positives: a perfect model
    ids, lq = sample_negatives(pos, 10, 20, 4)
    loss_good, logits = info_nce(user, table[pos], torch.zeros(2), pos, table[ids], lq, ids, tau=0.05)
    hit = ids[None, :] == pos[:, None]
    assert torch.isinf(logits[:, 1:][hit]).all()  # the positive never counts as its own negative
    loss_bad, _ = info_nce(-user, table[pos], torch.zeros(2), pos, table[ids], lq, ids, tau=0.05)
    assert loss_good < loss_bad


def test_full_softmax_is_info_nce_over_every_item_without_correction() -> None:
    torch.manual_seed(1)
    table = torch.nn.functional.normalize(torch.randn(11, 8), dim=-1)  # row 0: padding
    user = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    pos = torch.tensor([3, 10, 1])
    everything = torch.arange(1, 11)
    bias = 0.1 * torch.randn(3, 10)
    full, logits = full_softmax_nce(user, table, pos, tau=0.1, bias=bias)
    sampled, _ = info_nce(user, table[pos], torch.zeros(3), pos, table[everything], torch.zeros(10), everything,
                          tau=0.1, pos_bias=bias.gather(1, (pos - 1)[:, None])[:, 0], neg_bias=bias)
    assert torch.allclose(full, sampled, atol=1e-6)
    by_hand = -torch.log_softmax((user @ table[1:].T + bias) / 0.1, dim=1)[torch.arange(3), pos - 1].mean()
    assert torch.allclose(full, by_hand, atol=1e-6)
    assert logits.shape == (3, 10)  # padding is never a candidate
    # An extra (hard) negative only ever enlarges the denominator; −inf where absent changes nothing.
    extra = torch.tensor([[5.0], [float("-inf")], [float("-inf")]])
    with_extra, _ = full_softmax_nce(user, table, pos, tau=0.1, extra_logits=extra, bias=bias)
    assert with_extra > full


def test_ranking_loss_pairs_stay_within_a_user() -> None:
    logits = torch.tensor([[2.0, -2.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1, 0, -1], [1, -1, -1]])  # user 2 has no negative: no BPR pair for it
    loss = ranking_loss(logits, labels, bpr_weight=1.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -2.0, 0.0]), torch.tensor([1.0, 0.0, 1.0])
    )
    bpr = -torch.nn.functional.logsigmoid(torch.tensor(4.0))
    assert torch.isclose(loss, bce + bpr)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, 2] == 0  # unlabelled position gets no gradient
