"""Why does validation NDCG@10 read higher than test on Amazon Beauty (issue 18)? Cheap data analysis, no model.

Leave-one-out as in model/data.py (per user: last event = test, second last = validation, the rest = train), full
ranking over all items, each user's seen items left out (target kept). Measures, for the validation and the test
targets: two trivial baselines (most popular; previous-item → next-item transitions), the targets' popularity in
the training part, time gaps and same-day ties, repeats, the within-day tie order (Amazon rows of one day are in
ASIN order), and the popularity baseline after re-ordering the events inside each day (shuffled, reversed).

    python -m genrec.ops.analysis_valid_test_gap --data-dir ../shared/data

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from genrec.model.baselines import evaluate_popularity
from genrec.model.data import SequenceDataset, _dir, load_dataset
from genrec.model.metrics import ranking_metrics

DAY = 86_400
SPLITS = ("valid", "test")


def _visible(seqs: Sequence[np.ndarray], split: str) -> np.ndarray:
    """Events visible before the split's target (validation: n-2, test: n-1)."""
    n = np.array([len(s) for s in seqs])
    return n - 2 if split == "valid" else n - 1


def _ndcg10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def popularity_ranks(seqs: Sequence[np.ndarray], num_items: int, split: str) -> np.ndarray:
    """0-based target ranks of the most-popular baseline (counts over visible events; as model/baselines.py)."""
    vis = _visible(seqs, split)
    counts = np.zeros(num_items + 1)
    for s, n in zip(seqs, vis, strict=True):
        np.add.at(counts, s[:n], 1.0)
    scores = counts - 1e-6 * np.arange(num_items + 1) / (num_items + 1)
    scores[0] = -np.inf
    sorted_scores = np.sort(scores)
    ranks = np.empty(len(seqs), np.int64)
    for i, (s, n) in enumerate(zip(seqs, vis, strict=True)):
        t = s[n]
        r = len(scores) - np.searchsorted(sorted_scores, scores[t], side="right")
        seen = np.unique(s[:n])
        seen = seen[seen != t]
        ranks[i] = r - int((scores[seen] > scores[t]).sum())
    return ranks


