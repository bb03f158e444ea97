"""A table restore whose changelog records the Kafka client took but never handed on (issue 6).

The scale-out test once hung this way: a survivor's recovery waited forever for changelog records that the
broker served (RELIABILITY.md). Here a real `genrec worker` is made to lose a range of restored records
on purpose (tests/streams/inject/sitecustomize.py), on an empty state directory, with the value of the probe
user among them. The recovery watch (streams/recovery_watch.py) must notice the stall, seek back, and the
worker must turn ready with every record restored: the probe's request is answered with the very list
the same model gives for the value written last. Without the watch's seek the worker never becomes ready
(checked by hand with GENREC_RECOVERY_STALL_S=100000: still 503 after 120 s).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from genrec.ops.bench_stream import scrape
from genrec.ops.cluster import LocalCluster
from genrec.schemas.messages import RecRequest, RecResult, encode

from tests.streams.conftest import FAST_GROUP_ENV, produce, read_until, values
from tests.streams.prefilled import expected_items, prefill_history_changelog

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

N_USERS = 1_500
LOST = 120  # records before the probe's, and the probe's own, that recovery never gets the first time
STALL_S = 3.0
NOW = int(time.time() * 1000) - 3_600_000
INJECT = Path(__file__).parent / "inject"


def test_a_restore_that_lost_records_is_noticed_sought_back_and_completed(
    bootstrap: str, checkpoint: Path, tmp_path: Path
) -> None:
    filled = prefill_history_changelog(bootstrap, "genrec-stall", N_USERS, NOW)
    topics, app_id, changelog = filled.topics, filled.app_id, filled.changelog
    partition, offset = filled.partition, filled.offset
    assert offset >= LOST, "too few records on the probe's partition to lose a range before it"

    env = {
        **FAST_GROUP_ENV,
        **topics.env(),
        "GENREC_RECOVERY_STALL_S": str(STALL_S),
        "GENREC_TEST_LOSE_RESTORE": f"{partition}:{offset - LOST + 1}:{LOST}",
        "PYTHONPATH": str(INJECT),
    }
    cluster = LocalCluster(bootstrap, checkpoint, tmp_path, app_id, env)
    try:
        rep = cluster.start("r1")
        t0 = time.monotonic()
        while True:
            assert rep.alive, f"worker exited with {rep.proc.returncode}\n{cluster.log_tail()}"
            got = rep.ready_state(timeout_s=1.0)
            if got is not None and got[0] == 200:
                break
            assert time.monotonic() - t0 < 120, f"never ready: {got}\n{cluster.log_tail()}"
            time.sleep(0.2)

        log = cluster.log_path.read_text(errors="replace")
        lost = [ln for ln in log.splitlines() if ln.startswith("inject: lost changelog record")]
        assert len(lost) == LOST, f"the fault was not injected as asked: {lost[:3]}\n{cluster.log_tail()}"
        assert f"recovery of {changelog}[{partition}] made no progress" in log
        assert scrape(rep.port).get("genrec_recovery_stalls_total", 0.0) >= 1

        req = RecRequest(request_id="probe-1", user_id="probe", ts=NOW + 60_000, k=10, exclude_seen=True)
        produce(bootstrap, [(topics.requests, b"probe", encode(req))])
        recs = read_until(bootstrap, topics.results, lambda r: any(v["request_id"] == "probe-1" for v in values(r)), 60)
        (result,) = [RecResult.model_validate(v) for v in values(recs) if v["request_id"] == "probe-1"]
    finally:
        cluster.stop_all()

    # Restored, not an empty history: the very list of the value written last.
    assert [i.item_id for i in result.items] == expected_items(checkpoint, req, filled.probe)
