"""`genrec bench order`: the three serving orders scored on the same next-click requests, from the starting
model that `genrec bench online` trains and reuses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from genrec.model.checkpoint import load_checkpoint
from genrec.model.data import synthetic_dataset
from genrec.model.serving import Recommender
from genrec.model.tokens import Action, History
from genrec.ops.bench_online import global_order, restrict_users, starting_model
from genrec.ops.bench_order import ORDERS, run_bench_order


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_each_order_is_scored_on_the_same_requests_from_the_shared_starting_model(tmp_path: Path) -> None:
    result = run_bench_order("synthetic", None, work_dir=tmp_path, epochs=2, users=40, max_requests=60)
    assert result["requests"] == 60 and set(result["rows"]) == set(ORDERS)
    # The starting model is the one bench online would train and reuse from the same work dir.
    ds = restrict_users(synthetic_dataset(), 40)
    u_of, p_of, ts_of = global_order(ds)
    cutoff = int(0.7 * len(u_of))
    base, info = starting_model(ds, u_of, p_of, cutoff, tmp_path, 2)
    assert info == {"reused": str(base)} and result["base"] == str(base)
    # Recompute the retrieval order's NDCG@10 by hand on the same 60 clicks.
    rec = Recommender(load_checkpoint(base), device="cpu", order="retrieval")
    clicks = [i for i in range(cutoff, len(u_of)) if int(p_of[i]) > 0
              and int(ds.actions[int(u_of[i])][int(p_of[i])]) != int(Action.NEGATIVE)][:60]
    total = 0.0
    for i in clicks:
        u, p = int(u_of[i]), int(p_of[i])
        hist = History(np.asarray(ds.items[u][:p], np.int32), np.asarray(ds.actions[u][:p], np.int8),
                       np.asarray(ds.ts[u][:p], np.int64) * 1000)
        got = rec.recommend([hist], 10, True, now_ms=[int(ts_of[i]) * 1000])[0]
        want = ds.item_ids[int(ds.items[u][p]) - 1]
        total += next((1.0 / math.log2(r.rank + 1) for r in got if r.item_id == want), 0.0)
    assert result["rows"]["retrieval"]["ndcg@10"] == pytest.approx(total / len(clicks), abs=1e-4)
    for row in result["rows"].values():
        assert 0.0 <= row["ndcg@10"] <= row["hr@10"] <= 1.0
