"""Queries as first-class events (SynerGen): generated search queries for data sets without logged ones.

Before a sampled share of each user's training events, a query built from that event's item metadata is
inserted (the user searched, then clicked). The validation and test events each get one evaluation query
built the same way from their item, with its own random stream; search metrics rank the target item from
the output at that query token. Queries and item texts go through one frozen text encoder.

Reference: SynerGen ("SynerGen: Contextualized Generative Recommender for Unified Search and Recommendation",
arXiv 2509.21777): search queries as tokens in the user's event sequence, one decoder-only model for personalized
search and recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from genrec.model.data import SequenceDataset, split_lengths
from genrec.model.queries import MOVIELENS_GENRES, ItemMeta, item_text, make_query
from genrec.model.text import TextEncoder


@dataclass
class SearchData:
    encoder_name: str
    dim: int
    texts: list[str]  # unique training-query texts
    vecs: np.ndarray  # float32 [Q, dim]
    event_queries: list[np.ndarray]  # per user, int32 [n]: row of `vecs` issued before event j, or −1
    target_texts: list[str]
    target_vecs: np.ndarray  # float32 [Qt, dim]: evaluation queries
    target_queries: list[np.ndarray]  # per user, int32 [n]: row of `target_vecs` for event j (valid/test), or −1
    item_text_vecs: np.ndarray  # float32 [N+1, dim], row 0 (padding) zero


def _rows(texts: list[str | None]) -> tuple[list[str], np.ndarray]:
    """Deduplicate: unique texts and, per input, its row (−1 for None)."""
    index: dict[str, int] = {}
    rows = np.full(len(texts), -1, np.int32)
    for i, t in enumerate(texts):
        if t:
            rows[i] = index.setdefault(t, len(index))
    return list(index), rows


def build_search_data(ds: SequenceDataset, meta: dict[str, ItemMeta], encoder: TextEncoder, share: float = 0.2,
                      noise: float = 0.2, seed: int = 0, cache_dir: Path | None = None) -> SearchData:
    from genrec.model.text import embed_item_texts

    if not meta:
        raise ValueError(f"{ds.name}: no item metadata to build queries from")
    metas = [meta.get(raw, ItemMeta()) for raw in ds.item_ids]
    # A noisy query's wrong word is another category of the same catalogue: your own items.csv's categories, not
    # MovieLens genres (kept for the built-in sets, whose generated queries the benchmarks fixed).
    genre_vocab = sorted({g for m in metas for g in m.genres}) if ds.name == "interactions" else MOVIELENS_GENRES
    rng_train = np.random.default_rng(seed)
    rng_eval = np.random.default_rng(seed + 1)
    train_lengths = split_lengths(ds, "train")
    train_texts: list[str | None] = []
    eval_texts: list[str | None] = []
    train_slots, eval_slots = [], []
    for u, items in enumerate(ds.items):
        n_train = int(train_lengths[u])
        for j in np.flatnonzero(rng_train.random(n_train) < share):
            train_slots.append((u, int(j)))
            train_texts.append(make_query(metas[items[j] - 1], rng_train, noise, genre_vocab))
        for j in (len(items) - 2, len(items) - 1):
            eval_slots.append((u, j))
            eval_texts.append(make_query(metas[items[j] - 1], rng_eval, noise, genre_vocab))
    texts, rows = _rows(train_texts)
    t_texts, t_rows = _rows(eval_texts)
    event_queries = [np.full(len(x), -1, np.int32) for x in ds.items]
    target_queries = [np.full(len(x), -1, np.int32) for x in ds.items]
    for (u, j), r in zip(train_slots, rows, strict=True):
        event_queries[u][j] = r
    for (u, j), r in zip(eval_slots, t_rows, strict=True):
        target_queries[u][j] = r
    item_vecs = embed_item_texts([item_text(m) for m in metas], encoder, cache_dir)
    return SearchData(
        encoder_name=encoder.name,
        dim=encoder.dim,
        texts=texts,
        vecs=encoder.encode(texts) if texts else np.zeros((0, encoder.dim), np.float32),
        event_queries=event_queries,
        target_texts=t_texts,
        target_vecs=encoder.encode(t_texts) if t_texts else np.zeros((0, encoder.dim), np.float32),
        target_queries=target_queries,
        item_text_vecs=np.concatenate([np.zeros((1, encoder.dim), np.float32), item_vecs]),
    )


def text_only_ranks(search: SearchData, ds: SequenceDataset, split: str, exclude_seen: bool = True) -> np.ndarray:
    """Baseline: rank each split target by cosine(query, item text) — no personalization, no model (the
    user's seen items left out of the ranking by default, as in `model.evaluate`)."""
    lengths = split_lengths(ds, split)
    ranks = []
    for u in range(ds.num_users):
        n = int(lengths[u])
        if n >= len(ds.items[u]) or search.target_queries[u][n] < 0:
            continue
        q = search.target_vecs[search.target_queries[u][n]]
        scores = search.item_text_vecs @ q
        scores[0] = -np.inf
        if exclude_seen:
            seen = ds.items[u][:n]
            scores[seen[seen != ds.items[u][n]]] = -np.inf
        ranks.append(int((scores > scores[ds.items[u][n]]).sum()))
    return np.array(ranks, np.int64)


def search_data_for(ds: SequenceDataset, data_dir: Path | str | None, encoder_name: str, share: float = 0.2,
                    noise: float = 0.2, seed: int = 0, cache_dir: Path | None = None) -> SearchData:
    """Search data for a data set from its own metadata on disk (or the synthetic set's).

    With `cache_dir` (the checkpoint's directory), item text embeddings are computed once and reused from
    there by later runs (`genrec eval`, a retrain into the same directory).
    """
    from genrec.model.data import load_item_meta
    from genrec.model.text import make_text_encoder

    meta = load_item_meta(ds, data_dir)
    encoder = make_text_encoder(encoder_name)  # type: ignore[arg-type]
    return build_search_data(ds, meta, encoder, share, noise, seed, cache_dir)


def item_text_vectors(ds: SequenceDataset, data_dir: Path | str | None, encoder_name: str,
                      cache_dir: Path | None = None) -> np.ndarray:
    """Frozen text embeddings of every item's metadata (title, genres, categories) [N+1, dim], row 0 zero: the
    semantic item features SynerGen puts beside the ID embeddings, for recommendation without search."""
    from genrec.model.data import load_item_meta
    from genrec.model.text import embed_item_texts, make_text_encoder

    meta = load_item_meta(ds, data_dir)
    if not meta:
        raise ValueError(f"{ds.name}: no item metadata to embed")
    encoder = make_text_encoder(encoder_name)  # type: ignore[arg-type]
    vecs = embed_item_texts([item_text(meta.get(raw, ItemMeta())) for raw in ds.item_ids], encoder, cache_dir)
    return np.concatenate([np.zeros((1, encoder.dim), np.float32), vecs])
