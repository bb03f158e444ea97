"""`genrec demo` (what `make demo` runs), end to end against the real embedded broker and a real worker.

The end-to-end run points `--data-dir` at an empty folder, so it also covers the fallback to the generated
data set (which must be announced). A second run is interrupted with SIGTERM while it trains, and must
leave no process and no temporary folder behind. Unit tests cover the pieces whose mistakes would be silent:
the exclude_seen check, the time alignment of the replayed slice, the quality verdict, the worker's
`--threads` flag.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from genrec.ops.bench_stream import genrec_command
from genrec.ops.demo import (
    Outcome,
    Sent,
    describe_quality,
    exclude_seen_violations,
    is_cold_start,
    percentile,
    seen_before_window,
    slice_now_ms,
)

from tests.conftest import process_alive, require_broker_binary

TINY = ["--epochs", "1", "--events", "300", "--requests", "20", "--threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid() and process_alive(p)]


def _pids(out: str) -> tuple[int, int | None]:
    broker = int(re.search(r"^broker: .*\(pid (\d+)\)", out, re.M).group(1))  # type: ignore[union-attr]
    worker = re.search(r"^worker: pid (\d+)", out, re.M)
    return broker, int(worker.group(1)) if worker else None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_demo_end_to_end_on_the_generated_data_set(tmp_path: Path) -> None:
    require_broker_binary()
    absent = tmp_path / "no-data-here"
    t0 = time.monotonic()
    proc = subprocess.run(
        [*genrec_command(), "demo", "--data-dir", str(absent), *TINY, "--timeout", "240", "--json"],
        capture_output=True,
        text=True,
        timeout=280,
        env=ENV,
        check=False,
    )
    wall = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode} after {wall:.0f}s\n{out[-6000:]}\n{proc.stderr[-3000:]}"
    # The real data was not there: said loudly, and the generated set used.
    assert "was not found" in out and "GENERATED" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["dataset"] == "synthetic" and summary["real_data"] is False
    # Every request got exactly one result; the exclude_seen lists were checked and are clean.
    assert summary["events"] == 300
    assert summary["requests"] == 20 and summary["results"] == 20 and summary["missing"] == 0
    assert summary["duplicate_results"] == 0 and summary["dead_letters"] == 0
    assert summary["exclude_seen_lists"] >= 1 and summary["exclude_seen_violations"] == 0
    assert summary["p50_ms"] is not None and summary["p99_ms"] >= summary["p50_ms"] > 0
    assert summary["throughput_msg_per_s"] > 0 and str(summary["model_version"]).startswith("synthetic-")
    assert summary["worker_exit"] == 0 and summary["exit_status"] == 0
    summary_line = next(ln for ln in out.splitlines() if ln.startswith("summary: "))
    assert re.match(r"summary: events 300 · requests 20 · results 20 · dead letters 0 · p50 [\d.]+ ms", summary_line)
    # Live lists with titles (the generated set's names), not bare ids.
    assert re.search(r"^ +1\. Synthetic item \d+ +score ", out, re.M)
    # Everything stopped and removed.
    broker_pid, worker_pid = _pids(out)
    assert worker_pid is not None
    assert not process_alive(broker_pid) and not process_alive(worker_pid)
    work = re.search(r"^removed (\S+);", out, re.M).group(1)  # type: ignore[union-attr]
    assert not Path(work).exists()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sigterm_while_training_stops_everything() -> None:
    require_broker_binary()
    proc = subprocess.Popen(
        [*genrec_command(), "demo", "--dataset", "synthetic", "--epochs", "50", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("model: training"):
                break
        time.sleep(2.0)  # the training child is running now
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "interrupted" in out
    broker_pid, _ = _pids(out)
    assert not process_alive(broker_pid)
    work = re.search(r"^removed (\S+);", out, re.M).group(1)  # type: ignore[union-attr]
    assert not Path(work).exists()
    assert _processes_mentioning(work) == []  # the `genrec train` child (its --out is in there) is gone


# ------------------------------------------------------------------------ units


def _item(item_id: str, retrieval: float = 0.3) -> Any:
    return SimpleNamespace(item_id=item_id, retrieval_score=retrieval)


def test_exclude_seen_violations_only_counts_exclude_seen_requests_and_the_window() -> None:
    out = Outcome()
    # u1 had items 0, 1, 2; the window (what the worker keeps and the model reads) holds 1 and 2.
    out.requests["a"] = Sent("a", "u1", True, frozenset({"0", "1", "2"}), frozenset({"1", "2"}), ())
    out.requests["b"] = Sent("b", "u1", False, frozenset({"0", "1", "2"}), frozenset({"1", "2"}), ())
    out.requests["c"] = Sent("c", "u2", True, frozenset({"9"}), frozenset({"9"}), ())  # no result: fine
    out.results["a"] = SimpleNamespace(items=[_item("3"), _item("2"), _item("0")])
    out.results["b"] = SimpleNamespace(items=[_item("1"), _item("0")])
    assert exclude_seen_violations(out) == [("a", "2")]
    assert seen_before_window(out) == 1  # "0" in a; b allows seen items


def test_cold_start_is_a_list_without_retrieval_scores() -> None:
    assert is_cold_start([_item("1", 0.0), _item("2", 0.0)])
    assert not is_cold_start([_item("1", 0.0), _item("2", 0.1)])
    assert not is_cold_start([])


def test_slice_now_puts_the_slice_end_at_now() -> None:
    from genrec.ops.replay import dataset_events

    ds = SimpleNamespace(
        name="t",
        user_ids=["a", "b"],
        item_ids=["i1", "i2"],
        items=[np.array([1, 2]), np.array([1, 2, 1])],
        actions=[np.array([1, 1], np.int8), np.array([1, 1, 1], np.int8)],
        ts=[np.array([100, 400]), np.array([200, 300, 10_000])],
        has_time=True,
    )
    now = 1_700_000_000_000
    events = list(dataset_events(ds, limit=3, now_ms=slice_now_ms(ds, 3, now)))
    assert [e.ts for e in events] == [now - 200_000, now - 100_000, now]  # slice = ts 100, 200, 300
    assert slice_now_ms(ds, 5, now) == now  # the whole set: the last event is the slice's last


def test_quality_verdict_follows_the_numbers() -> None:
    pop = {"ndcg@10": 0.02, "hr@10": 0.05, "ndcg@50": 0.04, "hr@50": 0.15}
    better = describe_quality({"ndcg@10": 0.03, "hr@10": 0.06, "ndcg@50": 0.05, "hr@50": 0.2}, pop, "x")
    same = describe_quality({"ndcg@10": 0.021, "hr@10": 0.05, "ndcg@50": 0.05, "hr@50": 0.2}, pop, "x")
    worse = describe_quality({"ndcg@10": 0.01, "hr@10": 0.02, "ndcg@50": 0.02, "hr@50": 0.1}, pop, "x")
    assert "better than" in better[-1] and "about as good" in same[-1] and "worse than" in worse[-1]
    assert any("popular" in line and "0.0200" in line for line in better)
    assert "unknown" in describe_quality({}, pop, "x")[0]
    assert percentile([], 50) is None and percentile([1.0, 3.0], 50) == 2.0


def test_worker_threads_flag_reaches_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import typer
    from genrec.ops import cli_stream
    from typer.testing import CliRunner

    app, bench_app = typer.Typer(), typer.Typer()
    app.add_typer(bench_app, name="bench")
    cli_stream.register(app, bench_app)
    seen: dict[str, Any] = {}

    def fake_run_worker(settings: Any) -> int:  # stands in for the Faust worker: only the settings matter here
        seen["settings"] = settings
        return 0

    monkeypatch.setattr("genrec.streams.worker.run_worker", fake_run_worker)
    runner = CliRunner()
    ok = runner.invoke(app, ["worker", "--checkpoint", str(tmp_path), "--threads", "2"])
    assert ok.exit_code == 0, ok.output
    assert seen["settings"].torch_threads == 2
    bad = runner.invoke(app, ["worker", "--checkpoint", str(tmp_path), "--threads", "0"])
    assert bad.exit_code == 2 and "invalid settings" in bad.output
