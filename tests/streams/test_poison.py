"""A request that crashes or hangs the model (issue 19 item 4), against a real `genrec worker`.

The inference child dies on (crash) or never answers (hang) any batch holding the marker request
(tests/streams/inject/sitecustomize.py). Before, the worker crashed with its batch unacked, met the same
request after every restart, and crashed again: a loop. Now the runner kills and restarts the child
(streams/inference_process.py), the worker serves the batch one request at a time, dead-letters the marker as
`poison` after 3 failed calls, and answers every other request; the same worker process stays up and healthy.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from genrec.ops.bench_stream import http_get
from genrec.schemas.messages import DeadLetter, RecRequest, decode, encode

from tests.streams.conftest import WorkerHandle, produce, read_until, values

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

INJECT = Path(__file__).parent / "inject"
POISON_K = 977  # the marker (tests/streams/inject/sitecustomize.py)
NOW = int(time.time() * 1000) - 3_600_000


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_request_that_crashes_or_hangs_the_model_is_dead_lettered_and_the_rest_answered(
    worker_factory, fault: str
) -> None:
    w: WorkerHandle = worker_factory()
    w.extra_env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(INJECT), os.environ.get("PYTHONPATH", "")) if p),
        "GENREC_TEST_POISON": fault,
        "GENREC_INFERENCE_TIMEOUT_S": "3",  # the hang is noticed after this
        "GENREC_MAX_WAIT_MS": "200",  # the marker shares its batch with others
    }
    w.start()
    pid = w.proc.pid
    tag = uuid.uuid4().hex[:6]
    ids = [f"{tag}-{i}" for i in range(10)]
    marker = ids[4]
    reqs = [
        (w.topics.requests, f"u{i}".encode(),
         encode(RecRequest(request_id=rid, user_id=f"u{i}", ts=NOW, k=POISON_K if rid == marker else 5)))
        for i, rid in enumerate(ids)
    ]
    produce(w.bootstrap, reqs)

    answered = read_until(w.bootstrap, w.topics.results,
                          lambda r: {v["request_id"] for v in values(r)} >= set(ids) - {marker}, 120)
    got = {v["request_id"] for v in values(answered)}
    assert got >= set(ids) - {marker}, f"unanswered: {set(ids) - {marker} - got}\n{w.log_tail()}"
    assert marker not in got
    dls = read_until(w.bootstrap, w.topics.deadletter, lambda r: len(r) >= 1, 60)
    letters = [decode(DeadLetter, r.value) for r in dls]
    assert [(d.reason, json.loads(d.record()[1])["request_id"]) for d in letters] == [("poison", marker)], (
        f"{letters}\n{w.log_tail()}"
    )
    log = w.log_path.read_text(errors="replace")
    assert log.count("inject: poison request") == 3, w.log_tail()  # max_attempts calls, no more

    # The same worker process, up and healthy, serves on.
    assert w.proc.poll() is None and w.proc.pid == pid and w.starts == 1
    status, body = http_get(w.port, "/health")
    assert status == 200, body
    after = f"{tag}-after"
    produce(w.bootstrap, [(w.topics.requests, b"u1", encode(RecRequest(request_id=after, user_id="u1", ts=NOW, k=5)))])
    more = read_until(w.bootstrap, w.topics.results, lambda r: after in {v["request_id"] for v in values(r)}, 60)
    assert after in {v["request_id"] for v in values(more)}, w.log_tail()
