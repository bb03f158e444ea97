"""Offline evaluation (the papers' protocol): leave-one-out by time, full ranking over all items.

By default the items a user has already interacted with before the target are left out of that user's
ranking (the target itself always stays in): the protocol of SASRec and of HSTU's published figures
(generative-recommenders evaluates over the corpus "excluding all the items that users have seen in the
past"). `exclude_seen=False` ranks the target among every item, seen ones included (a harsher number).

Retrieval: the user state at the last history token scores every item; HR/NDCG@{10,50,200}, MRR.
Ranking: the held-out item is appended as a candidate token at its own time, exactly as served; AUC over
the test items. GAUC: per user, the two held-out items (validation and test) scored against the same
training history, averaged over users whose two items have different labels (leave-one-out leaves no
more unseen labelled items per user).
"""

from __future__ import annotations

import numpy as np
import torch

from model.batching import make_eval_batch
from model.data import SequenceDataset, eval_users, split_lengths
from model.generative import GenerativeRecommender
from model.metrics import auc, gauc, ranking_metrics, target_ranks
from model.search import SearchData
from model.tokens import feedback_label


@torch.inference_mode()
def score_split(model: GenerativeRecommender, ds: SequenceDataset, split: str, batch_size: int = 256,
                users: np.ndarray | None = None, search: SearchData | None = None, with_query: bool = False,
                exclude_seen: bool = True) -> dict[str, np.ndarray]:
    """Per user of `split`: the target's 0-based full rank, ranking logit and feedback label.

    With `with_query`, only users whose target has an evaluation query, each read at that query token.
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
        cand = torch.as_tensor(tgt, device=dev)[:, None]
        cand_ts = torch.as_tensor(tgt_ts, device=dev)[:, None]
        logits.append(model.score_candidates(cand, cand_ts, cache, user=h[:, -1])[:, 0].float().cpu().numpy())
        labels.append(lab)
    model.train(was_training)
    return {"users": users, "ranks": _cat(ranks), "logits": _cat(logits), "labels": _cat(labels)}


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
        logits.append(model.score_candidates(cand, cand_ts, cache, user=h[:, -1]).float().cpu().numpy().ravel())
        labels.append(np.stack([v_lab, t_lab], 1).ravel())
        groups.append(np.repeat(ub, 2))
    model.train(was_training)
    return {"logits": _cat(logits), "labels": _cat(labels), "groups": _cat(groups)}


def evaluate(model: GenerativeRecommender, ds: SequenceDataset, split: str = "test", batch_size: int = 256,
             search: SearchData | None = None, exclude_seen: bool = True) -> dict[str, float]:
    """Metrics of `split` ("valid" or "test"): retrieval always; ranking where the data has feedback; search
    (`search_*`: the target ranked from its evaluation query's token) when `search` is given."""
    # Past queries are part of the history only for a model that has query tokens.
    hist_search = search if model.cfg.query_dim else None
    scored = score_split(model, ds, split, batch_size, search=hist_search, exclude_seen=exclude_seen)
    out = retrieval_metrics(scored)
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
