"""Readiness while a worker recovers its table (issue 6), against a real `genrec worker` process.

A history changelog of 6k users is written before the worker starts, on an empty state directory, so the
worker must restore every value before it serves. Polled from the process start: the web port answers
early (`/health` 200, `/ready` 503) while the model loads and while the table recovers, `/ready` turns 200
only once both are done, and the first request after that is answered from the recovered history — the
very list the same model gives in this process for the value written last to the changelog. Then
`genrec load` (requests and searches) against that worker: every message answered, a latency report.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from genrec.ops.bench_stream import genrec_command, http_get
from genrec.ops.cluster import LocalCluster
from genrec.schemas.messages import RecRequest, RecResult, encode

from tests.streams.conftest import FAST_GROUP_ENV, read_until, values
from tests.streams.prefilled import PROBE_ITEMS, expected_items, prefill_history_changelog

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

N_USERS = 6_000
NOW = int(time.time() * 1000) - 3_600_000


def test_ready_is_false_while_the_table_recovers_and_true_with_the_history_in_place(
    bootstrap: str, checkpoint: Path, tmp_path: Path
) -> None:
    filled = prefill_history_changelog(bootstrap, "genrec-ready", N_USERS, NOW)  # the probe's value written last
    topics, app_id, changelog = filled.topics, filled.app_id, filled.changelog
    env = {**FAST_GROUP_ENV, **topics.env()}
    cluster = LocalCluster(bootstrap, checkpoint, tmp_path, app_id, env)
    try:
        rep = cluster.start("r1")
        seen: list[tuple[float, int, dict]] = []
        health_while_not_ready: list[int] = []
        t0 = time.monotonic()
        while True:
            assert rep.alive, f"worker exited with {rep.proc.returncode}\n{cluster.log_tail()}"
            assert time.monotonic() - t0 < 240, f"never ready: {seen[-3:]}\n{cluster.log_tail()}"
            got = rep.ready_state(timeout_s=1.0)
            if got is not None:
                seen.append((time.monotonic() - t0, got[0], got[1]))
                if got[0] == 200:
                    break
                if len(health_while_not_ready) < 3:
                    health_while_not_ready.append(http_get(rep.port, "/health")[0])
            time.sleep(0.05)

        not_ready = [s for _, st, s in seen if st != 200]
        assert all(st == 503 for _, st, _ in seen[:-1])
        assert health_while_not_ready and set(health_while_not_ready) == {200}
        # The model's load was seen from outside (the web port is up first; the inference child takes seconds).
        assert any(not s["model_loaded"] for s in not_ready), f"no not-ready answer while the model loaded: {seen[:3]}"
        # The table's recovery was seen from outside, with the model already loaded.
        recovering = [s for s in not_ready if s["model_loaded"] and (s["in_recovery"] or s["rebalancing"])]
        assert recovering, f"no not-ready answer during recovery: {[(t, s) for t, _, s in seen][:5]}"
        assert all(not s["model_loaded"] or not s["recovered"] or s["in_recovery"] or s["rebalancing"]
                   for s in not_ready)
        final = seen[-1][2]
        assert final["model_loaded"] and final["recovered"] and sorted(final["active"][changelog]) == [0, 1, 2]

        req = RecRequest(request_id="probe-1", user_id="probe", ts=NOW + 60_000, k=10, exclude_seen=True)
        from tests.streams.conftest import produce

        produce(bootstrap, [(topics.requests, b"probe", encode(req))])
        recs = read_until(bootstrap, topics.results, lambda r: any(v["request_id"] == "probe-1" for v in values(r)), 60)
        (result,) = [RecResult.model_validate(v) for v in values(recs) if v["request_id"] == "probe-1"]

        # The operators' load generator against the same ready worker: requests and searches, all answered.
        load = subprocess.run(
            [*genrec_command(), "load", "--bootstrap", bootstrap, "--rate", "40", "--duration", "3", "--users", "20",
             "--query-share", "0.5", "--no-progress", "--drain", "60"],
            capture_output=True, text=True, timeout=120, env={**os.environ, **topics.env()},
        )  # fmt: skip
        assert load.returncode == 0, load.stderr[-2000:]
        report = json.loads(load.stdout.strip().splitlines()[-1])
        assert report["sent"] == 120 and report["lost"] == 0 and report["answered"] == 120
        assert 0 < report["sent_queries"] < 120 and report["by_worker"] == {"r1": 120}
        assert 0 <= report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    finally:
        cluster.stop_all()

    assert [i.item_id for i in result.items] == expected_items(checkpoint, req, filled.probe)
    assert not {i.item_id for i in result.items} & set(PROBE_ITEMS)
