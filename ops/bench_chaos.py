"""`genrec bench chaos`: seeded SIGKILL runs against real workers, each on a fresh embedded broker (issue 19, 10-11).

One run (seed S; everything random in it comes from `random.Random(S)`):

1. A fresh broker (`--broker`: Tansu, whose memory store never frees data, or Apache Kafka), topics, one
   `genrec worker` serving the given checkpoint (or a tiny one trained once for all runs), with the chaos test's
   fast group settings.
2. A paced replay: events (8 per user, shuffled, so they also arrive out of time order) and requests for the
   same users, interleaved, at `rate` records per second, each confirmed by the broker.
3. `kills` SIGKILLs, each followed at once by a restart on the same state folder. The first falls 0.05–0.45 s
   after the first record, i.e. before the worker's first offset commit (commit interval 0.5 s): partitions
   never committed are the case issue 19 found losing records. The committed offsets of the group are read
   right after each kill, so the JSON says how many partitions really had no commit then. Later kills fall
   at random moments after the previous restart was ready, still inside the replay, so that requests keep
   arriving after each kill.
4. Checks, as `tests/streams/test_chaos.py` (same helpers, `ops/chaos.py`): every request has a result
   (a duplicate is allowed: at-least-once, counted), every event is in its user's changelog history exactly
   once, in time order; every changelog value decodes; the log has no crash marker.

Recovery (issue 19 item 10): for each kill, the seconds from the SIGKILL to the broker timestamp of the first
result written by the restarted worker (`RecResult.worker`), while requests keep coming at the paced rate.

Prints one JSON object, last on stdout: totals, the seeds, one entry per run, and the recovery p50 / max.
`--seed S --runs 1` replays run S.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from genrec.ops.broker import check_broker_kind, new_broker
from genrec.ops.chaos import (
    FAST_GROUP_ENV,
    PacedProducer,
    Replay,
    Topics,
    WorkerHandle,
    committed_offsets,
    history_errors,
    log_problems,
    read_until,
    values,
    wait_histories,
)

EVENTS_PER_USER = 8  # well under a history's length, so the whole history can be compared
# The first kill falls this long after the first record: below GENREC_COMMIT_INTERVAL_S (0.5 s), so the
# worker has committed nothing yet on most partitions.
EARLY_KILL_S = (0.05, 0.45)
LATER_KILL_S = (0.5, 3.0)  # after the previous restart is ready
TAIL_S = 3.0  # requests keep coming at least this long after the last kill
MAX_RUNS = 1000
MAX_RECORDS = 20_000  # per run: bounded memory here and in the (never freeing) broker


def _say(msg: str) -> None:
    print(f"[bench chaos] {msg}", file=sys.stderr, flush=True)


def build_replay(topics: Topics, rng: random.Random, records: int) -> Replay:
    """About `records` records, half events (EVENTS_PER_USER per user), half requests for the same users."""
    n_users = max(2, records // (2 * EVENTS_PER_USER))
    users = [f"u{i}" for i in range(n_users)]
    replay = Replay(topics)
    replay.add_events(users, EVENTS_PER_USER, rng)
    replay.add_requests(users, max(1, (records - len(replay.records)) // n_users))
    rng.shuffle(replay.records)
    return replay


def _probe_commits(w: WorkerHandle, out: dict[str, Any]) -> None:
    """The group's committed offsets right after a kill, read while the restart boots (it takes seconds to
    import and join; nothing it commits can land before that), so the restart is not delayed."""
    n = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
    try:
        for kind, topic in (("events", w.topics.events), ("requests", w.topics.requests)):
            out[kind] = committed_offsets(w.bootstrap, w.app_id, topic, n)
        out["never_committed_partitions"] = sum(n - len(out[k]) for k in ("events", "requests"))
    except Exception as exc:  # a probe failure is reported, not a run failure
        out["error"] = repr(exc)


def run_once(
    seed: int,
    checkpoint: Path,
    base: Path,
    *,
    seconds: float,
    rate: float,
    kills: int,
    worker_env: dict[str, str],
    broker_kind: str = "tansu",
) -> dict[str, Any]:
    """One seeded run on its own broker; returns its per-run entry (with `error` when it could not finish)."""
    rng = random.Random(seed)
    t_run = time.monotonic()
    entry: dict[str, Any] = {"seed": seed}
    broker = new_broker(broker_kind, base / "broker.log")
    w: WorkerHandle | None = None
    try:
        broker.start()
        w = WorkerHandle(
            bootstrap=broker.bootstrap,
            checkpoint=checkpoint,
            topics=Topics.unique(),
            app_id=f"genrec-chaos-{seed}-{uuid.uuid4().hex[:6]}",
            base=base,
            extra_env=worker_env,
        )
        state = base / "state"
        entry["first_start_ready_s"] = round(w.start(state_dir=state), 2)  # a cold start, for comparison
        replay = build_replay(w.topics, rng, min(MAX_RECORDS, int(seconds * rate)))
        entry.update(records=len(replay.records), requests=len(replay.request_ids))
        entry["events"] = sum(len(e) for e in replay.events.values())
        p = PacedProducer(w.bootstrap, replay.records, rate)
        p.begin()
        t_stream = time.monotonic()
        t_end = t_stream + len(replay.records) / rate
        kill_log: list[dict[str, Any]] = []
        probes: list[threading.Thread] = []
        for k in range(kills):
            delay = rng.uniform(*EARLY_KILL_S) if k == 0 else rng.uniform(*LATER_KILL_S)
            # Keep requests coming after every kill (the recovery figure needs them), however slow the restarts.
            wait = min(delay, max(0.0, t_end - TAIL_S - time.monotonic())) if k else delay
            time.sleep(wait)
            w.proc.send_signal(signal.SIGKILL)
            kill_ms = time.time() * 1000
            info: dict[str, Any] = {"after_records": p.sent, "at_s": round(time.monotonic() - t_stream, 2)}
            w.proc.wait(10)
            probe = threading.Thread(target=_probe_commits, args=(w, info.setdefault("committed", {})), daemon=True)
            probe.start()
            probes.append(probe)
            info["ready_s"] = round(w.start(state_dir=state), 2)  # at once, on the same state folder
            info["worker"], info["kill_ms"], info["ready_ms"] = w.worker_id, kill_ms, time.time() * 1000
            kill_log.append(info)
        p.finish(max(120.0, 2 * (t_end - time.monotonic())))
        for probe in probes:
            probe.join(30)

        want = set(replay.request_ids)
        recs = read_until(w.bootstrap, w.topics.results, lambda rs: want <= {v["request_id"] for v in values(rs)}, 120)
        got = Counter(v["request_id"] for v in values(recs))
        reqs = read_until(w.bootstrap, w.topics.requests, lambda rs: len(rs) >= len(want), 60)
        entry["latencies"] = request_latencies(reqs, recs)  # pooled over runs by summarize(), then dropped
        entry["request_latency_s"] = latency_summary(entry["latencies"])
        hist = wait_histories(w, replay, 90)
        lost_ev, dup_ev, wrong_users = history_errors(hist, replay)
        for info in kill_log:
            mine = [r.timestamp for r, v in zip(recs, values(recs), strict=True) if v["worker"] == info["worker"]]
            kill_ms, ready_ms = info.pop("kill_ms"), info.pop("ready_ms")
            info["first_answer_s"] = round((min(mine) - kill_ms) / 1000, 3) if mine else None
            # /ready is polled, so an answer can come before the poll saw the worker ready (negative).
            info["ready_to_first_answer_s"] = round((min(mine) - ready_ms) / 1000, 3) if mine else None
        entry.update(
            results=sum(got.values()),
            lost_requests=len(want - set(got)),
            lost_events=lost_ev,
            duplicated_events=dup_ev,
            duplicate_results=sum(got.values()) - len(set(got) & want),
            users_with_wrong_history=len(wrong_users),
            kills=kill_log,
            log_problems=log_problems(w),
            alive_at_end=w.proc.poll() is None,
        )
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"[-2000:]  # bounded: the worker log tail can be long
    finally:
        if w is not None:
            w.stop_all()
        broker.stop()
        entry["wall_s"] = round(time.monotonic() - t_run, 1)
    return entry


def _train_checkpoint(out: Path) -> Path:
    from genrec.ops.bench_stream import _train_tiny

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the one JSON object
        _train_tiny(out)
    return out


def request_latencies(requests: list[Any], results: list[Any]) -> list[float]:
    """Seconds from each request record's timestamp to its first result's: what the asking app waited,
    outages included (both stamped by their producers on this host's clock)."""
    sent: dict[str, int] = {}
    for r, v in zip(requests, values(requests), strict=True):
        sent.setdefault(v["request_id"], r.timestamp)
    answered: dict[str, int] = {}
    for r, v in zip(results, values(results), strict=True):
        rid = v["request_id"]
        answered[rid] = min(answered.get(rid, r.timestamp), r.timestamp)
    return [(answered[rid] - t) / 1000 for rid, t in sent.items() if rid in answered]


def latency_summary(xs: list[float]) -> dict[str, float | int | None]:
    """p50 / p99 (nearest rank) / max of `xs`, and how many."""
    if not xs:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    s = sorted(xs)

    def rank(q: float) -> float:
        return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 3)

    return {"p50": rank(0.5), "p99": rank(0.99), "max": round(s[-1], 3), "n": len(s)}


