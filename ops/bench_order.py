"""`genrec bench order`: which sort key serves the next click best — the joint key, the ranking head, or the
retriever (model/serving.py).

Protocol: the data set in global time order; the starting model of `genrec bench online` (the preset trained on
the first 70 % of events, reused from the same work dir); every click of the last 30 % is a request at that
click's time from the user's whole history before it (no learning meanwhile), k=10, seen items excluded,
K'=200, scored against that click (NDCG@10, HR@10). The three orders serve the very same retrieved candidates.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ORDERS = ("joint", "ranking", "retrieval")


def run_bench_order(dataset: str, data_dir: Path | None, *, work_dir: Path, epochs: int | None = None,
                    users: int | None = None, max_requests: int | None = None, batch: int = 256) -> dict[str, Any]:
    import torch
    from genrec.model.checkpoint import load_checkpoint
    from genrec.model.data import load_dataset
    from genrec.model.serving import Recommender
    from genrec.model.tokens import Action, History
    from genrec.ops.bench_online import global_order, restrict_users, starting_model

    torch.set_num_threads(int(os.environ.get("GENREC_TORCH_THREADS", "1")))
    t0 = time.time()
    ds = load_dataset(dataset, data_dir)
    if users:
        ds = restrict_users(ds, users)
    u_of, p_of, ts_of = global_order(ds)
    cutoff = int(0.7 * len(u_of))
    base, _ = starting_model(ds, u_of, p_of, cutoff, work_dir, epochs)
    ckpt = load_checkpoint(base)
    if not ckpt.model.cfg.ranking_trained:
        raise ValueError(f"{dataset}: the model has no trained ranking head, every order is the retriever's")
    requests = [i for i in range(cutoff, len(u_of))
                if int(p_of[i]) > 0 and int(ds.actions[int(u_of[i])][int(p_of[i])]) != int(Action.NEGATIVE)]
    if max_requests:
        requests = requests[:max_requests]
    recs = {o: Recommender(ckpt, device="cpu", order=o) for o in ORDERS}
    sums = {o: [0.0, 0.0] for o in ORDERS}
    for j in range(0, len(requests), batch):
        chunk = requests[j : j + batch]
        hists, now, want = [], [], []
        for i in chunk:
            u, p = int(u_of[i]), int(p_of[i])
            hists.append(History(np.asarray(ds.items[u][:p], np.int32), np.asarray(ds.actions[u][:p], np.int8),
                                 np.asarray(ds.ts[u][:p], np.int64) * 1000))
            now.append(int(ts_of[i]) * 1000)
            want.append(ds.item_ids[int(ds.items[u][p]) - 1])
        for o, rec in recs.items():
            for w, got in zip(want, rec.recommend(hists, 10, True, now_ms=now), strict=True):
                for r in got:
                    if r.item_id == w:
                        sums[o][0] += 1.0 / math.log2(r.rank + 1)
                        sums[o][1] += 1.0
                        break
    n = max(len(requests), 1)
    rows = {o: {"ndcg@10": round(s[0] / n, 4), "hr@10": round(s[1] / n, 4)} for o, s in sums.items()}
    return {"dataset": ds.name, "requests": len(requests), "cutoff_events": cutoff, "base": str(base),
            "rows": rows, "joint_over_ranking_ndcg@10": round(rows["joint"]["ndcg@10"] /
                                                            max(rows["ranking"]["ndcg@10"], 1e-9), 2),
            "joint_over_retrieval_ndcg@10": round(rows["joint"]["ndcg@10"] /
                                                  max(rows["retrieval"]["ndcg@10"], 1e-9), 3),
            "seconds": round(time.time() - t0, 1)}


def register(app: Any, bench_app: Any) -> None:
    import typer

    def cmd(
        dataset: str = typer.Option("ml-100k", "--dataset"),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder holding the data set (../shared/data)."),
        epochs: int | None = typer.Option(None, "--epochs", help="Epochs of the starting model on the first 70 % "
                                          "(default: the preset's, with its early stopping)."),
        users: int | None = typer.Option(None, "--users", help="Only the first N users of the data set."),
        max_requests: int | None = typer.Option(None, "--max-requests", help="Only the first N clicks after the cut."),
        work_dir: Path = typer.Option(Path("runs/bench-online"), "--work-dir", help="Where the starting model is."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object last on stdout."),
    ) -> None:
        """Next-click NDCG@10/HR@10 of the served list under each serving order (joint, ranking, retrieval)."""
        result = run_bench_order(dataset, data_dir, work_dir=work_dir, epochs=epochs, users=users,
                                 max_requests=max_requests)
        if json_out:
            sys.stdout.write(json.dumps(result) + "\n")
        else:
            typer.echo(json.dumps(result, indent=2))

    bench_app.command("order")(cmd)
