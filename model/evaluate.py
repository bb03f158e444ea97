"""Offline evaluation (the papers' protocol): leave-one-out by time, full ranking over all items.

By default the items a user has already interacted with before the target are left out of that user's
ranking (the target itself always stays in): the protocol of SASRec and of HSTU's published figures
(generative-recommenders evaluates over the corpus "excluding all the items that users have seen in the
past"). `exclude_seen=False` ranks the target among every item, seen ones included (a harsher number).

Retrieval: the user state at the last history token scores every item; HR/NDCG@{10,50,200}, MRR.
Served (`served_*`): the order the worker serves, the retrieval top-K' (200) re-ordered by the serving key
(model/serving.py `served_order`, the same function the worker calls), candidates scored at the target's time;
a target outside the top-K' is a miss. HR/NDCG@{10,50}, MRR.
Ranking: the held-out item is appended as a candidate token at its own time, exactly as served; AUC over
the test items. GAUC: per user, the two held-out items (validation and test) scored against the same
training history, averaged over users whose two items have different labels (leave-one-out leaves no
more unseen labelled items per user).
"""

from __future__ import annotations

import numpy as np
import torch
from genrec.model.backbone import HistoryCache
from genrec.model.batching import make_eval_batch
from genrec.model.data import SequenceDataset, eval_users, split_lengths
from genrec.model.generative import GenerativeRecommender
from genrec.model.metrics import auc, gauc, ranking_metrics, target_ranks
from genrec.model.search import SearchData
from genrec.model.serving import DEFAULT_K_PRIME, ServingOrder, served_order
from genrec.model.tokens import feedback_label

SERVED_KS = (10, 50)


