"""A changelog record the broker never confirmed (issue 19): the worker must fail, commit nothing past it,
and a restart must leave every user's history exact.

Faust only logs a failed changelog send and commits the source offset anyway; the history restored from
the changelog (another replica, or an empty state folder) then lacks that event for good. Here a real
`genrec worker` has its changelog send for a user's last event refused (tests/streams/inject/sitecustomize.py),
the worker must exit non-zero by itself, and:

1. restarted on an empty state folder, it rebuilds every history from the changelog and the records after
   the last commit: each user has each event exactly once;
2. a second refused send, then a restart on the same state folder (whose RocksDB holds the write the
   changelog lacks, so the redelivered event would look like a duplicate there): the local tables are
   dropped and rebuilt, and again each history is exact.

The refused record is each time its user's last event, so a later write of that user cannot heal the
changelog: only the redelivery of that very event (no commit past it) can.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from genrec.ops.chaos import Replay, WorkerHandle, produce, wait_histories

from tests.streams.test_chaos import _check_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(360)]

INJECT = Path(__file__).parent / "inject"
PER_USER = 6


def _wait_exit(w: WorkerHandle, timeout_s: float) -> int:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        rc = w.proc.poll()
        if rc is not None:
            return rc
        time.sleep(0.2)
    raise AssertionError(f"the worker did not stop after its changelog send was refused\n{w.log_tail()}")


def test_a_refused_changelog_send_fails_the_worker_and_the_restart_loses_nothing(worker_factory) -> None:
    rng = random.Random(19)
    w: WorkerHandle = worker_factory()
    first_fault, second_fault = w.base / "fault-1", w.base / "fault-2"
    # The last event of users a3 and b2: their PER_USER-th changelog write.
    w.extra_env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(INJECT), os.environ.get("PYTHONPATH", "")) if p),
        "GENREC_TEST_FAIL_CHANGELOG": f"a3:{PER_USER}:{first_fault},b2:{PER_USER}:{second_fault}",
    }
    w.start(state_dir=w.base / "state-1")
    replay = Replay(w.topics)
    replay.add_events([f"a{i}" for i in range(6)], PER_USER, rng)
    produce(w.bootstrap, replay.records)

    rc = _wait_exit(w, 90)
    assert first_fault.exists(), f"the fault was not injected\n{w.log_tail()}"
    assert rc != 0, f"the worker exited cleanly after a refused changelog send\n{w.log_tail()}"
    assert "checkpoint failed" in w.log_path.read_text(errors="replace")

    # 1. An empty state folder: the changelog plus the records after the last commit.
    w.start(state_dir=w.base / "state-2")
    _check_exactly_once(wait_histories(w, replay, 90), replay, w)

    # 2. The same state folder after a second refused send.
    n = len(replay.records)
    replay.add_events([f"b{i}" for i in range(4)], PER_USER, rng)
    produce(w.bootstrap, replay.records[n:])
    rc = _wait_exit(w, 90)
    assert second_fault.exists() and rc != 0, f"second fault: rc={rc}\n{w.log_tail()}"
    w.start(state_dir=w.base / "state-2")
    _check_exactly_once(wait_histories(w, replay, 90), replay, w)
    assert "rebuilding" in w.log_path.read_text(errors="replace")  # the local tables were dropped
    assert w.proc.poll() is None
