"""Dead letters redriven to a real worker after a fix (issue 19 item 9).

Two events are refused for being stamped too far ahead of the worker's clock (3 and 60 days; the limit is
one day). The "fix": the worker restarts allowing a week of clock skew. The redrive sends both again: the
first is now appended to its user's history; the second fails again and goes back to the dead letters with its
reason and `redrives = 1`, and the next redrive leaves it there instead of looping.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from genrec.ops.deadletters import redrive
from genrec.schemas.messages import DeadLetter, Event, encode
from genrec.streams import history_codec

from tests.streams.conftest import WorkerHandle, produce, read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

DAY_MS = 86_400_000


def _dead_letters(w: WorkerHandle, n: int) -> list[DeadLetter]:
    recs = read_until(w.bootstrap, w.topics.deadletter, lambda r: len(r) >= n, timeout_s=60)
    assert len(recs) >= n, f"{len(recs)} dead letters, expected {n}\n{w.log_tail()}"
    return [DeadLetter.model_validate_json(r.value) for r in recs]


def test_a_fixed_record_is_processed_and_one_that_fails_again_does_not_loop(worker_factory, monkeypatch) -> None:
    w: WorkerHandle = worker_factory()
    w.start()
    t = w.topics
    now = int(time.time() * 1000)
    fixable = Event(event_id="e-fix", user_id="fix-me", ts=now + 3 * DAY_MS, type="click", item_id="7")
    hopeless = Event(event_id="e-bad", user_id="still-bad", ts=now + 60 * DAY_MS, type="click", item_id="8")
    produce(w.bootstrap, [(t.events, b"fix-me", encode(fixable)), (t.events, b"still-bad", encode(hopeless))])
    first = _dead_letters(w, 2)
    assert {d.reason for d in first} == {"out_of_bounds"} and {d.redrives for d in first} == {0}

    # The fix: a week of allowed clock skew.
    w.stop_all()
    monkeypatch.setenv("GENREC_MAX_AHEAD_S", str(7 * 86_400))
    w.start()
    allowed = [t.events, t.requests]
    rep = asyncio.run(redrive(w.bootstrap, t.deadletter, "out_of_bounds", allowed_topics=allowed))
    assert (rep.read, rep.redriven) == (2, 2), rep.as_dict()

    # The hopeless one fails again: a new dead letter, its reason kept, its redrive counted.
    letters = _dead_letters(w, 3)
    again = [d for d in letters if d.redrives == 1]
    assert len(again) == 1 and again[0].reason == "out_of_bounds", letters
    assert again[0].record()[1] == encode(hopeless)

    # The fixed one is in its user's history.
    changelog = f"{w.app_id}-user_history-changelog"
    recs = read_until(w.bootstrap, changelog, lambda r: any(x.key == b"fix-me" for x in r), timeout_s=60)
    latest = {r.key: r.value for r in recs}
    assert b"fix-me" in latest, w.log_tail()
    assert history_codec.decode(latest[b"fix-me"]).item_ids == ["7"]
    assert b"still-bad" not in latest

    # No loop: the next redrive reads the new dead letter and leaves it.
    rep2 = asyncio.run(redrive(w.bootstrap, t.deadletter, "out_of_bounds", allowed_topics=allowed))
    assert (rep2.read, rep2.matched, rep2.skipped_redriven, rep2.redriven) == (1, 1, 1, 0), rep2.as_dict()
    time.sleep(2)
    assert len(read_until(w.bootstrap, t.deadletter, lambda r: False, timeout_s=3)) == 3
