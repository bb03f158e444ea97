"""The inference child process: same answers as the model in-process, refuses bad checkpoints at start, and a
child that dies makes the worker restart instead of dead-lettering the batch."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from genrec.model.checkpoint import WEIGHTS, CheckpointError
from genrec.model.serving import Recommendation, Recommender
from genrec.schemas.messages import RecRequest
from genrec.streams import history_codec
from genrec.streams.inference_errors import InferenceCrashed, InferenceTimeout
from genrec.streams.inference_process import ProcessInferenceRunner
from genrec.streams.serving import InferenceInput, InferenceRunner, VersionMismatch

TS = 1_700_000_000_000


def _inputs(item_ids: list[str]) -> list[InferenceInput]:
    codec = history_codec.HistoryCodec(200, 16)
    out = []
    for u in range(6):
        buf = None
        for i, item in enumerate(item_ids[u * 7 : u * 7 + 5 + u]):
            buf = codec.append(buf, event_id=f"e{u}-{i}", item_id=item, action=1 + i % 2, ts_ms=TS + 60_000 * i)
        req = RecRequest(request_id=f"r{u}", user_id=f"u{u}", ts=TS + 3_600_000, k=3 + u, exclude_seen=u % 2 == 0)
        out.append(InferenceInput(req, buf))
    out.append(InferenceInput(RecRequest(request_id="cold", user_id="new", ts=TS, k=5), None))  # no history
    return out


async def test_same_lists_and_scores_as_the_model_in_process(checkpoint: Path) -> None:
    rec = Recommender.from_checkpoint(checkpoint)
    inputs = _inputs(rec.item_ids)
    local = InferenceRunner(rec, torch_threads=1)
    child = ProcessInferenceRunner(checkpoint, torch_threads=1)
    try:
        assert child.version == rec.version and child.max_events == rec.max_events
        assert child.pid is not None and child.pid != os.getpid()
        want, _ = await local.infer(inputs)
        got, _ = await child.infer(inputs)
        assert child.last_version == rec.version
        for w, g in zip(want, got, strict=True):
            assert not isinstance(g, Exception), g
            assert [(r.item_id, r.rank) for r in g] == [(r.item_id, r.rank) for r in w]
            assert [r.score for r in g] == pytest.approx([r.score for r in w], abs=1e-6)
            assert [r.retrieval_score for r in g] == pytest.approx([r.retrieval_score for r in w], abs=1e-6)
    finally:
        local.close()
        child.close()
    assert not child._proc.is_alive()


def test_a_damaged_checkpoint_is_refused_at_start_with_the_reason(checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    raw = bytearray((bad / WEIGHTS).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (bad / WEIGHTS).write_bytes(bytes(raw))
    # The same type as a thread runner raises: the child's refusal is not a generic child error.
    with pytest.raises(CheckpointError, match="does not match"):
        ProcessInferenceRunner(bad, torch_threads=1)


async def test_a_swap_loads_the_model_once_in_the_child_never_in_the_worker(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import genrec.streams.serving

    child = ProcessInferenceRunner(checkpoint, torch_threads=1)
    try:
        def no_load_here(*args: object, **kwargs: object) -> None:
            raise AssertionError("the worker process loaded the model")

        monkeypatch.setattr(Recommender, "from_checkpoint", no_load_here)
        monkeypatch.setattr(genrec.streams.serving, "load_version", no_load_here)
        version = child.version
        assert await child.swap(checkpoint, expected_version=version) == version
        with pytest.raises(VersionMismatch):
            await child.swap(checkpoint, expected_version="another")
        ok, _ = await child.infer(_inputs(json.loads((checkpoint / "items.json").read_text())))
        assert all(isinstance(r, Recommendation) for out in ok if isinstance(out, list) for r in out)
        assert ok and all(isinstance(out, list) and out for out in ok)
    finally:
        child.close()


async def test_signals_are_ignored_and_a_child_dead_between_calls_is_restarted(checkpoint: Path) -> None:
    rec = Recommender.from_checkpoint(checkpoint)
    inputs = _inputs(rec.item_ids)
    child = ProcessInferenceRunner(checkpoint, torch_threads=1)
    try:
        pid = child.pid
        assert pid is not None
        # A SIGTERM to the whole process group (an operator's Ctrl-C): the parent decides when its child stops.
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        ok, _ = await child.infer(inputs)
        assert all(not isinstance(x, Exception) for x in ok)
        os.kill(pid, signal.SIGKILL)
        child._proc.join(10)
        # Dead between two calls: the next call starts a new child first, and nobody's request fails.
        again, _ = await child.infer(inputs)
        assert _lists(again) == _lists(ok)
        assert child.restarts == 1 and child.pid != pid
    finally:
        child.close()


def _lists(outcomes: list) -> list[list[str]]:
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes
    return [[r.item_id for r in out] for out in outcomes]


@pytest.mark.parametrize("fault", ["hangs", "dies"])
async def test_a_child_that_hangs_or_dies_mid_call_is_killed_restarted_and_named(checkpoint: Path,
                                                                                   fault: str) -> None:
    import asyncio

    rec = Recommender.from_checkpoint(checkpoint)
    inputs = _inputs(rec.item_ids)
    child = ProcessInferenceRunner(checkpoint, torch_threads=1, call_timeout_s=1.5)
    try:
        before, _ = await child.infer(inputs)
        pid = child.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it cannot answer: a hang, as far as the worker can tell
        if fault == "dies":
            asyncio.get_running_loop().call_later(0.3, os.kill, pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(InferenceTimeout if fault == "hangs" else InferenceCrashed):
            await child.infer(inputs)
        took = time.monotonic() - t0
        assert took < 60, took  # bounded by the call timeout (plus the restart), never forever
        if fault == "hangs":
            assert took >= 1.4, took  # given up at the call timeout, not before
        # The old child is gone, a new one serves the same version with the same answers.
        assert not _alive(pid) and child.pid != pid and child.restarts == 1
        after, _ = await child.infer(inputs)
        assert _lists(after) == _lists(before) and child.last_version == rec.version
    finally:
        child.close()


def _alive(pid: int) -> bool:
    from tests.conftest import process_alive

    return process_alive(pid)


def test_a_child_that_does_not_answer_in_time_is_killed_not_read_later(checkpoint: Path) -> None:
    # Importing torch alone takes the child longer than this: its late answer must never be taken for another's.
    with pytest.raises(InferenceTimeout, match="killed"):
        ProcessInferenceRunner(checkpoint, torch_threads=1, start_timeout_s=0.01)
