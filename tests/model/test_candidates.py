"""Candidate slots (model/candidates.py): the ranker's training contexts are built the way serving asks, and the
enhancer's distillation moves retrieval only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genrec.model.candidates import (
    build_candidates,
    candidate_ranking_loss,
    distillation_loss,
    exclude_prefix,
    sample_positions,
)


def test_candidates_hold_the_target_first_then_the_top_then_others_from_the_top_k() -> None:
    N = 30
    scores = torch.full((2, N + 1), float("-inf"))
    scores[:, 1:] = torch.arange(N, 0, -1, dtype=torch.float32)  # item 1 best, item 30 worst
    targets = torch.tensor([3, 29])  # inside / outside the top-10
    cs = build_candidates(scores, targets, k_prime=10, top=2, sampled=3, generator=torch.Generator().manual_seed(0))
    assert cs.items.shape == (2, 6)
    assert cs.items[:, 0].tolist() == [3, 29]
    assert cs.labels[:, 0].tolist() == [1.0, 1.0] and float(cs.labels[:, 1:].sum()) == 0.0
    assert cs.in_top.tolist() == [True, False]
    # the two highest-retrieved non-targets come next
    assert cs.items[0, 1:3].tolist() == [1, 2] and cs.items[1, 1:3].tolist() == [1, 2]
    # the sampled ones come from the rest of the top-10 only, distinct, never the target
    for row, t in zip(cs.items.tolist(), targets.tolist(), strict=True):
        rest = row[3:]
        assert len(set(rest)) == 3 and all(3 <= i <= 10 and i != t for i in rest), row


def test_excluded_items_never_become_candidates() -> None:
    N = 12
    scores = torch.zeros((1, N + 1))
    scores[0, 1:] = torch.arange(N, 0, -1, dtype=torch.float32)
    prefix_items = torch.tensor([[1, 0, 2, 0, 5, 0]])  # item tokens at even positions, action tokens 0
    exclude_prefix(scores, prefix_items, prefix_len=torch.tensor([3]), targets=torch.tensor([2]))
    # items 1 (seen) is out; 2 is the target and stays; 5 comes after the context and stays
    assert torch.isinf(scores[0, 1]) and torch.isfinite(scores[0, 2]) and torch.isfinite(scores[0, 5])
    cs = build_candidates(scores, torch.tensor([2]), k_prime=12, top=11, sampled=0)
    assert 1 not in cs.items.tolist()[0]


def test_positions_are_distinct_retrieval_positions() -> None:
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, [1, 3, 5]] = True
    mask[2, [7]] = True
    rows, pos = sample_positions(mask, 2, torch.Generator().manual_seed(1))
    # row 1 has no retrieval position; every row gets min(2, fewest positions) = 1
    assert set(rows.tolist()) == {0, 2}
    assert all(bool(mask[r, p]) for r, p in zip(rows.tolist(), pos.tolist(), strict=True))


def test_hybrid_loss_prefers_the_target_and_ignores_padding() -> None:
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    good = candidate_ranking_loss(torch.tensor([[3.0, -1.0, -1.0, 50.0]]), labels, valid, 1.0)
    bad = candidate_ranking_loss(torch.tensor([[-1.0, 3.0, -1.0, -50.0]]), labels, valid, 1.0)
    assert float(good) < float(bad)
    # the padded column does not count, whatever its logit
    same = candidate_ranking_loss(torch.tensor([[3.0, -1.0, -1.0, -50.0]]), labels, valid, 1.0)
    assert float(same) == pytest.approx(float(good))


def test_distillation_is_zero_when_retrieval_agrees_and_trains_retrieval_only() -> None:
    valid = torch.ones(1, 3, dtype=torch.bool)
    rank = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    ret = rank.detach().clone().requires_grad_(True)
    assert float(distillation_loss(ret, rank, valid, 1.0)) == pytest.approx(0.0, abs=1e-6)
    ret2 = torch.tensor([[-1.0, 0.0, 2.0]], requires_grad=True)
    loss = distillation_loss(ret2, rank, valid, 1.0)
    loss.backward()
    assert float(loss) > 0.1
    assert ret2.grad is not None and float(ret2.grad.abs().sum()) > 0
    assert rank.grad is None  # the ranker is the teacher: never bent toward retrieval
    # a step along −grad raises the retrieval probability of the ranker's favourite
    with torch.no_grad():
        moved = ret2 - 1.0 * ret2.grad
    assert torch.softmax(moved, 1)[0, 0] > torch.softmax(ret2.detach(), 1)[0, 0]


def test_paired_interval_excludes_zero_only_for_a_consistent_difference() -> None:
    from genrec.model.stats import paired_interval

    a = [0.10, 0.11, 0.12, 0.13]
    consistent = paired_interval(a, [x - 0.01 for x in a])
    assert consistent["mean_diff"] == pytest.approx(0.01)
    assert consistent["ci95"][0] > 0 and consistent["verdict"] == "higher"
    noisy = paired_interval(a, [0.12, 0.09, 0.14, 0.11])
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1] and noisy["verdict"] == "tie"
    # the t interval for n = 4: mean ± t(0.975, 3) · sd / 2, t = 3.182
    d = np.array([0.01, 0.02, 0.0, 0.01])
    out = paired_interval(list(d), [0.0] * 4)
    half = 3.1824463 * d.std(ddof=1) / 2
    assert out["ci95"][1] - out["mean_diff"] == pytest.approx(half, abs=1e-5)


def test_item_text_features_join_the_id_embeddings_for_recommendation() -> None:
    """TrainConfig.item_text: frozen item-text vectors become a buffer of the model (self-contained checkpoints) and
    move the item representation; the hashed encoder keeps the test light."""
    from genrec.model.config import TrainConfig
    from genrec.model.data import synthetic_dataset
    from genrec.model.search import item_text_vectors
    from genrec.model.train import fit_and_test

    ds = synthetic_dataset(n_users=40, n_items=30, events_per_user=12, seed=2)
    vecs = item_text_vectors(ds, None, "hashed")
    assert vecs.shape[0] == ds.num_items + 1 and not vecs[0].any() and np.abs(vecs[1:]).sum(1).min() > 0
    tcfg = TrainConfig(epochs=1, batch_size=16, negatives="full", item_text="hashed")
    res, test = fit_and_test(ds, tcfg, progress=False, item_text_vecs=vecs, d_model=16, n_layers=1, n_heads=2,
                             max_events=12)
    model = res.model
    assert model.cfg.text_dim == vecs.shape[1] and model.text_proj is not None
    assert torch.equal(model.item_text.cpu(), torch.as_tensor(vecs))
    with torch.no_grad():
        ids = torch.arange(1, 5)
        assert not torch.allclose(model.item_vectors(ids), model.item_emb(ids))
    assert np.isfinite(test["served_ndcg@10"])