def served_ranks(items: torch.Tensor, key: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """0-based position of each row's target in its served list (items, key [B, K'], best first); inf if absent."""
    hit = (items.cpu().numpy() == targets[:, None]) & np.isfinite(key.float().cpu().numpy())
    return np.where(hit.any(1), hit.argmax(1), np.inf)


@torch.inference_mode()
def score_split(model: GenerativeRecommender, ds: SequenceDataset, split: str, batch_size: int = 256,
                users: np.ndarray | None = None, search: SearchData | None = None, with_query: bool = False,
                exclude_seen: bool = True, orders: tuple[ServingOrder, ...] = (),
                ranker: GenerativeRecommender | None = None, k_prime: int = DEFAULT_K_PRIME
                ) -> dict[str, np.ndarray]:
    """Per user of `split`: the target's 0-based full rank, ranking logit and feedback label, and for each serving
    order in `orders` its position in the served list (`served_<order>`).

    With `with_query`, only users whose target has an evaluation query, each read at that query token.
    ranker: a separate ranking model re-orders `model`'s top-K' (the two-model pipeline); it reads the history
    itself and takes the retriever's score s/τ as its retrieval feature.
    """
    was_training = model.training
    model.eval()
    users = eval_users(ds) if users is None else users
    lengths = split_lengths(ds, split)
    if with_query:
        assert search is not None
        users = np.array([u for u in users if search.target_queries[u][lengths[u]] >= 0], np.int64)
    table = model.output_item_table()
    ranks, logits, labels = [], [], []
    served: dict[str, list[np.ndarray]] = {o: [] for o in orders}
    rank_model = ranker or model
    for i in range(0, len(users), batch_size):
        ub = users[i : i + batch_size]
        tb, tgt, tgt_ts, lab = make_eval_batch(ds, ub, lengths, model.cfg.max_events, model.cfg.interleave_actions,
                                               search, with_query)
        batch = model.to_tensors(tb)
        h, cache = model.encode(batch)
        scores = model.retrieval_scores(h[:, -1], model.query_vectors(batch, batch["query"][:, -1]), table)
        if exclude_seen:
            for row, u in enumerate(ub):
                seen = ds.items[u][: lengths[u]]
                seen = seen[seen != tgt[row]]
                if len(seen):
                    scores[row, torch.as_tensor(seen, dtype=torch.long, device=scores.device)] = float("-inf")
        ranks.append(target_ranks(scores.float().cpu().numpy(), tgt))
        dev = h.device
        r_cache, r_user = (ranker.encode(batch)[1], None) if ranker is not None else (cache, h[:, -1])
        if orders:
            served_batch(served, scores, tgt, tgt_ts, model.cfg.tau, rank_model, r_cache, r_user,
                         ranker is not None, k_prime)
        cand = torch.as_tensor(tgt, device=dev)[:, None]
        cand_ts = torch.as_tensor(tgt_ts, device=dev)[:, None]
        logits.append(model.score_candidates(cand, cand_ts, cache, user=h[:, -1], feedback=True)[:, 0]
                      .float().cpu().numpy())
        labels.append(lab)
    model.train(was_training)
    out = {"users": users, "ranks": _cat(ranks), "logits": _cat(logits), "labels": _cat(labels)}
    out.update({f"served_{o}": _cat(v) for o, v in served.items()})
    return out


def served_batch(served: dict[str, list[np.ndarray]], scores: torch.Tensor, tgt: np.ndarray, tgt_ts: np.ndarray,
                 tau: float, rank_model: GenerativeRecommender, cache: HistoryCache, user: torch.Tensor | None,
                 external: bool, k_prime: int) -> None:
    """Append each order's served position of the targets; the ranker scores the top-K' once for all orders."""
    memo: dict[str, torch.Tensor] = {}
    ts = torch.as_tensor(tgt_ts, device=scores.device)

    def rank_fn(items: torch.Tensor, retrieval: torch.Tensor) -> torch.Tensor:
        if "logit" not in memo:
            aff = retrieval.masked_fill(~torch.isfinite(retrieval), 0.0) / tau if external else None
            memo["logit"] = rank_model.score_candidates(items, ts[:, None].expand_as(items), cache, user=user,
                                                        affinity=aff)
        return memo["logit"]

    ranked = rank_model.cfg.ranking_trained
    for o in served:
        lists = served_order(scores, k_prime, tau, o, rank_fn if ranked else None)  # type: ignore[arg-type]
        served[o].append(served_ranks(lists.items, lists.key, tgt))


def served_metrics(ranks: np.ndarray, prefix: str = "served_") -> dict[str, float]:
    """HR/NDCG@{10,50} and MRR of served positions (inf: not served)."""
    return {f"{prefix}{k}": v for k, v in ranking_metrics(ranks, SERVED_KS).items()}


def _cat(xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs) if xs else np.zeros(0)


def retrieval_metrics(scored: dict[str, np.ndarray]) -> dict[str, float]:
    return ranking_metrics(scored["ranks"])


@torch.inference_mode()
def heldout_pair_logits(model: GenerativeRecommender, ds: SequenceDataset, batch_size: int = 256,
                        search: SearchData | None = None) -> dict[str, np.ndarray]:
    """Both held-out items (validation and test) scored as candidates against the same training history,
    each at its own time — one context per user, so per-user AUC compares like with like."""
    was_training = model.training
    model.eval()
    users = eval_users(ds)
    lengths = split_lengths(ds, "train")
    logits, labels, groups = [], [], []
    for i in range(0, len(users), batch_size):
        ub = users[i : i + batch_size]
        tb, v_item, v_ts, v_lab = make_eval_batch(ds, ub, lengths, model.cfg.max_events, model.cfg.interleave_actions,
                                                  search)
        t_item = np.array([ds.items[u][lengths[u] + 1] for u in ub], np.int64)
        t_ts = np.array([ds.ts[u][lengths[u] + 1] for u in ub], np.int64)
        t_lab = np.array([feedback_label(ds.actions[u][lengths[u] + 1 : lengths[u] + 2])[0] for u in ub])
        h, cache = model.encode(model.to_tensors(tb))
        dev = cache.key_valid.device
        cand = torch.as_tensor(np.stack([v_item, t_item], 1), device=dev)
        cand_ts = torch.as_tensor(np.stack([v_ts, t_ts], 1), device=dev)
        logits.append(model.score_candidates(cand, cand_ts, cache, user=h[:, -1], feedback=True)
                      .float().cpu().numpy().ravel())
        labels.append(np.stack([v_lab, t_lab], 1).ravel())
        groups.append(np.repeat(ub, 2))
    model.train(was_training)
    return {"logits": _cat(logits), "labels": _cat(labels), "groups": _cat(groups)}


def evaluate(model: GenerativeRecommender, ds: SequenceDataset, split: str = "test", batch_size: int = 256,
             search: SearchData | None = None, exclude_seen: bool = True, orders: tuple[ServingOrder, ...] = (),
             ranker: GenerativeRecommender | None = None, k_prime: int = DEFAULT_K_PRIME) -> dict[str, float]:
    """Metrics of `split` ("valid" or "test"): retrieval always; the served order (`served_*`, by the model's
    serving order, or by `ranker`'s when given); ranking where the data has feedback; search (`search_*`: the
    target ranked from its evaluation query's token) when `search` is given. `orders`: also report
    `served_<order>_*` for each of these serving orders (how the serving order is picked on validation)."""
    # Past queries are part of the history only for a model that has query tokens.
    hist_search = search if model.cfg.query_dim else None
    main = (ranker or model).cfg.serving_order
    all_orders = tuple(dict.fromkeys((main, *orders)))
    scored = score_split(model, ds, split, batch_size, search=hist_search, exclude_seen=exclude_seen,
                         orders=all_orders, ranker=ranker, k_prime=k_prime)
    out = retrieval_metrics(scored)
    out.update(served_metrics(scored[f"served_{main}"]))
    for o in orders:
        out.update(served_metrics(scored[f"served_{o}"], f"served_{o}_"))
    if ds.has_feedback:
        lab = scored["labels"]
        known = lab >= 0
        out["auc"] = auc(scored["logits"][known], lab[known])
        if split == "test":
            pair = heldout_pair_logits(model, ds, batch_size, hist_search)
            k = pair["labels"] >= 0
            out["gauc"] = gauc(pair["logits"][k], pair["labels"][k], pair["groups"][k])
    if search is not None:
        if model.cfg.query_dim:
            ranks = score_split(model, ds, split, batch_size, search=search, with_query=True,
                                exclude_seen=exclude_seen)["ranks"]
        else:  # a model without query tokens serves a search as a recommendation: rank without the query
            ranks = score_split(model, ds, split, batch_size, users=_users_with_query(ds, split, search),
                                exclude_seen=exclude_seen)["ranks"]
        out.update({f"search_{k}": v for k, v in ranking_metrics(ranks).items()})
        out["search_users"] = float(len(ranks))
    out["users"] = float(len(scored["ranks"]))
    return out


def _users_with_query(ds: SequenceDataset, split: str, search: SearchData) -> np.ndarray:
    lengths = split_lengths(ds, split)
    return np.array([u for u in eval_users(ds) if search.target_queries[u][lengths[u]] >= 0], np.int64)
