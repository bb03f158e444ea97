"""`genrec bench chaos`: one seeded kill run end to end (real broker, real worker, two SIGKILLs), and the
summary arithmetic on made-up runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from genrec.ops.bench_chaos import latency_summary, parse_env, request_latencies, summarize
from genrec.ops.chaos import Replay, Topics, history_errors
from genrec.streams import history_codec

from tests.conftest import require_broker_binary

KEYS = {
    "runs",
    "lost_requests",
    "lost_events",
    "duplicated_events",
    "duplicate_results",
    "seeds",
    "per_run",
    "first_answer_after_restart_s",
    "request_latency_s",
}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_run_kills_before_the_first_commit_and_loses_nothing(checkpoint: Path) -> None:
    require_broker_binary()
    cmd = [
        sys.executable,
        "-m",
        "genrec.ops.cli",
        "bench",
        "chaos",
        "--runs",
        "1",
        "--seed",
        "7",
        "--seconds",
        "12",
        "--checkpoint",
        str(checkpoint),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=220, env=env, cwd=Path(__file__).parents[2])
    assert proc.stdout.strip(), proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.keys() >= KEYS
    assert proc.returncode == 0, (out, proc.stderr[-3000:])
    assert out["runs"] == 1 and out["seeds"] == [7] and out["failed_runs"] == 0
    assert (out["lost_requests"], out["lost_events"], out["duplicated_events"]) == (0, 0, 0)
    run = out["per_run"][0]
    assert run["requests"] > 0 and run["events"] > 0 and run["results"] >= run["requests"]
    assert out["duplicate_results"] == run["results"] - run["requests"]
    assert len(run["kills"]) == 2 and all(k["worker"] == f"w{i + 2}" for i, k in enumerate(run["kills"]))
    # The first kill found partitions the worker had never committed (the issue-19 case).
    assert run["kills"][0]["committed"]["never_committed_partitions"] >= 1
    rec = out["first_answer_after_restart_s"]
    assert rec["n"] == 2 and 0 < rec["p50"] <= rec["max"] < 120
    lat = out["request_latency_s"]
    assert lat["n"] == run["requests"] and 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 120


def _history(pairs: list[tuple[str, int]]) -> history_codec.RawHistory:
    return history_codec.RawHistory(item_ids=[i for i, _ in pairs], ts_ms=np.array([t for _, t in pairs]))


def test_history_errors_count_lost_and_duplicated_events() -> None:
    import random

    replay = Replay(Topics.unique())
    replay.add_events(["a", "b", "c"], 3, random.Random(0))
    a, b, c = (replay.events[u] for u in "abc")
    hist = {"a": _history(a), "b": _history([b[0], b[0], b[1], b[2]]), "c": _history(c[:1])}
    assert history_errors(hist, replay) == (2, 1, ["b", "c"])
    assert history_errors({"a": _history(a)}, replay) == (6, 0, ["b", "c"])


def test_summary_totals_and_recovery_percentiles() -> None:
    def run(seed: int, lost: int, recs: list[float | None], **extra: object) -> dict[str, object]:
        kills = [
            {"first_answer_s": r, "committed": {"never_committed_partitions": 6 if i == 0 else 0}}
            for i, r in enumerate(recs)
        ]
        return {
            "seed": seed,
            "requests": 10,
            "events": 10,
            "lost_requests": lost,
            "lost_events": 0,
            "duplicated_events": 0,
            "duplicate_results": 1,
            "kills": kills,
            "log_problems": [],
            "alive_at_end": True,
            **extra,
        }

    out = summarize([run(1, 0, [1.0, 3.0]), run(2, 2, [2.0, None]), {"seed": 3, "error": "x"}], [1, 2, 3], {})
    assert out["runs"] == 3 and out["failed_runs"] == 2 and out["lost_requests"] == 2  # a loss fails its run
    assert out["duplicate_results"] == 2 and out["kills"] == 4 and out["kills_with_a_never_committed_partition"] == 2
    assert out["first_answer_after_restart_s"] == {"p50": 2.0, "max": 3.0, "n": 3}
    json.dumps(out, allow_nan=False)  # strict JSON


def test_request_latency_is_first_result_minus_request_timestamp() -> None:
    class Rec:
        def __init__(self, ts: int, rid: str) -> None:
            self.timestamp, self.value = ts, json.dumps({"request_id": rid}).encode()

    requests = [Rec(1000, "a"), Rec(2000, "b"), Rec(2500, "a"), Rec(3000, "c")]  # "a" sent twice: first counts
    results = [Rec(4000, "a"), Rec(1500, "a"), Rec(2100, "b")]  # "a" answered twice: first counts; "c" never
    assert sorted(request_latencies(requests, results)) == [0.1, 0.5]
    assert latency_summary([]) == {"p50": None, "p99": None, "max": None, "n": 0}
    xs = [float(i) for i in range(1, 101)]
    assert latency_summary(xs) == {"p50": 50.0, "p99": 99.0, "max": 100.0, "n": 100}


def test_summary_pools_request_latencies_over_runs() -> None:
    runs = [{"seed": 1, "kills": [], "latencies": [0.1, 0.2]}, {"seed": 2, "kills": [], "latencies": [9.0]}]
    out = summarize(runs, [1, 2], {})
    assert out["request_latency_s"] == {"p50": 0.2, "p99": 9.0, "max": 9.0, "n": 3}
    assert all("latencies" not in r for r in out["per_run"])  # the raw list is not printed


def test_worker_env_takes_only_genrec_settings() -> None:
    assert parse_env(["GENREC_SESSION_TIMEOUT_S=2"]) == {"GENREC_SESSION_TIMEOUT_S": "2"}
    for bad in ("PATH=/tmp", "GENREC_X"):
        with pytest.raises(ValueError):
            parse_env([bad])