def run_failed(entry: dict[str, Any]) -> bool:
    """A run failed when it could not finish, lost or duplicated anything, or left a crash in the log."""
    lost = sum(int(entry.get(k, 0)) for k in ("lost_requests", "lost_events", "duplicated_events"))
    return "error" in entry or bool(entry.get("log_problems")) or not entry.get("alive_at_end") or lost > 0


def summarize(per_run: list[dict[str, Any]], seeds: list[int], settings: dict[str, Any]) -> dict[str, Any]:
    recoveries = [k["first_answer_s"] for r in per_run for k in r.get("kills", []) if k["first_answer_s"] is not None]
    never = [k["committed"].get("never_committed_partitions") for r in per_run for k in r.get("kills", [])]
    latencies = [x for r in per_run for x in r.pop("latencies", [])]

    def total(key: str) -> int:
        return sum(int(r.get(key, 0)) for r in per_run)

    return {
        "runs": len(per_run),
        "failed_runs": sum(1 for r in per_run if run_failed(r)),
        "lost_requests": total("lost_requests"),
        "lost_events": total("lost_events"),
        "duplicated_events": total("duplicated_events"),
        "duplicate_results": total("duplicate_results"),
        "requests": total("requests"),
        "events": total("events"),
        "kills": sum(len(r.get("kills", [])) for r in per_run),
        "kills_with_a_never_committed_partition": sum(1 for n in never if n),
        "request_latency_s": latency_summary(latencies),
        "first_answer_after_restart_s": {
            "p50": round(statistics.median(recoveries), 3) if recoveries else None,
            "max": round(max(recoveries), 3) if recoveries else None,
            "n": len(recoveries),
        },
        "seeds": seeds,
        "settings": settings,
        "per_run": per_run,
    }


