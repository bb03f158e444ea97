"""A growing item vocabulary (model/vocab.py, issue 20 item 2): new rows at the end, known items untouched."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from genrec.model.checkpoint import load_checkpoint, save_checkpoint, version_sha256
from genrec.model.config import ModelConfig, TrainConfig
from genrec.model.generative import GenerativeRecommender
from genrec.model.online import OnlineConfig, OnlineLearner, make_example
from genrec.model.serving import Recommender
from genrec.model.tokens import Action, History
from genrec.model.vocab import (
    ITEM_TABLES,
    grow_items,
    grow_popularity,
    new_item_rows,
    new_item_text,
    tail_items,
)

N, M = 50, 7


def _model(**over: object) -> GenerativeRecommender:
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=N, d_model=16, n_layers=2, n_heads=2, dropout=0.0, max_events=20,
                      rank_task="next", rank_item_bias=True, rank_retrieval_feature=True, **over)  # type: ignore[arg-type]
    model = GenerativeRecommender(cfg, np.random.default_rng(0).normal(size=(N + 1, cfg.text_dim)).astype(np.float32)
                                  if cfg.text_dim else None).eval()
    with torch.no_grad():  # trained-looking biases and gains, so "unchanged" is not vacuous
        model.rank_bias.weight.normal_()  # type: ignore[union-attr]
        model.rank_bias.weight[0] = 0  # type: ignore[union-attr]
        model.rank_retrieval_gain.fill_(0.3)  # type: ignore[union-attr]
    return model


IDS = [f"i{k}" for k in range(N)]
NEW = [f"new{k}" for k in range(M)]


@pytest.mark.parametrize("text_dim", [0, 8])
def test_grown_tables_have_m_more_rows_and_keep_the_old_ones(text_dim: int) -> None:
    model = _model(text_dim=text_dim)
    grown, ids = grow_items(model, IDS, NEW, seed=1)
    assert ids == IDS + NEW and grown.cfg.num_items == N + M and model.cfg.num_items == N
    old, new = model.state_dict(), grown.state_dict()
    assert old.keys() == new.keys()
    for k, v in old.items():
        if k in ITEM_TABLES:
            assert new[k].shape == (N + M + 1, *v.shape[1:])
            assert torch.equal(new[k][: N + 1], v)
        else:
            assert torch.equal(new[k], v), k
    assert torch.equal(new["item_emb.weight"][0], torch.zeros(16))  # padding stays zero
    # A new item without text starts as a copy of a known item: its whole input vector (the text part too, the
    # new item having none) and its rank bias, within 10 % noise so that copies differ.
    start = new_item_rows(model, M, seed=1)
    assert start.sources is not None and ((start.sources >= 1) & (start.sources <= N)).all()
    rows = new["item_emb.weight"][N + 1 :]
    with torch.no_grad():
        copied = model.item_vectors(start.sources)
    assert ((rows - copied).norm(dim=1) < 0.25 * copied.norm(dim=1)).all()
    assert (F.cosine_similarity(rows, copied, dim=1) > 0.95).all()
    assert torch.linalg.matrix_rank(rows) == M
    assert torch.equal(new["rank_bias.weight"][N + 1 :], old["rank_bias.weight"][start.sources])


def test_new_items_copy_tail_items_only() -> None:
    """With training counts, the copied items are the tail (at most the median count): a copy of a hub item would
    sit next to it in every user's list before anyone clicked it."""
    model = _model()
    popularity = [100.0] * (N // 2) + [1.0] * (N - N // 2)  # items 1..25 popular, 26..50 the tail
    assert torch.equal(tail_items(popularity, N), torch.arange(N // 2 + 1, N + 1))
    assert torch.equal(tail_items(None, N), torch.arange(1, N + 1))  # no counts: any known item
    start = new_item_rows(model, 200, seed=3, popularity=popularity)
    assert start.sources is not None and (start.sources > N // 2).all()
    grown, _ = grow_items(model, IDS, [f"n{k}" for k in range(200)], seed=3, popularity=popularity)
    assert torch.equal(grown.item_emb.weight[N + 1 :], start.rows["item_emb.weight"])


def test_known_items_score_the_same_after_growth(make_batch: Callable[..., dict[str, torch.Tensor]]) -> None:
    model = _model(text_dim=8)
    grown, _ = grow_items(model, IDS, NEW, text=np.random.default_rng(2).normal(size=(M, 8)).astype(np.float32))
    batch = make_batch(model, [5, 12, 1])  # histories of known items only
    with torch.no_grad():
        h0, c0 = model.encode(batch)
        h1, c1 = grown.encode(batch)
        assert torch.allclose(h0, h1, atol=1e-6)
        s0 = model.retrieval_scores(h0[:, -1], None)
        s1 = grown.retrieval_scores(h1[:, -1], None)
        assert s1.shape == (3, N + M + 1)
        assert torch.allclose(s0, s1[:, : N + 1], atol=1e-6)
        cand = torch.arange(1, N + 1).expand(3, -1)
        ts = batch["ts"].max(1).values[:, None].expand_as(cand)
        r0 = model.score_candidates(cand, ts, c0, user=h0[:, -1])
        r1 = grown.score_candidates(cand, ts, c1, user=h1[:, -1])
        assert torch.allclose(r0, r1, atol=1e-5)


def test_a_new_item_with_text_starts_as_its_text() -> None:
    model = _model(text_dim=8)
    text = np.zeros((M, 8), np.float32)
    text[0] = 1.0  # only the first new item has metadata
    grown, _ = grow_items(model, IDS, NEW, text=text)
    emb = grown.item_emb.weight
    assert torch.equal(emb[N + 1], torch.zeros(16)) and emb[N + 2].abs().sum() > 0
    with torch.no_grad():
        v = grown.item_vectors(torch.tensor([N + 1]))[0]
        assert torch.allclose(v, grown.text_proj(torch.ones(8)))  # type: ignore[misc]
    start = new_item_rows(model, M, text)
    assert start.sources is not None and start.sources[0] == 0 and (start.sources[1:] >= 1).all()
    bias = grown.rank_bias.weight  # type: ignore[union-attr]
    assert torch.allclose(bias[N + 1], model.rank_bias.weight[1:].mean(0))  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="text vectors of shape"):
        new_item_rows(model, M, np.zeros((M, 3), np.float32))
    with pytest.raises(ValueError, match="without item text"):
        new_item_rows(_model(), M, text)


def test_new_ids_are_checked() -> None:
    model = _model()
    for bad, why in ((["i3"], "already"), (["x", "x"], "repeat"), (["", "y"], "not valid"), (["z" * 129], "not valid")):
        with pytest.raises(ValueError, match=why):
            grow_items(model, IDS, bad)


def test_grown_checkpoint_loads_and_serves_new_items(tmp_path: Path) -> None:
    model = _model()
    save_checkpoint(tmp_path / "a", model, IDS, dataset="t")
    grown, ids = grow_items(model, IDS, NEW)
    save_checkpoint(tmp_path / "b", grown, ids, dataset="t",
                    extra_meta={"item_popularity": grow_popularity([1.0] * N, len(ids))})
    assert json.loads((tmp_path / "b" / "items.json").read_text()) == IDS + NEW
    assert version_sha256(tmp_path / "a") != version_sha256(tmp_path / "b")  # the manifest covers items.json
    ckpt = load_checkpoint(tmp_path / "b", expected_sha256=version_sha256(tmp_path / "b"))
    rec = Recommender(ckpt, device="cpu")
    h = rec.history_from_raw(["i1", "new3", "never-seen", "i4"], [1, 1, 1, 1], [1000, 2000, 3000, 4000])
    assert h.items.tolist() == [2, N + 4, 5]  # known and new indices; an id of no version is still dropped
    recs = rec.recommend([h], k=N + M, exclude_seen=True)[0]
    served = {r.item_id for r in recs}
    assert "new3" not in served and "i1" not in served and len(recs) == N + M - 3
    assert set(NEW) - {"new3"} <= served  # new items are retrievable like any other
    assert rec.popularity.shape == (N + M + 1,)


def test_online_learner_grows_between_rounds_and_trains_on_the_new_items() -> None:
    model = _model()
    model.train()
    cfg = OnlineConfig(batch_size=8, min_new_examples=4, steps_per_round=3, holdout_every=1000)
    popularity = [100.0] * (N // 2) + [1.0] * (N - N // 2)  # the tail: items 26..50
    learner = OnlineLearner(model, list(IDS), TrainConfig(), cfg, popularity=popularity)
    rng = np.random.default_rng(0)

    def example(k: int, target: int) -> object:
        hist = History(rng.integers(1, N + 1, 5).astype(np.int32), np.full(5, Action.POSITIVE, np.int8),
                       np.arange(5, dtype=np.int64) * 1000)
        return make_example(hist, target, int(Action.POSITIVE), 10_000, [], f"e{k}", 10_000, 20, 5)

    for k in range(8):
        learner.add(example(k, int(rng.integers(1, N + 1))))  # type: ignore[arg-type]
    learner.train_round()
    emb = [name for name, _ in learner.model.named_parameters()].index("item_emb.weight")
    moments = learner.trainer.opt.state_dict()["state"][emb]["exp_avg"].clone()
    for k in range(8, 16):
        learner.add(example(k, N + 1 + k % 2))  # type: ignore[arg-type]  # the trainer's indices for new0, new1
    assert len(learner.waiting) == 8 and learner.ready() and len(learner.buffer.unseen) == 0
    learner.grow(NEW[:2])
    assert learner.item_ids == IDS + NEW[:2] and learner.model.cfg.num_items == N + 2
    assert learner.popularity == [*popularity, 0.0, 0.0]  # the new items: no training count yet
    tail = learner.model.item_emb.weight[N // 2 + 1 : N + 1].detach()
    for row in learner.model.item_emb.weight[N + 1 :].detach():  # each a copy of a tail item (within 10 % noise)
        assert F.cosine_similarity(row[None], tail).max() > 0.95
    assert learner.serving.cfg.num_items == N + 2 and not learner.waiting and len(learner.buffer.unseen) == 8
    after = learner.trainer.opt.state_dict()["state"][emb]["exp_avg"]
    assert torch.equal(after[: N + 1], moments) and not after[N + 1 :].any()
    before = learner.model.item_emb.weight[N + 1 :].detach().clone()
    rr = learner.train_round()
    assert rr.finite and rr.new_examples == 8
    assert not torch.equal(learner.model.item_emb.weight[N + 1 :], before)  # the new rows learned
    # The reference and the candidate evaluate examples that name the new items.
    learner.holdout.extend(list(learner.buffer.old)[:4])
    assert learner.evaluate(learner.serving, list(learner.holdout))["n"] == 4
    # A version published before the growth is followed by growing it to the learner's vocabulary.
    learner.follow_checkpoint(_model(), list(IDS), "older")
    assert learner.model.cfg.num_items == N + 2 and learner.state.serving_version == "older"
    with pytest.raises(ValueError, match="another item vocabulary"):
        learner.follow_checkpoint(_model(), [f"x{k}" for k in range(N)], "other")


def test_new_item_text_comes_from_items_csv(tmp_path: Path) -> None:
    from genrec.model.text import make_text_encoder

    csv = tmp_path / "items.csv"
    csv.write_text("item_id,title,text,categories\nnew0,Red Lipstick,a bold matte red,Makeup|Lips\nnew2,,,\n")
    enc = make_text_encoder("hashed")
    vecs = new_item_text(["new0", "new1", "new2"], csv, "hashed", enc.dim)
    assert vecs.shape == (3, enc.dim) and vecs[0].any() and not vecs[1].any() and not vecs[2].any()
    model = _model(text_dim=enc.dim)
    grown, _ = grow_items(model, IDS, ["new0", "new1", "new2"], text=vecs)
    assert torch.equal(grown.item_emb.weight[N + 1], torch.zeros(16))  # placed by its text
    assert grown.item_emb.weight[N + 2].any()  # no text: a random ID row
    with pytest.raises(ValueError, match="-d vectors"):
        new_item_text(["new0"], csv, "hashed", 8)
