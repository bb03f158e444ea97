"""Structural guarantees of the backbone: causality, candidate isolation, time-shift invariance."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from genrec.model.generative import GenerativeRecommender
from genrec.model.tokens import Kind

MakeBatch = Callable[..., dict[str, torch.Tensor]]


def test_changing_a_future_token_never_changes_an_earlier_output(
    tiny_model: GenerativeRecommender, make_batch: MakeBatch
) -> None:
    batch = make_batch(tiny_model, [12, 7])
    with torch.no_grad():
        h1, _ = tiny_model.encode(batch)
        T = batch["kind"].shape[1]
        cut = T - 5  # change everything at and after this position
        changed = {k: v.clone() for k, v in batch.items()}
        item_pos = changed["kind"][:, cut:] == Kind.ITEM
        changed["item"][:, cut:] = torch.where(item_pos, (changed["item"][:, cut:] % 50) + 1, 0)
        changed["ts"][:, cut:] += 86_400 * 30
        h2, _ = tiny_model.encode(changed)
    assert torch.equal(h1[:, :cut], h2[:, :cut])
    assert not torch.allclose(h1[:, cut:], h2[:, cut:])  # the change is visible where it may be


def test_changing_one_candidate_never_changes_another_candidates_score(
    tiny_model: GenerativeRecommender, make_batch: MakeBatch
) -> None:
    batch = make_batch(tiny_model, [10, 4])
    cands = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    ts = torch.full((2, 5), 1_700_000_100)
    with torch.no_grad():
        _, cache = tiny_model.encode(batch)
        s1 = tiny_model.score_candidates(cands, ts, cache)
        other = cands.clone()
        other[:, 2] = torch.tensor([40, 41])
        s2 = tiny_model.score_candidates(other, ts, cache)
    keep = [0, 1, 3, 4]
    assert torch.equal(s1[:, keep], s2[:, keep])
    assert not torch.equal(s1[:, 2], s2[:, 2])


def test_candidate_scores_match_appending_the_candidate_to_the_sequence(
    tiny_model: GenerativeRecommender, make_batch: MakeBatch
) -> None:
    """The cached-history path equals a full causal forward with the candidate as the next token."""
    batch = make_batch(tiny_model, [6])
    cand = torch.tensor([[17]])
    t = torch.tensor([[int(batch["ts"].max()) + 60]])
    with torch.no_grad():
        _, cache = tiny_model.encode(batch)
        cached = tiny_model.score_candidates(cand, t, cache)
        full = {k: v.clone() for k, v in batch.items()}
        full["kind"] = torch.cat([full["kind"], torch.tensor([[Kind.ITEM]])], 1)
        full["item"] = torch.cat([full["item"], cand], 1)
        full["action"] = torch.cat([full["action"], torch.tensor([[0]])], 1)
        full["ts"] = torch.cat([full["ts"], t], 1)
        full["query"] = torch.cat([full["query"], torch.tensor([[-1]])], 1)
        h, _ = tiny_model.encode(full)
        # the reference time differs (max over a longer sequence) — relative times make it irrelevant
        direct = tiny_model.rank_logits(h[:, -1])
    assert torch.allclose(cached[:, 0], direct, atol=1e-5)


def test_shifting_every_timestamp_leaves_outputs_unchanged(
    tiny_model: GenerativeRecommender, make_batch: MakeBatch
) -> None:
    batch = make_batch(tiny_model, [15, 9, 3])
    cands = torch.tensor([[3, 4], [5, 6], [7, 8]])
    ts = batch["ts"].max(dim=1).values[:, None] + torch.tensor([[10, 5000]])
    shift = 123_456_789
    with torch.no_grad():
        h1, c1 = tiny_model.encode(batch)
        r1 = tiny_model.score_candidates(cands, ts, c1)
        shifted = dict(batch, ts=batch["ts"] + shift)
        h2, c2 = tiny_model.encode(shifted)
        r2 = tiny_model.score_candidates(cands, ts + shift, c2)
    assert torch.equal(h1, h2)
    assert torch.equal(r1, r2)


def test_time_rotary_makes_elapsed_time_matter(tiny_model: GenerativeRecommender, make_batch: MakeBatch) -> None:
    batch = make_batch(tiny_model, [8])
    stretched = dict(batch, ts=batch["ts"] * 2 - batch["ts"].min())  # same order, different gaps
    with torch.no_grad():
        h1, _ = tiny_model.encode(batch)
        h2, _ = tiny_model.encode(stretched)
    assert not torch.allclose(h1[:, -1], h2[:, -1])


def _score_each_by_appending(model: GenerativeRecommender, batch: dict[str, torch.Tensor], cands: torch.Tensor,
                             t: torch.Tensor) -> torch.Tensor:
    """Reference: each candidate scored by a full causal forward with it as the sequence's next token."""
    out = torch.zeros(cands.shape)
    for b in range(cands.shape[0]):
        real = batch["kind"][b] != Kind.PAD
        for c in range(cands.shape[1]):
            row = {k: v[b : b + 1, real].clone() for k, v in batch.items()}  # the row's real tokens only
            row["kind"] = torch.cat([row["kind"], torch.tensor([[Kind.ITEM]])], 1)
            row["item"] = torch.cat([row["item"], cands[b : b + 1, c : c + 1]], 1)
            row["action"] = torch.cat([row["action"], torch.tensor([[0]])], 1)
            row["ts"] = torch.cat([row["ts"], t[b : b + 1, c : c + 1]], 1)
            row["query"] = torch.cat([row["query"], torch.tensor([[-1]])], 1)
            h, _ = model.encode(row)
            out[b, c] = model.rank_logits(h[:, -1])[0]
    return out


