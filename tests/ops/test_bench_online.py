"""`genrec bench online`: the time split and the scoring, a short run through the real broker, two infer
workers and the trainer on generated data, and a SIGTERM that must stop everything the bench started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from genrec.model.data import synthetic_dataset
from genrec.ops.bench_online import (
    global_order,
    ndcg_hr,
    prefix_dataset,
    restrict_users,
    run_bench_online,
    seen_vocabulary,
    summarize,
)
from genrec.ops.bench_stream import genrec_command

from tests.conftest import process_alive, require_broker_binary


def test_global_order_and_prefix_cut_by_time() -> None:
    ds = restrict_users(synthetic_dataset(n_users=30, events_per_user=10), 30)
    u, p, ts = global_order(ds)
    assert len(u) == ds.num_events and np.all(np.diff(ts) >= 0)
    # Each user's events appear in their own order.
    for user in range(len(ds.user_ids)):
        assert list(p[u == user]) == list(range(len(ds.items[user])))
    cutoff = int(0.7 * len(u))
    pre = prefix_dataset(ds, u, p, cutoff)
    assert pre.num_events == cutoff
    t_cut = ts[cutoff]
    for user in range(len(ds.user_ids)):
        n = len(pre.items[user])
        assert np.all(pre.ts[user] <= t_cut)
        assert n == len(ds.items[user]) or ds.ts[user][n] >= t_cut  # nothing later than the cut was kept


def test_seen_vocabulary_keeps_only_the_items_of_the_prefix() -> None:
    ds = restrict_users(synthetic_dataset(n_users=30, events_per_user=10), 30)
    u, p, _ = global_order(ds)
    pre = prefix_dataset(ds, u, p, 50)
    seen = seen_vocabulary(pre)
    named = {ds.item_ids[int(i) - 1] for x in pre.items for i in x}
    assert set(seen.item_ids) == named and len(seen.item_ids) < len(ds.item_ids)
    assert [i for i in ds.item_ids if i in named] == seen.item_ids  # the data set's order
    for a, b in zip(pre.items, seen.items, strict=True):  # the same events, re-indexed
        assert [pre.item_ids[int(i) - 1] for i in a] == [seen.item_ids[int(i) - 1] for i in b]


def test_new_item_targets_and_the_retrain_baseline_are_reported_apart() -> None:
    rows = [{"event": 100 + i, "new_item": i < 4, "version": "x-online-s1",
             "frozen_ndcg": 0.0, "frozen_hr": 0.0, "online_ndcg": 1.0 if i < 4 else 0.5, "online_hr": 1.0,
             "retrain_ndcg": 0.25, "retrain_hr": 1.0} for i in range(10)]
    s = summarize(rows, 100, 10, [1.0], n_windows=2)
    new, known = s["new_item_targets"], s["known_item_targets"]
    assert new["requests"] == 4 and known["requests"] == 6 and new["share"] == 0.4
    assert new["online_ndcg@10"] == 1.0 and known["online_ndcg@10"] == 0.5 and new["frozen_ndcg@10"] == 0.0
    assert new["online_minus_frozen_ndcg@10"]["mean"] == 1.0 and known["online_minus_retrain_ndcg@10"]["mean"] == 0.25
    assert s["retrain_ndcg@10"] == 0.25 and s["retrain_minus_frozen_ndcg@10"]["mean"] == 0.25
    assert s["windows"][0]["retrain_ndcg@10"] == 0.25


def test_scoring_and_windows() -> None:
    assert ndcg_hr(["a", "b", "c"], "a") == (1.0, 1.0)
    assert ndcg_hr(["a", "b", "c"], "c") == pytest.approx((0.5, 1.0))
    assert ndcg_hr(["a"] * 10 + ["t"], "t") == (0.0, 0.0)  # rank 11 is outside @10
    rows = [{"event": 100 + i, "frozen_ndcg": 0.0, "frozen_hr": 0.0, "online_ndcg": 1.0, "online_hr": 1.0,
             "version": "x-online-s1"} for i in range(10)]
    s = summarize(rows, 100, 20, [1.0, 3.0], n_windows=2)
    assert s["frozen_ndcg@10"] == 0.0 and s["online_ndcg@10"] == 1.0 and s["requests"] == 10
    assert [w["requests"] for w in s["windows"]] == [10, 0] and s["windows"][1]["online_ndcg@10"] is None
    assert s["serve_delay"]["wave_events_sent_to_online_serving_s_mean"] == 2.0
    gain = s["online_minus_frozen_ndcg@10"]
    assert gain["mean"] == 1.0 and gain["requests_online_better"] == 10 and gain["requests_frozen_better"] == 0


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_prequential_run_through_the_broker(tmp_path: Path) -> None:
    require_broker_binary()
    result = run_bench_online(
        "synthetic", None, users=60, wave=200, epochs=1, events=600, work_dir=tmp_path, plot=tmp_path / "p.png",
        progress=False, vocabulary="seen", retrain_every=1,
        # Publishing must happen for the swap to be observable; the gate itself is tested in tests/model.
        online_env={"GENREC_TRAINER_ONLINE__TOLERANCE": "1.0", "GENREC_TRAINER_ONLINE__MIN_HOLDOUT": "5"},
    )
    assert result["requests"] > 0
    assert 0.0 <= result["frozen_ndcg@10"] <= 1.0 and 0.0 <= result["online_ndcg@10"] <= 1.0
    assert result["versions_published"] >= 1 and result["online_worker_swaps"] >= 1
    # Later waves were answered by a version the trainer published (results name their model version).
    assert result["online_served_by_updated_model"] > 0
    assert result["trainer"]["steps"] > 0 and result["trainer"]["rows_per_s"] > 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert len(result["windows"]) == 10
    # The starting model knows only the first 70 %'s items; the new-item split and the retrain baseline are there.
    assert result["vocabulary"] == "seen" and result["base_items"] <= 300
    parts = result["new_item_targets"]["requests"] + result["known_item_targets"]["requests"]
    assert parts == result["requests"]
    assert result["retrain"]["retrains"] == 2 and 0.0 <= result["retrain_ndcg@10"] <= 1.0
    assert "new_item_first_event_to_servable_s" in result["delay"]


def test_paired_difference_interval() -> None:
    from genrec.ops.bench_online import paired_diff_ci

    rng = np.random.default_rng(1)
    a = rng.random(400)
    mean, lo, hi = paired_diff_ci(a, a + 0.05)  # a constant gain: no spread at all
    assert mean == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    b = a + rng.normal(0.0, 0.2, 400)  # no gain, noise only: the interval holds 0 and has the noise's width
    mean, lo, hi = paired_diff_ci(a, b)
    assert lo < 0.0 < hi and 0.02 < hi - lo < 0.06
    assert paired_diff_ci(np.array([]), np.array([])) == (0.0, 0.0, 0.0)


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Linux)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_stops_the_broker_and_the_workers_the_bench_started(tmp_path: Path) -> None:
    require_broker_binary()
    log = tmp_path / "bench.log"
    started: set[int] = set()
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*genrec_command(), "bench", "online", "--dataset", "synthetic", "--users", "40", "--events", "400",
             "--wave", "100", "--epochs", "1", "--work-dir", str(tmp_path), "--plot", str(tmp_path / "p.png")],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        t0 = time.monotonic()
        while "workers ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() - t0 < 240, "the bench never got its workers ready"
            time.sleep(0.5)
        started = _descendants(proc.pid)
        assert len(started) >= 4, started  # the broker and three workers, at least
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        t1 = time.monotonic()
        while any(process_alive(p) for p in started) and time.monotonic() - t1 < 30:
            time.sleep(0.5)
        left = {p for p in started if process_alive(p)}
        assert not left, f"still running after the bench ended: {left}"
    finally:
        for p in [proc.pid, *started]:
            if process_alive(p):  # a failed run must not leave its broker and workers behind for the next tests
                os.kill(p, signal.SIGKILL)
