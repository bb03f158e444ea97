"""The commit protocol (streams/checkpoint.py): each step in order, and each step made to fail.

A failed step must commit nothing, now or later in the process (the shutdown's final commit included), and
fail the task once; a commit that the broker merely refused (step 4) is retried, not fatal.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from genrec.streams.checkpoint import (
    UNCONFIRMED_MARKER,
    Checkpoint,
    InOrderAcks,
    SendFailedError,
    commit_floor,
    discard_unconfirmed_state,
    holds_commit,
    reread_from,
)


class Recorder:
    """The steps' side effects, in the order they happened."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failures: list[BaseException] = []
        self.fail_at: str | None = None
        self.commit_result = True

    def flush(self, name: str):
        async def run() -> None:
            self.calls.append(name)
            if self.fail_at == name:
                raise OSError(f"{name} broken")

        return run

    async def commit_offsets(self) -> bool:
        self.calls.append("commit")
        return self.commit_result

    async def on_failure(self, exc: BaseException) -> None:
        self.failures.append(exc)


def _checkpoint(rec: Recorder, tmp_path: Path | None = None, timeout_s: float = 5.0) -> Checkpoint:
    cp = Checkpoint(confirm_timeout_s=timeout_s, on_failure=rec.on_failure, state_dir=tmp_path)
    cp.add_output("results", rec.flush("results"))
    cp.add_changelog("changelogs", rec.flush("changelogs"))
    return cp


async def test_the_steps_run_in_order_and_commit() -> None:
    rec = Recorder()
    cp = _checkpoint(rec)
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cp.track_send(fut, "changelog t")

    async def confirm_later() -> None:
        await asyncio.sleep(0.01)
        rec.calls.append("confirmed")
        fut.set_result(1)

    task = asyncio.create_task(confirm_later())
    assert await cp.commit(rec.commit_offsets) is True
    await task
    # The commit waited for the send's confirmation (step 3) after both flushes (steps 1, 2).
    assert rec.calls == ["results", "changelogs", "confirmed", "commit"]
    assert cp.failed is None and not rec.failures and cp.commits == 1


@pytest.mark.parametrize("step", ["results", "changelogs"])
async def test_a_failed_flush_commits_nothing_now_or_later(step: str) -> None:
    rec = Recorder()
    rec.fail_at = step
    cp = _checkpoint(rec)
    assert await cp.commit(rec.commit_offsets) is False
    assert "commit" not in rec.calls
    assert isinstance(cp.failed, SendFailedError) and step in str(cp.failed)
    rec.fail_at = None
    assert await cp.commit(rec.commit_offsets) is False  # e.g. the final commit of the shutdown
    assert "commit" not in rec.calls
    await asyncio.sleep(0.01)
    assert len(rec.failures) == 1  # the task failed once


async def test_a_refused_changelog_send_fails_the_task_at_once_and_marks_the_local_state(tmp_path: Path) -> None:
    rec = Recorder()
    cp = _checkpoint(rec, tmp_path)
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cp.track_send(fut, "changelog genrec-user_history-changelog")
    fut.set_exception(TimeoutError("broker did not confirm"))
    await asyncio.sleep(0.01)  # the done callback, then the failure task
    assert isinstance(cp.failed, SendFailedError) and len(rec.failures) == 1
    assert (tmp_path / UNCONFIRMED_MARKER).exists()
    assert await cp.commit(rec.commit_offsets) is False
    assert "commit" not in rec.calls


async def test_a_send_failing_during_the_commit_stops_it(tmp_path: Path) -> None:
    rec = Recorder()
    cp = _checkpoint(rec, tmp_path)
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cp.track_send(fut, "output genrec.results")

    async def refuse() -> None:
        await asyncio.sleep(0.01)
        fut.set_exception(OSError("not leader"))

    task = asyncio.create_task(refuse())
    assert await cp.commit(rec.commit_offsets) is False
    await task
    assert rec.calls == ["results", "changelogs"]
    assert not (tmp_path / UNCONFIRMED_MARKER).exists()  # a result is sent again by the redelivery itself


async def test_an_unconfirmed_send_fails_the_checkpoint_after_the_timeout() -> None:
    rec = Recorder()
    cp = _checkpoint(rec, timeout_s=0.05)
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cp.track_send(never, "changelog t")
    assert await cp.commit(rec.commit_offsets) is False
    assert "unconfirmed" in str(cp.failed) and "commit" not in rec.calls


async def test_a_refused_offset_commit_is_retried_not_fatal() -> None:
    rec = Recorder()
    rec.commit_result = False  # Faust's commit returned False (e.g. a rebalance in progress)
    cp = _checkpoint(rec)
    assert await cp.commit(rec.commit_offsets) is False
    assert cp.failed is None and not rec.failures
    rec.commit_result = True
    assert await cp.commit(rec.commit_offsets) is True


async def test_sends_settled_before_the_commit_are_not_waited_for_again() -> None:
    rec = Recorder()
    cp = _checkpoint(rec)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done.set_result(3)
    cp.track_send(done, "output t")
    assert not cp._pending
    assert await cp.commit(rec.commit_offsets) is True


# ------------------------------------------------------------------------------------------ offset rules


def test_commit_floor_and_hold() -> None:
    assert commit_floor(10, 3) == 10  # committed wins
    assert commit_floor(None, 3) == 3  # never committed: the first offset fetched since the assignment
    assert commit_floor(None, None) is None
    assert holds_commit(10, [11, 12])  # 10 unfinished
    assert not holds_commit(10, [10, 11])
    assert holds_commit(3, [4, 5])  # a never-committed partition whose first message is unfinished
    assert holds_commit(None, [0])  # nothing known fetched: no acked offset can be trusted
    assert not holds_commit(None, [])


def test_reread_goes_back_to_the_first_unfinished_offset_never_forward() -> None:
    assert reread_from(32, None, 39) == 32
    assert reread_from(None, 5, 9) == 5  # never committed: was skipped, silently, before
    assert reread_from(40, None, 39) is None  # a seek already went back past it
    assert reread_from(None, None, 9) is None


def test_a_marked_state_folder_loses_its_tables_once(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables"
    (tables / "user_history-0.db").mkdir(parents=True)
    assert not discard_unconfirmed_state(tmp_path, tables)  # no marker: kept
    assert tables.exists()
    (tmp_path / UNCONFIRMED_MARKER).write_text("{}")
    assert discard_unconfirmed_state(tmp_path, tables)
    assert not tables.exists() and not (tmp_path / UNCONFIRMED_MARKER).exists()


async def test_a_failed_slot_releases_the_slots_behind_it_without_its_own_ack() -> None:
    acks, done = InOrderAcks(), []

    def rec(name: str):
        async def run() -> None:
            done.append(name)

        return run

    first = acks.track("p0", rec("ack0"), skip=rec("skip0"))
    second = acks.track("p0", rec("ack1"))
    await second()
    assert done == []
    await first(processed=False)  # its send failed
    assert done == ["skip0", "ack1"]
    assert acks.waiting() == 0