def transition_ranks(seqs: Sequence[np.ndarray], num_items: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Next-item transition baseline: score(j) = #(prev → j) in visible sequences, popularity breaks ties.

    Returns the 0-based target ranks and, per user, whether (prev → target) occurs in the visible data.
    """
    vis = _visible(seqs, split)
    pop = np.zeros(num_items + 1)
    pairs: list[np.ndarray] = []
    for s, n in zip(seqs, vis, strict=True):
        np.add.at(pop, s[:n], 1.0)
        if n >= 2:
            pairs.append(s[:n].astype(np.int64)[:-1] * (num_items + 1) + s[1:n])
    keys, cnt = np.unique(np.concatenate(pairs), return_counts=True)
    prev_of = keys // (num_items + 1)
    starts = np.searchsorted(prev_of, np.arange(num_items + 2))
    base = pop / (pop.max() + 1.0) - 1e-9 * np.arange(num_items + 1)
    base[0] = -np.inf
    ranks = np.empty(len(seqs), np.int64)
    seen_pair = np.zeros(len(seqs), bool)
    for i, (s, n) in enumerate(zip(seqs, vis, strict=True)):
        t, p = s[n], s[n - 1]
        lo, hi = starts[p], starts[p + 1]
        succ = keys[lo:hi] % (num_items + 1)
        scores = base.copy()
        scores[succ] += cnt[lo:hi]
        seen_pair[i] = bool(np.isin(t, succ))
        seen = np.unique(s[:n])
        seen = seen[seen != t]
        above = scores > scores[t]
        above[seen] = False
        ranks[i] = int(above.sum())
    return ranks, seen_pair


def _summary(ranks: np.ndarray) -> dict[str, float]:
    m = ranking_metrics(ranks, ks=(10,))
    return {"ndcg@10": round(m["ndcg@10"], 5), "hr@10": round(m["hr@10"], 5)}


def _paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b per user (NDCG@10), 95 % paired-bootstrap interval over users."""
    rng = np.random.default_rng(seed)
    d = a - b
    idx = rng.integers(0, len(d), (reps, len(d)))
    boots = d[idx].mean(axis=1)
    return {"mean_diff": round(float(d.mean()), 5), "ci95_lo": round(float(np.quantile(boots, 0.025)), 5),
            "ci95_hi": round(float(np.quantile(boots, 0.975)), 5), "ratio": round(float(a.mean() / b.mean()), 3)}


def _reorder_within_day(seqs: Sequence[np.ndarray], ts: Sequence[np.ndarray], mode: str,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Re-order each user's events inside each day: "shuffle" (random) or "reverse" (descending ASIN)."""
    out = []
    for s, t in zip(seqs, ts, strict=True):
        key = rng.random(len(s)) if mode == "shuffle" else -np.arange(len(s))
        out.append(s[np.lexsort((key, t))])
    return out


def _read_asins(data_dir: Path, ds: SequenceDataset) -> np.ndarray:
    """ASIN of each vocabulary index (index 0 = padding, '')."""
    path = _dir(data_dir, "amazon-beauty") / "Beauty_5core_timestamped.tsv.gz"
    by_id: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        ci, ca = header.index("item_id"), header.index("asin")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            by_id[parts[ci]] = parts[ca]
    return np.array([""] + [by_id[i] for i in ds.item_ids], dtype=object)


def beauty_report(data_dir: Path) -> dict[str, Any]:
    ds = load_dataset("amazon-beauty", data_dir)
    seqs, ts = ds.items, ds.ts
    N = ds.num_items
    n = np.array([len(s) for s in seqs])
    if (n < 3).any():
        raise ValueError("every Beauty user should have >= 3 events (5-core)")
    out: dict[str, Any] = {"summary": ds.summary()}

    # 1. Trivial baselines, validation vs test (and the project's own popularity baseline as a cross-check).
    pop_r = {sp: popularity_ranks(seqs, N, sp) for sp in SPLITS}
    tr = {sp: transition_ranks(seqs, N, sp) for sp in SPLITS}
    out["project_popularity"] = {sp: {k: round(v, 5) for k, v in evaluate_popularity(ds, split=sp).items()
                                      if k in ("ndcg@10", "hr@10")} for sp in SPLITS}
    out["popularity"] = {sp: _summary(pop_r[sp]) for sp in SPLITS}
    out["popularity"]["valid_minus_test"] = _paired_bootstrap(_ndcg10(pop_r["valid"]), _ndcg10(pop_r["test"]))
    out["transition"] = {sp: {**_summary(tr[sp][0]), "prev_to_target_seen_in_train": round(float(tr[sp][1].mean()), 4)}
                         for sp in SPLITS}
    out["transition"]["valid_minus_test"] = _paired_bootstrap(_ndcg10(tr["valid"][0]), _ndcg10(tr["test"][0]))

    # 2. Target popularity in the training part (events before the validation target; same counts for both).
    train_cnt = np.zeros(N + 1, np.int64)
    for s in seqs:
        np.add.at(train_cnt, s[:-2], 1)
    order = np.argsort(-train_cnt[1:], kind="stable")
    pop_rank = np.empty(N + 1, np.int64)
    pop_rank[1 + order] = np.arange(N)
    pop_rank[0] = -1
    tgt = {"valid": np.array([s[-2] for s in seqs]), "test": np.array([s[-1] for s in seqs])}
    gap = {"valid": np.array([t[-2] - t[-3] for t in ts]) // DAY, "test": np.array([t[-1] - t[-2] for t in ts]) // DAY}
    out["targets"] = {sp: {
        "train_count_0": round(float((train_cnt[tgt[sp]] == 0).mean()), 4),
        "train_count_le2": round(float((train_cnt[tgt[sp]] <= 2).mean()), 4),
        "train_count_median": float(np.median(train_cnt[tgt[sp]])),
        "train_count_mean": round(float(train_cnt[tgt[sp]].mean()), 2),
        "train_pop_rank_median": float(np.median(pop_rank[tgt[sp]])),
        "in_train_top100": round(float((pop_rank[tgt[sp]] < 100).mean()), 4),
        "gap_days_median": float(np.median(gap[sp])),
        "same_day_as_previous": round(float((gap[sp] == 0).mean()), 4),
        "repeat_of_own_history": round(float(np.mean([s[-2 if sp == "valid" else -1] in set(
            s[: -2 if sp == "valid" else -1].tolist()) for s in seqs])), 4),
        "target_day_median": str(np.datetime64(int(np.median([t[-2 if sp == "valid" else -1] for t in ts])), "s"))[:10],
    } for sp in SPLITS}
    out["targets"]["valid_equals_test"] = round(float((tgt["valid"] == tgt["test"]).mean()), 4)

    # 3. Within-day tie order: Amazon rows of one day follow ASIN order, so the day's last item has the largest ASIN.
    asin = _read_asins(data_dir, ds)
    pairs = asc = 0
    for s, t in zip(seqs, ts, strict=True):
        same = t[1:] == t[:-1]
        pairs += int(same.sum())
        asc += int(sum(asin[a] < asin[b] for a, b in zip(s[:-1][same], s[1:][same], strict=True)))
    # ASIN order vs item age: first day the item appears anywhere in the data.
    first = np.full(N + 1, np.iinfo(np.int64).max)
    for s, t in zip(seqs, ts, strict=True):
        np.minimum.at(first, s, t)
    asin_rank = np.empty(N, np.int64)
    asin_rank[np.argsort(asin[1:].astype(str), kind="stable")] = np.arange(N)
    first_rank = np.argsort(np.argsort(first[1:], kind="stable"), kind="stable")
    same_vt = np.array([t[-1] == t[-2] for t in ts])
    out["tie_order"] = {
        "same_day_adjacent_pairs": pairs,
        "asin_ascending_within_day": round(asc / max(pairs, 1), 4),
        "spearman_asin_vs_first_review_day": round(float(np.corrcoef(asin_rank, first_rank)[0, 1]), 3),
        "spearman_asin_vs_train_count": round(float(np.corrcoef(
            asin_rank, np.argsort(np.argsort(train_cnt[1:], kind="stable"), kind="stable"))[0, 1]), 3),
        "users_valid_test_same_day": round(float(same_vt.mean()), 4),
        "users_valid_same_day_as_last_train": round(float(np.mean([t[-2] == t[-3] for t in ts])), 4),
    }

    # 4. Strata: users whose validation and test targets share a day (order inside it = ASIN order) vs not.
    strata: dict[str, Any] = {}
    for name, mask in (("same_day", same_vt), ("different_days", ~same_vt)):
        row: dict[str, Any] = {"users": int(mask.sum())}
        for sp in SPLITS:
            row[f"pop_{sp}"] = _summary(pop_r[sp][mask])["ndcg@10"]
            row[f"trans_{sp}"] = _summary(tr[sp][0][mask])["ndcg@10"]
            row[f"train_count_median_{sp}"] = float(np.median(train_cnt[tgt[sp][mask]]))
        row["pop_valid_minus_test"] = _paired_bootstrap(_ndcg10(pop_r["valid"][mask]), _ndcg10(pop_r["test"][mask]))
        row["trans_valid_minus_test"] = _paired_bootstrap(_ndcg10(tr["valid"][0][mask]), _ndcg10(tr["test"][0][mask]))
        strata[name] = row
    out["strata"] = strata
    # Each split's targets by whether they share a day with the event before them (a same-day basket successor).
    by_gap: dict[str, Any] = {}
    for sp in SPLITS:
        for name, mask in (("same_day_as_previous", gap[sp] == 0), ("later_day", gap[sp] > 0)):
            by_gap[f"{sp}_{name}"] = {"users": int(mask.sum()), "pop_ndcg@10": _summary(pop_r[sp][mask])["ndcg@10"],
                                      "trans_ndcg@10": _summary(tr[sp][0][mask])["ndcg@10"],
                                      "train_count_median": float(np.median(train_cnt[tgt[sp][mask]]))}
    out["by_gap_to_previous"] = by_gap

    # 5. Counterfactual within-day orders: the same events, ties re-ordered (random: 3 seeds; reversed ASIN).
    cf: dict[str, Any] = {}
    for mode, seeds in (("shuffle", (0, 1, 2)), ("reverse", (0,))):
        vals: dict[str, list[float]] = {f"{m}_{sp}": [] for m in ("pop", "trans") for sp in SPLITS}
        for seed in seeds:
            alt = _reorder_within_day(seqs, ts, mode, np.random.default_rng(seed))
            for sp in SPLITS:
                vals[f"pop_{sp}"].append(_summary(popularity_ranks(alt, N, sp))["ndcg@10"])
                vals[f"trans_{sp}"].append(_summary(transition_ranks(alt, N, sp)[0])["ndcg@10"])
        cf[mode] = {k: round(float(np.mean(v)), 5) for k, v in vals.items()}
        cf[mode]["seeds"] = len(seeds)
    out["within_day_reordered"] = cf
    return out


def movielens_report(data_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("ml-100k", "ml-1m"):
        ds = load_dataset(name, data_dir)
        r = {sp: popularity_ranks(ds.items, ds.num_items, sp) for sp in SPLITS}
        out[name] = {sp: {k: round(v, 5) for k, v in evaluate_popularity(ds, split=sp).items()
                          if k in ("ndcg@10", "hr@10")} for sp in SPLITS}
        out[name]["valid_minus_test"] = _paired_bootstrap(_ndcg10(r["valid"]), _ndcg10(r["test"]))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    report = {"amazon-beauty": beauty_report(args.data_dir), "movielens": movielens_report(args.data_dir)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
