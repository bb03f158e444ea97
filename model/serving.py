"""Serving one batch of requests with one model (docs/architecture.md, "Serving one request"):

    forward the history (+ query) once → user state at the last token → top-K' by the retrieval head over all
    items (seen items excluded on request) → append the K' candidates as item tokens at the request time,
    each seeing the cached history keys/values and itself only → ranking head → sort → top-k.

The sort key (`order`) is the checkpoint's own `serving_order`, picked on the validation split after training
(model/train.py `select_serving_order`) among:

    joint      key_i = s_i / τ + log σ(r_i)   s_i: retrieval cosine, τ: its softmax temperature, r_i: ranking logit
    ranking    key_i = r_i
    retrieval  key_i = s_i

A next-item ranker (rank_task="next", trained on the retrieval top-K' in candidate slots) already reads β·s_i, so
its own logit is often the best key. A feedback ranker (older checkpoints: P(positive | engaged)) ignores how
likely the engagement is; on the last 30 % of ML-100K its order served the next click 2.9× worse than the joint key
(docs/bench/history.md, "Serving order"). `served_order` is the one implementation of the served list: the worker
serves with it and `genrec eval` measures it (`served_*`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from genrec.model.checkpoint import Checkpoint, load_checkpoint
from genrec.model.data import SequenceDataset, load_item_meta
from genrec.model.device import autocast_dtype, inference_autocast, resolve_device
from genrec.model.generative import GenerativeRecommender
from genrec.model.recommendation import Recommendation
from genrec.model.text import clean_query
from genrec.model.tokens import History, tokenize

log = logging.getLogger(__name__)

DEFAULT_K_PRIME = 200
# A search takes fewer candidates: relevance to the query is the retriever's call (it reads the query token);
# the joint key (retrieval with the query, times predicted feedback) then orders them.
DEFAULT_K_PRIME_SEARCH = 50


ServingOrder = Literal["joint", "ranking", "retrieval"]


def serving_key(retrieval: torch.Tensor, rank_logit: torch.Tensor, tau: float, order: ServingOrder) -> torch.Tensor:
    """The candidates' sort key [B, K'] (higher first); see the module docstring for `joint`."""
    if order == "joint":
        return retrieval / tau + F.logsigmoid(rank_logit)
    if order == "ranking":
        return rank_logit
    if order == "retrieval":
        return retrieval
    raise ValueError(f"unknown serving order {order!r}")


@dataclass
class ServedLists:
    """Each row's served candidates, best first: items [B, K'], retrieval cosines, ranking logits (None without a
    ranker) and sort keys (−inf: never served)."""

    items: torch.Tensor
    retrieval: torch.Tensor
    rank_logit: torch.Tensor | None
    key: torch.Tensor


def served_order(scores: torch.Tensor, k_prime: int, tau: float, order: ServingOrder,
                 rank_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                 row_k_prime: torch.Tensor | None = None) -> ServedLists:
    """The order the worker serves, from every item's retrieval cosine scores [B, N+1] (exclusions already −inf):
    the top-K' by retrieval, re-ordered by the serving key. The one implementation of it: `Recommender.recommend`
    serves with it and `model.evaluate` measures it (`served_*`).

    rank_fn(items [B, K'], retrieval cosines [B, K']) → ranking logits [B, K'] (None: the retrieval order).
    row_k_prime [B]: rows that keep fewer candidates (searches), by retrieval score.
    """
    kp = min(k_prime, scores.shape[1] - 1)
    top_s, top_i = scores.topk(kp, dim=1)  # [B, K'], sorted by retrieval
    logit = None
    if rank_fn is not None and order != "retrieval":
        logit = rank_fn(top_i, top_s)
        key = serving_key(top_s, logit, tau, order)
    else:
        key = top_s.clone()
    dropped = ~torch.isfinite(top_s)  # excluded items never come back
    if row_k_prime is not None:
        dropped |= torch.arange(kp, device=scores.device)[None, :] >= row_k_prime[:, None]
    key = key.masked_fill(dropped, float("-inf"))
    perm = key.argsort(dim=1, descending=True, stable=True)
    return ServedLists(top_i.gather(1, perm), top_s.gather(1, perm),
                       None if logit is None else logit.gather(1, perm), key.gather(1, perm))


def pick_device(device: str | None = None) -> torch.device:
    """`model.device.resolve_device`: "auto"/None picks CUDA when present; "cuda" without a GPU is an error."""
    return resolve_device(device)


class Recommender:
    """A loaded model plus its item vocabulary; `recommend` is synchronous and serves a whole batch."""

    def __init__(self, ckpt: Checkpoint, device: str | None = None, k_prime: int = DEFAULT_K_PRIME,
                 k_prime_search: int = DEFAULT_K_PRIME_SEARCH, order: ServingOrder | None = None,
                 autocast: bool = True) -> None:
        self.device = pick_device(device)
        # bf16/fp16 forward passes on CUDA (model/device.py); scores are cast back to fp32 before they are
        # masked, sorted and returned. None on the CPU: the CPU path is unchanged fp32.
        self.autocast = autocast
        self.autocast_dtype = autocast_dtype(self.device) if autocast else None
        self.model: GenerativeRecommender = ckpt.model.to(self.device).eval()
        self.cfg = self.model.cfg
        self.item_ids = ckpt.item_ids
        self.index = {raw: i + 1 for i, raw in enumerate(self.item_ids)}
        self.version = ckpt.version
        self.meta = ckpt.meta
        self.path = ckpt.path
        self.k_prime = k_prime
        self.k_prime_search = k_prime_search
        order = order or self.cfg.serving_order  # the checkpoint's own, picked on validation
        serving_key(torch.zeros(1, 1), torch.zeros(1, 1), 1.0, order)  # an unknown order fails here, not per request
        self.order: ServingOrder = order
        self.text_encoder = None  # created on first query (only models with query tokens use it)
        with torch.inference_mode():
            self.item_table = self.model.output_item_table()  # [N+1, D], fixed for a loaded version
        pop = np.asarray(ckpt.meta.get("item_popularity") or np.zeros(self.cfg.num_items), np.float64)
        self.popularity = np.concatenate([[-np.inf], pop])  # cold-start order for users with no history

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, expected_sha256: str | None = None,
                        k_prime: int = DEFAULT_K_PRIME, k_prime_search: int = DEFAULT_K_PRIME_SEARCH,
                        order: ServingOrder | None = None, autocast: bool = True) -> Recommender:
        # The device is checked before the (seconds-long) load, so "cuda" on a CPU-only host fails at once.
        pick_device(device)
        return cls(load_checkpoint(path, "cpu", expected_sha256), device, k_prime, k_prime_search, order, autocast)

    @property
    def max_events(self) -> int:
        return self.cfg.max_events

    @property
    def supports_queries(self) -> bool:
        return self.cfg.query_dim > 0

    def history_from_raw(self, item_ids: Sequence[str], actions: Sequence[int], ts_ms: Sequence[int]) -> History:
        """Raw item ids → vocabulary indices; items this model does not know are dropped (cold items).

        The whole history is kept: `recommend` reads its last L events and excludes every item in it.
        """
        idx = np.fromiter((self.index.get(str(i), 0) for i in item_ids), np.int32, len(item_ids))
        keep = idx > 0
        return History(idx[keep], np.asarray(actions, np.int8)[keep], np.asarray(ts_ms, np.int64)[keep])

    def _encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        from genrec.model.text import make_text_encoder

        if self.text_encoder is None:
            name = self.meta.get("text_encoder", "minilm")
            self.text_encoder = make_text_encoder(name, **({"dim": self.cfg.query_dim} if name == "hashed" else {}))
            if self.text_encoder.dim != self.cfg.query_dim:
                raise ValueError(f"text encoder {name} gives {self.text_encoder.dim}-d vectors; "
                                 f"the model expects {self.cfg.query_dim}")
        return self.text_encoder.encode(list(queries))

    @torch.inference_mode()
    def recommend(self, histories: Sequence[History], k: Sequence[int] | int,
                  exclude_seen: Sequence[bool] | bool = True, queries: Sequence[str | None] | None = None,
                  now_ms: Sequence[int] | None = None
                  ) -> list[list[Recommendation]]:
        B = len(histories)
        if B == 0:
            return []
        ks = [k] * B if isinstance(k, int) else list(k)
        excl = [exclude_seen] * B if isinstance(exclude_seen, bool) else list(exclude_seen)
        # Cleaned and bounded (NFKC, control characters stripped, ≤ 512 chars); empty → plain recommendation.
        qs: list[str | None] = [clean_query(q) for q in queries] if queries is not None else [None] * B
        if not self.supports_queries and any(qs):
            log.warning("model %s has no query tokens: serving queries as plain recommendations", self.version)
            qs = [None] * B
        now_s = (np.asarray(now_ms, np.int64) // 1000) if now_ms is not None else np.full(B, int(time.time()))
        hist = [h.last(self.max_events) for h in histories]
        query_rows: list[tuple[int, int] | None] = []
        row = 0
        for b, q in enumerate(qs):
            if q:
                query_rows.append((row, int(now_s[b])))
                row += 1
            else:
                query_rows.append(None)
        qvecs = self._encode_queries([q for q in qs if q]) if row else None
        tb = tokenize([h.items for h in hist], [h.actions for h in hist], [h.ts_ms // 1000 for h in hist],
                      self.cfg.interleave_actions, queries=query_rows if row else None, query_vecs=qvecs)
        batch = self.model.to_tensors(tb)
        with inference_autocast(self.device, self.autocast):
            h, cache = self.model.encode(batch)
            scores = self.model.retrieval_scores(h[:, -1], self.model.query_vectors(batch, batch["query"][:, -1]),
                                                 self.item_table)
        # fp32 from here on: the -inf masks, the sort and numpy (which has no bf16) see full-precision keys.
        scores = scores.float()
        # Every item of the history passed in is excluded, also those older than the L events the model reads.
        for b, full in enumerate(histories):
            if excl[b] and len(full):
                scores[b, torch.as_tensor(full.items, dtype=torch.long, device=scores.device)] = float("-inf")
        kp = min(max(self.k_prime, max(ks)), self.cfg.num_items)
        # Searches keep only their top-K'_search retrieved candidates.
        per_row_kp = torch.as_tensor([max(self.k_prime_search, ks[b]) if qs[b] else kp for b in range(B)],
                                     device=scores.device)
        now_t = torch.as_tensor(now_s, device=scores.device)

        def rank_fn(items: torch.Tensor, _retrieval: torch.Tensor) -> torch.Tensor:
            with inference_autocast(self.device, self.autocast):
                logit = self.model.score_candidates(items, now_t[:, None].expand_as(items), cache, user=h[:, -1])
            return logit.float()

        lists = served_order(scores, kp, self.cfg.tau, self.order, rank_fn if self.cfg.ranking_trained else None,
                             per_row_kp)
        rank = torch.sigmoid(lists.rank_logit) if lists.rank_logit is not None else lists.retrieval
        top_i, top_s, rank, key = (x.cpu().numpy() for x in (lists.items, lists.retrieval, rank, lists.key))
        out: list[list[Recommendation]] = []
        for b in range(B):
            if len(hist[b]) == 0 and not qs[b]:
                out.append(self._popular(ks[b]))
                continue
            recs = []
            for j in range(kp):
                if len(recs) == ks[b] or not np.isfinite(key[b, j]):
                    break
                recs.append(Recommendation(self.item_ids[int(top_i[b, j]) - 1], len(recs) + 1, float(rank[b, j]),
                                           float(top_s[b, j])))
            out.append(recs)
        return out

    def _popular(self, k: int) -> list[Recommendation]:
        """Cold start (no history, no query): the most popular items of the training data."""
        top = np.argsort(-self.popularity, kind="stable")[:k]
        total = max(float(self.popularity[1:].sum()), 1.0)
        # A checkpoint whose popularity holds NaN puts the padding row first: the list then starts at rank 2, which
        # the swap's test inference refuses (streams: ProbeFailed) instead of serving a broken cold-start list.
        return [Recommendation(self.item_ids[int(i) - 1], r + 1, float(self.popularity[i] / total), 0.0)
                for r, i in enumerate(top) if i > 0]


def item_titles(ds: SequenceDataset, data_dir: Path | str | None) -> dict[str, str]:
    """Display titles by raw item id (MovieLens titles, synthetic names, Amazon attribute tokens)."""
    from genrec.model.queries import display_title, item_text

    out = {}
    for raw, meta in load_item_meta(ds, data_dir).items():
        out[raw] = display_title(meta.title) if meta.title else (item_text(meta) or raw)
    return out