@pytest.mark.parametrize("grad", [False, True], ids=["serving-fused", "training-reference"])
@pytest.mark.parametrize("same_time", [True, False], ids=["one-time-per-row", "times-per-candidate"])
def test_every_candidate_path_matches_appending_it(
    tiny_model: GenerativeRecommender, make_batch: MakeBatch, grad: bool, same_time: bool
) -> None:
    """Fused CPU kernel (no grad) and reference (grad), one rotation per row or one per candidate: all equal
    a full forward with the candidate appended, for rows of different lengths."""
    batch = make_batch(tiny_model, [7, 3, 12], seed=4)
    cands = torch.tensor([[5, 9, 11, 2], [1, 30, 7, 7], [44, 3, 8, 20]])
    last = batch["ts"].max(dim=1).values[:, None]
    t = last + (torch.full((1, 4), 90) if same_time else torch.tensor([[10, 3_600, 86_400, 5]]))
    with torch.no_grad():
        ref = _score_each_by_appending(tiny_model, batch, cands, t)
    with torch.set_grad_enabled(grad):
        tiny_model.train(grad)  # dropout is 0: train() only makes parameters require grad paths
        for p in tiny_model.parameters():
            p.requires_grad_(grad)
        _, cache = tiny_model.encode(batch)
        got = tiny_model.score_candidates(cands, t, cache)
    tiny_model.eval()
    assert torch.allclose(got.detach(), ref, atol=1e-5), (got, ref)


def test_fused_candidate_attention_equals_the_reference_with_an_empty_history_row() -> None:
    from genrec.model.backbone import LayerCache, additive_mask, candidate_attention, candidate_attention_fused

    g = torch.Generator().manual_seed(0)
    B, H, C, T, d = 3, 2, 5, 7, 8
    q, k, v = (torch.randn(B, H, C, d, generator=g) for _ in range(3))
    cache = LayerCache(torch.randn(B, H, T, d, generator=g), torch.randn(B, H, T, d, generator=g))
    valid = torch.rand(B, T, generator=g) > 0.4
    valid[1] = False  # a row whose candidates see no history: they attend to themselves only
    bias = additive_mask(valid[:, None, None, :])
    with torch.no_grad():
        ref = candidate_attention(q, k, v, cache, bias, d**-0.5)
        fused = candidate_attention_fused(q, k, v, cache, bias, d**-0.5)
    assert torch.allclose(fused, ref, atol=1e-6)
    assert torch.allclose(fused[1], v[1], atol=1e-6)


def test_the_ranker_reads_the_retrieval_score_alike_in_training_and_serving(
    tiny_cfg: object, make_batch: MakeBatch
) -> None:
    """rank_retrieval_feature and rank_item_bias: the teacher-forced logit of an item token (training) equals the
    logit of the same item scored as a candidate after the history before it (serving), and β·s(u, i) + b_i is
    really in it."""
    from genrec.model.config import ModelConfig

    assert isinstance(tiny_cfg, ModelConfig)
    torch.manual_seed(0)
    model = GenerativeRecommender(tiny_cfg.model_copy(update={"rank_retrieval_feature": True,
                                                             "rank_item_bias": True})).eval()
    assert model.rank_retrieval_gain is not None and model.rank_bias is not None
    with torch.no_grad():
        model.rank_retrieval_gain.fill_(0.7)
        model.rank_bias.weight.normal_()
    full = make_batch(model, [7])
    item_pos = (full["kind"][0] == Kind.ITEM).nonzero().flatten()
    p = int(item_pos[-1])  # the last item token: its history is every token before it
    with torch.no_grad():
        h, _ = model.encode(full)
        aff = model.teacher_forced_affinity(h, full)
        teacher = model.rank_logits(h[:, p], aff[:, p], full["item"][:, p])
        prefix = {k: v[:, :p] for k, v in full.items()}
        hp, cache = model.encode(prefix)
        cand, ts = full["item"][:, p : p + 1], full["ts"][:, p : p + 1]
        served = model.score_candidates(cand, ts, cache, user=hp[:, -1])
        plain = model.rank_head(h[:, p]).squeeze(-1)
        with pytest.raises(ValueError, match="affinity"):
            model.score_candidates(cand, ts, cache)
    assert torch.allclose(served[:, 0], teacher, atol=1e-5)
    expected_aff = (torch.nn.functional.normalize(hp[:, -1], dim=-1)
                    * torch.nn.functional.normalize(model.item_vectors(cand[:, 0]), dim=-1)).sum(-1) / tiny_cfg.tau
    bias = model.rank_bias.weight[cand[:, 0], 0]
    assert torch.allclose(teacher - plain, 0.7 * expected_aff + bias, atol=1e-5)
    assert float(aff[0, 0]) == 0.0  # nothing precedes the first token
