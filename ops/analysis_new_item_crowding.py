"""Do untrained new items crowd the known ones out of served lists (issue 20 item 2)? One checkpoint, no broker.

The online trainer grows the item tables for items first seen on the stream (model/vocab.py). This grows a
checkpoint by M made-up items exactly as the trainer does, before any training, and serves the same users with
the original and the grown model (model/serving.py, as the worker serves): the share of top-k slots the new items
take is what a published version would show before those items had any clicks to learn from. Users: a random
sample of the data set's users (the prefix before a global-time cut, as `genrec bench online` replays).

    python -m genrec.ops.analysis_new_item_crowding --checkpoint CKPT --dataset amazon-beauty \\
        --data-dir ../shared/data --users 10000 --new 100,1091

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from genrec.model.checkpoint import load_checkpoint, save_checkpoint
from genrec.model.data import load_dataset
from genrec.model.serving import Recommender
from genrec.model.vocab import grow_items
from genrec.ops.bench_online import global_order, prefix_dataset, restrict_users


def crowding(ckpt_path: Path, dataset: str, data_dir: Path | None, *, users: int | None = None, sample: int = 1500,
             new: Sequence[int] = (100, 1000), k: int = 10, cut: float = 0.7, seed: int = 0) -> dict[str, Any]:
    ck = load_checkpoint(ckpt_path)
    ds = load_dataset(dataset, data_dir)
    if users:
        ds = restrict_users(ds, users)
    u_of, p_of, _ = global_order(ds)
    pre = prefix_dataset(ds, u_of, p_of, int(cut * len(u_of)))
    known = set(ck.item_ids)
    rng = np.random.default_rng(seed)
    # Users with at least one event before the cut whose items the checkpoint knows (its vocabulary may be the
    # prefix's own, `--vocabulary seen`).
    picked = [int(i) for i in rng.permutation(len(pre.items))
              if len(pre.items[i]) and all(ds.item_ids[int(x) - 1] in known for x in pre.items[i])][:sample]

    def lists(rec: Recommender) -> list[list[str]]:
        out: list[list[str]] = []
        for s in range(0, len(picked), 256):
            hs = [rec.history_from_raw([ds.item_ids[int(x) - 1] for x in pre.items[i]],
                                       [int(a) for a in pre.actions[i]], [int(t) * 1000 for t in pre.ts[i]])
                  for i in picked[s:s + 256]]
            out += [[r.item_id for r in served] for served in rec.recommend(hs, k)]
        return out

    base = lists(Recommender(ck))
    rows = []
    for m in new:
        new_ids = [f"genrec-new-item-{j}" for j in range(m)]
        grown, vocab = grow_items(ck.model, ck.item_ids, new_ids, seed=seed,
                                  popularity=ck.meta.get("item_popularity"))
        with tempfile.TemporaryDirectory(prefix="genrec-crowding-") as d:
            save_checkpoint(Path(d) / "grown", grown, vocab, dataset=ck.meta.get("dataset", dataset),
                            train_config=ck.meta.get("train_config", {}))
            served = lists(Recommender(load_checkpoint(Path(d) / "grown")))
        fresh = set(new_ids)
        share = np.mean([sum(x in fresh for x in s) / max(len(s), 1) for s in served])
        rows.append({
            "new_items": m,
            "share_of_slots_new": round(float(share), 4),
            "lists_with_a_new_item": round(float(np.mean([any(x in fresh for x in s) for s in served])), 4),
            "known_items_kept_of_base_top_k": round(float(np.mean(
                [len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(base, served, strict=True)])), 4),
        })
    return {"checkpoint": str(ckpt_path), "dataset": dataset, "users_sampled": len(picked), "k": k, "seed": seed,
            "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genrec.ops.analysis_new_item_crowding",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--users", type=int, default=None, help="only the data set's first N users (bench online --users)")
    ap.add_argument("--sample", type=int, default=1500, help="users served per model")
    ap.add_argument("--new", default="100,1000", help="comma-separated counts of new items")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(json.dumps(crowding(a.checkpoint, a.dataset, a.data_dir, users=a.users, sample=a.sample,
                              new=[int(x) for x in a.new.split(",") if x], seed=a.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
