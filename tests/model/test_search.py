"""Queries as tokens: layout, training targets, and search behaviour of a trained model (synthetic genres)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from genrec.model.batching import make_train_batch
from genrec.model.checkpoint import save_checkpoint
from genrec.model.config import TrainConfig
from genrec.model.data import SequenceDataset, load_item_meta, split_lengths, synthetic_dataset, train_popularity
from genrec.model.search import SearchData, build_search_data, text_only_ranks
from genrec.model.serving import Recommender
from genrec.model.text import MAX_QUERY_CHARS, make_text_encoder
from genrec.model.tokens import Kind, tokenize
from genrec.model.train import fit_and_test

from tests.model.compare import tie_groups


def test_a_query_token_sits_right_before_the_item_it_led_to() -> None:
    items = [np.array([5, 6, 7], np.int32)]
    tb = tokenize(
        items,
        [np.array([1, 2, 1], np.int8)],
        [np.array([10, 20, 30])],
        True,
        event_queries=[np.array([-1, 0, -1])],
        query_vecs=np.zeros((1, 4), np.float32),
    )
    assert tb.kind[0].tolist() == [Kind.ITEM, Kind.ACTION, Kind.QUERY, Kind.ITEM, Kind.ACTION, Kind.ITEM, Kind.ACTION]
    assert tb.query[0].tolist() == [-1, -1, 0, -1, -1, -1, -1]
    assert tb.ts[0, 2] == 20  # the search happened when its click did
    assert tb.item_pos[0].tolist() == [0, 3, 5] and tb.query_pos[0].tolist() == [-1, 2, -1]


@pytest.fixture(scope="module")
def search_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[SequenceDataset, SearchData, Path]:
    ds = synthetic_dataset(n_users=300, n_items=120, n_genres=6, events_per_user=40, seed=3)
    search = build_search_data(ds, load_item_meta(ds, None), make_text_encoder("hashed"), share=0.3, noise=0.0)
    tcfg = TrainConfig(
        enhancer={"warmup_steps": 0, "period": 2},  # exercise hard negatives together with the text match
        epochs=6,
        batch_size=32,
        lr=3e-3,
        uniform_negatives=128,
        inbatch_negatives=64,
        min_epochs=6,
        search={"enabled": True, "encoder": "hashed", "share": 0.3, "noise": 0.0},
    )
    res, test = fit_and_test(ds, tcfg, progress=False, search=search, d_model=32, n_layers=2, n_heads=2, max_events=50)
    path = tmp_path_factory.mktemp("search") / "ckpt"
    save_checkpoint(
        path,
        res.model,
        ds.item_ids,
        dataset=ds.name,
        metrics={"test": test},
        extra_meta={"item_popularity": train_popularity(ds).tolist(), "text_encoder": "hashed"},
    )
    return ds, search, path


def test_query_tokens_are_retrieval_positions_targeting_their_item(search_setup: tuple) -> None:
    ds, search, _ = search_setup
    users = np.arange(20)
    tb = make_train_batch(ds, users, split_lengths(ds, "train"), 50, True, None, search)
    for b in range(len(users)):
        qp = tb.tokens.query_pos[b]
        for j in np.flatnonzero(qp >= 0):
            assert tb.ret_target[b, qp[j]] == tb.tokens.item[b, tb.tokens.item_pos[b][j]]


def _genre_share(rec: Recommender, ds: SequenceDataset, recs: list, genre: str) -> float:
    genres = {k: g for k, (_, g) in ds.synthetic_meta.items()}
    return float(np.mean([genre in genres[r.item_id] for r in recs]))


def test_a_genre_query_moves_that_genre_up_and_changes_the_results(search_setup: tuple) -> None:
    ds, _, path = search_setup
    rec = Recommender.from_checkpoint(path)
    users = range(30)
    hists = [
        rec.history_from_raw([ds.item_ids[i - 1] for i in ds.items[u]], ds.actions[u], ds.ts[u] * 1000) for u in users
    ]
    plain = rec.recommend(hists, k=10)
    lifts = []
    for genre in ("comedy", "western", "horror"):
        searched = rec.recommend(hists, k=10, queries=[genre] * len(hists))
        assert any([r.item_id for r in a] != [r.item_id for r in b] for a, b in zip(plain, searched, strict=True))
        before = np.mean([_genre_share(rec, ds, r, genre) for r in plain])
        after = np.mean([_genre_share(rec, ds, r, genre) for r in searched])
        assert after > before, (genre, before, after)
        lifts.append(after - before)
    # Personalization keeps a user's own taste in the list; the named genre must still gain clearly on average.
    assert np.mean(lifts) > 0.05, lifts


def test_empty_unicode_and_over_long_queries_are_handled(search_setup: tuple) -> None:
    ds, _, path = search_setup
    rec = Recommender.from_checkpoint(path)
    h = rec.history_from_raw([ds.item_ids[i - 1] for i in ds.items[0]], ds.actions[0], ds.ts[0] * 1000)
    now = [int(ds.ts[0][-1]) * 1000 + 1000]
    plain = rec.recommend([h], k=10, now_ms=now)[0]
    for empty in ("", "   ", "\x00\x01"):
        assert [r.item_id for r in rec.recommend([h], k=10, queries=[empty], now_ms=now)[0]] == [
            r.item_id for r in plain
        ]
    assert len(rec.recommend([h], k=10, queries=["générique 🎬 ジャンル drama"], now_ms=now)[0]) == 10
    long = "horror " * (MAX_QUERY_CHARS // 3)
    capped = "horror " * (MAX_QUERY_CHARS // 7)
    a = rec.recommend([h], k=10, queries=[long], now_ms=now)[0]
    b = rec.recommend([h], k=10, queries=[long[:MAX_QUERY_CHARS]], now_ms=now)[0]
    assert [r.item_id for r in a] == [r.item_id for r in b]  # truncated to the bound, not rejected
    assert len(rec.recommend([h], k=10, queries=[capped], now_ms=now)[0]) == 10


def test_joint_model_reports_search_metrics_and_text_only_baseline_is_computed(search_setup: tuple) -> None:
    ds, search, path = search_setup
    import json

    test = json.loads((path / "metrics.json").read_text())["test"]
    assert 0.0 <= test["search_ndcg@10"] <= 1.0 and test["search_users"] > 0
    ranks = text_only_ranks(search, ds, "test")
    assert len(ranks) == test["search_users"]


def test_searches_and_recommendations_share_a_batch_with_the_results_they_get_alone(search_setup: tuple) -> None:
    ds, _, path = search_setup
    rec = Recommender.from_checkpoint(path)
    users = list(range(8))
    hists = [
        rec.history_from_raw([ds.item_ids[i - 1] for i in ds.items[u]], ds.actions[u], ds.ts[u] * 1000) for u in users
    ]
    queries = ["comedy", None, "western horror", None, "", "drama", None, "comedy western"]
    now = [int(ds.ts[u][-1]) * 1000 + 1000 for u in users]
    together = rec.recommend(hists, k=10, queries=queries, now_ms=now)
    for b in range(len(users)):
        alone = rec.recommend([hists[b]], k=10, queries=[queries[b]], now_ms=[now[b]])[0]
        np.testing.assert_allclose([r.score for r in together[b]], [r.score for r in alone], rtol=1e-4, atol=1e-5)
        assert tie_groups(together[b]) == tie_groups(alone), (b, queries[b])