def run_bench_chaos(
    *,
    runs: int,
    seed: int | None,
    checkpoint: Path | None,
    seconds: float,
    rate: float,
    kills: int,
    worker_env: dict[str, str],
    keep: bool = False,
    broker_kind: str = "tansu",
) -> dict[str, Any]:
    check_broker_kind(broker_kind)
    if not 1 <= runs <= MAX_RUNS:
        raise ValueError(f"--runs must be 1..{MAX_RUNS}")
    base_seed = seed if seed is not None else int(time.time()) % 100_000
    seeds = [base_seed + i for i in range(runs)]
    root = Path(tempfile.mkdtemp(prefix="genrec-chaos-"))
    kept = False
    try:
        ckpt = checkpoint or _train_checkpoint(root / "ckpt" / "synthetic")
        per_run: list[dict[str, Any]] = []
        for s in seeds:
            run_dir = root / f"run-{s}"
            run_dir.mkdir()
            entry = run_once(s, ckpt, run_dir, seconds=seconds, rate=rate, kills=kills, worker_env=worker_env,
                             broker_kind=broker_kind)
            per_run.append(entry)
            _say(
                f"seed {s}: {entry.get('results')} results for {entry.get('requests')} requests, "
                f"lost {entry.get('lost_requests')} requests / {entry.get('lost_events')} events, "
                f"recovery {[k.get('first_answer_s') for k in entry.get('kills', [])]} s, "
                f"{entry['wall_s']} s{', ERROR ' + entry['error'] if 'error' in entry else ''}"
            )
            if not keep and not run_failed(entry):
                shutil.rmtree(run_dir, ignore_errors=True)  # a failed run's logs stay for reading
        settings = {"seconds": seconds, "rate": rate, "kills": kills, "broker": broker_kind,
                    "worker_env": {**FAST_GROUP_ENV, **worker_env}}
        result = summarize(per_run, seeds, settings)
        kept = keep or result["failed_runs"] > 0
        if kept:
            result["work_dir"] = str(root)  # logs of the failed runs (or all of them with --keep)
        return result
    finally:
        if not kept:
            shutil.rmtree(root, ignore_errors=True)


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` flags → a dict; only GENREC_* settings (the worker's own), so the flag cannot reach anything
    else in the child's environment."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("GENREC_"):
            raise ValueError(f"--worker-env wants GENREC_NAME=VALUE, got {pair!r}")
        out[key] = value
    return out


def register(app: Any, bench_app: Any) -> None:
    import typer

    def cmd(
        runs: int = typer.Option(5, "--runs", min=1, max=MAX_RUNS, help="Seeded kill runs, each on a fresh broker."),
        seed: int | None = typer.Option(None, "--seed", help="First run's seed (run i: seed + i); default: the clock."),
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="Model to serve (default: train a tiny one)."
        ),
        seconds: float = typer.Option(30.0, "--seconds", min=5.0, max=600.0, help="Length of each run's replay."),
        rate: float = typer.Option(
            20.0, "--rate", min=1.0, max=500.0, help="Records per second (about half events, half requests)."
        ),
        kills: int = typer.Option(2, "--kills", min=1, max=10, help="SIGKILLs per run (the first before a commit)."),
        worker_env: list[str] = typer.Option(
            [], "--worker-env", help="GENREC_NAME=VALUE over the fast group settings (repeatable)."
        ),
        keep: bool = typer.Option(False, "--keep", help="Keep every run's logs and state folders."),
        broker: str = typer.Option(
            "tansu", "--broker", help="tansu (the embedded broker) or kafka (Apache Kafka, ops/kafka_broker.py)."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object last on stdout."),
    ) -> None:
        """SIGKILL a worker at random moments (the first before its first commit), restart it at once on the
        same state folder, and count lost and duplicated requests and events; the recovery time per kill."""
        try:
            env = parse_env(worker_env)
            check_broker_kind(broker)
        except ValueError as exc:
            typer.echo(f"genrec bench chaos: {exc}", err=True)
            raise typer.Exit(2) from exc
        result = run_bench_chaos(
            runs=runs,
            seed=seed,
            checkpoint=checkpoint,
            seconds=seconds,
            rate=rate,
            kills=kills,
            worker_env=env,
            keep=keep,
            broker_kind=broker,
        )
        if json_out:
            sys.stdout.write(json.dumps(result) + "\n")
        else:
            typer.echo(json.dumps(result, indent=2))
        lost = result["lost_requests"] + result["lost_events"] + result["duplicated_events"]
        if lost or result["failed_runs"]:
            raise typer.Exit(1)  # the JSON is printed first: a failing soak still says what it saw

    bench_app.command("chaos")(cmd)
