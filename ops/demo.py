"""`genrec demo` (what `make demo` runs): the main job end to end on the embedded default (README).

1. an embedded Tansu broker on a free loopback port, with the genrec topics;
2. a model: `--checkpoint`, else a short `genrec train` on ML-100K (or on the generated data set, said
   loudly, when the real data is not there);
3. a real `genrec worker` process, waited on until `/ready`;
4. the stream: the first `--events` events of the data set in time order, and after every M-th event a
   recommendation request for that event's user; then, once the worker has ingested every event, a few
   `exclude_seen` requests for the most active users, checked against what the demo itself sent;
5. ranked lists printed with titles as their results arrive, then a summary (and `--json`: one JSON
   object as the last stdout line);
6. everything stopped: worker SIGTERM (graceful), broker by PID, temporary folders removed — also on
   Ctrl-C, SIGTERM or `--timeout`.

Exit status: 0 when every request got exactly one result and no `exclude_seen` list holds an item of the
user's last min(L, max_events) events (older ones are beyond what the worker keeps: counted, not failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import typer

# The demo trains the data set's own preset (model/presets.py, the BENCHMARKS.md model), only for fewer
# epochs. One torch thread by default: on 2 cores shared with anything else, torch's default (one thread
# per core) oversubscribes them and its spinning threads made an epoch ~15x slower in our runs.
DEFAULT_EPOCHS = 10
DEFAULT_THREADS = 1
DEMO_HISTORY_LEN = 200  # events the worker keeps per user (its default L, passed explicitly)
RESERVE_S = 60.0  # time kept back from training for the worker, the stream and the shutdown
DEFAULT_DATA_DIR = Path("../shared/data")


class DemoError(RuntimeError):
    """A step of the demo failed or ran out of time; the message says which."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------ what gets sent


@dataclass
class Sent:
    """A request as the demo sent it: enough to measure latency and explain the list it gets back."""

    request_id: str
    user_id: str
    exclude_seen: bool
    seen: frozenset[str]  # items of this user's events sent before the request
    window: frozenset[str]  # those of its last `window` events: what exclude_seen promises to exclude
    recent: tuple[str, ...]  # the last few of them, newest last (for the printout)
    t_sent: float = 0.0  # perf_counter()


@dataclass
class Outcome:
    requests: dict[str, Sent] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # request_id -> RecResult
    latency_ms: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0
    cold: set[str] = field(default_factory=set)  # answered before any of the user's events reached the state
    shown: dict[bool, int] = field(default_factory=lambda: {False: 0, True: 0})  # by exclude_seen


def slice_now_ms(ds: Any, n_events: int, now_ms: int) -> int:
    """The `now_ms` for `ops.replay.dataset_events` that puts the *slice's* last event at `now_ms`.

    `dataset_events` aligns the data set's last event with "now"; the first few thousand events of
    ML-100K are months older than its last one, and requests sent during the stream should carry the
    stream's own time (the model reads the gap between history and request as a feature).
    """
    all_ts = np.sort(np.concatenate([np.asarray(t, np.int64) for t in ds.ts]))
    if not bool(getattr(ds, "has_time", True)) or len(all_ts) == 0:
        return now_ms
    slice_last = int(all_ts[min(n_events, len(all_ts)) - 1])
    return now_ms + (int(all_ts[-1]) - slice_last) * 1000


def exclude_seen_violations(outcome: Outcome) -> list[tuple[str, str]]:
    """(request_id, item_id) for every item of the user's window in an `exclude_seen` list (must be none)."""
    bad = []
    for rid, sent in outcome.requests.items():
        res = outcome.results.get(rid)
        if sent.exclude_seen and res is not None:
            bad += [(rid, it.item_id) for it in res.items if it.item_id in sent.window]
    return bad


def seen_before_window(outcome: Outcome) -> int:
    """Items in `exclude_seen` lists that the user had, but before the window (exclude_seen cannot see them)."""
    n = 0
    for rid, sent in outcome.requests.items():
        res = outcome.results.get(rid)
        if sent.exclude_seen and res is not None:
            n += sum(1 for it in res.items if it.item_id in sent.seen and it.item_id not in sent.window)
    return n


def is_cold_start(items: list[Any]) -> bool:
    """The worker's answer for a user without history: the most popular items, retrieval score 0."""
    return bool(items) and all(it.retrieval_score == 0.0 for it in items)


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 1) if values else None


# ------------------------------------------------------------------------ printing


def format_list(
    res: Any, sent: Sent, titles: dict[str, str], latency_ms: float, window: int, width: int = 52
) -> str:
    def title(item_id: str) -> str:
        t = titles.get(item_id, f"item {item_id}")
        return t if len(t) <= width else t[: width - 1] + "…"

    mode = "exclude_seen" if sent.exclude_seen else "seen items allowed"
    lines = [
        f"── user {sent.user_id} · request {sent.request_id} · {len(sent.seen)} distinct items in the stream so far "
        f"· {mode} · {latency_ms:.0f} ms end to end",
    ]
    if sent.recent:
        lines.append("   recently: " + " · ".join(title(i) for i in sent.recent))
    for it in res.items:
        if it.item_id in sent.window:
            mark = "  (seen)"
        elif it.item_id in sent.seen:
            mark = f"  (seen, before the last {window} events)"
        else:
            mark = ""
        lines.append(
            f"   {it.rank:>2}. {title(it.item_id):<{width}}  score {it.score:.3f}  "
            f"retrieval {it.retrieval_score:+.3f}{mark}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------ the model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def train_demo_model(
    dataset: str, data_dir: Path | None, out: Path, *, epochs: int, threads: int, timeout_s: float, work: Path
) -> dict[str, Any]:
    """`genrec train` (the data set's preset, `epochs` at most) as a child process; its epoch lines go to
    our stderr, its JSON line (checkpoint, test metrics) is returned."""
    from genrec.ops.bench_stream import genrec_command

    cmd = [*genrec_command(), "train", "--dataset", dataset, "--out", str(out), "--epochs", str(epochs)]
    cmd += ["--no-progress"]
    if threads:
        cfg_path = work / "demo-train.json"
        cfg_path.write_text(json.dumps({"train": {"threads": threads}}))  # merged over the preset
        cmd += ["--config", str(cfg_path)]
    if data_dir is not None and dataset != "synthetic":
        cmd += ["--data-dir", str(data_dir)]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, env=env)
    try:
        stdout, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"training did not finish within {timeout_s:.0f}s (raise --timeout or lower --epochs)") from exc
    finally:
        if proc.poll() is None:  # timed out, Ctrl-C or SIGTERM: the child must not outlive us
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise DemoError(f"genrec train exited with status {proc.returncode}")
    lines = [ln for ln in stdout.decode("utf-8", "replace").splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def describe_quality(test: dict[str, Any], popular: dict[str, float] | None, how: str) -> list[str]:
    """Honest lines about the model: its test metrics next to the popularity baseline's, and a verdict."""
    if not test:
        return [f"model quality: unknown ({how}; no test metrics recorded)"]
    keys = [key for key in ("ndcg@10", "hr@10", "ndcg@50", "hr@50") if key in test]
    out = [f"model quality ({how}); test split, leave-one-out, full ranking over every item:"]
    out.append("   " + "".join(f"{key:>10}" for key in ["", *keys]) + ("       AUC" if "auc" in test else ""))
    out.append("   " + f"{'model':>10}" + "".join(f"{test[key]:>10.4f}" for key in keys)
               + (f"{test['auc']:>10.3f}" if "auc" in test else ""))
    if popular:
        out.append("   " + f"{'popular':>10}" + "".join(f"{popular[key]:>10.4f}" for key in keys))
        r10 = test.get("ndcg@10", 0.0) / max(popular["ndcg@10"], 1e-9)
        r50 = test.get("ndcg@50", 0.0) / max(popular.get("ndcg@50", 0.0), 1e-9)
        if r10 >= 1.1:
            verdict = f"better than recommending the most popular items ({r10:.2f}× their NDCG@10)"
        elif r10 >= 0.9:
            verdict = (f"about as good as the most popular items at the top 10 ({r10:.2f}× their NDCG@10; "
                       f"{r50:.2f}× at 50): a short demo training")
        else:
            verdict = f"worse than the most popular items ({r10:.2f}× their NDCG@10): a short demo training"
        out.append(f"   → {verdict}; `genrec train` with the full preset: BENCHMARKS.md")
    return out


# ------------------------------------------------------------------------ the stream


async def run_stream(
    *,
    bootstrap: str,
    port: int,
    ds: Any,
    titles: dict[str, str],
    n_events: int,
    n_requests: int,
    k: int,
    rate: float,
    show: int,
    deadline: float,
    topics: Any,
    window: int,
) -> dict[str, Any]:
    """Phase 1: events in time order with interleaved requests; phase 2: `exclude_seen` requests once
    every event is ingested. Returns timings; fills and returns the outcome."""
    from genrec.ops.bench_stream import events_processed, scrape
    from genrec.ops.kafka_clients import make_consumer, make_producer
    from genrec.ops.replay import RateLimiter, dataset_events
    from genrec.schemas.messages import RecRequest, RecResult, encode

    n_excl = max(1, n_requests // 4) if n_requests >= 2 else 0  # "a few" with exclude_seen
    n_stream = n_requests - n_excl
    every = max(1, n_events // max(n_stream, 1))
    show_stream = (show + 1) // 2 if n_excl else show
    show_excl = show - show_stream
    out = Outcome()
    seen: dict[str, list[str]] = {}

    def remaining() -> float:
        return deadline - time.monotonic()

    consumer = make_consumer(bootstrap, topics.results)
    await consumer.start()
    producer = make_producer(bootstrap, one_record_batches=False, linger_ms=2, acks="all")
    await producer.start()

    async def receive() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    res = RecResult.model_validate_json(m.value)
                    sent = out.requests.get(res.request_id)
                    if sent is None:
                        continue
                    if res.request_id in out.results:
                        out.duplicates += 1
                        continue
                    out.results[res.request_id] = res
                    out.latency_ms[res.request_id] = (now - sent.t_sent) * 1000.0
                    if is_cold_start(res.items) and sent.seen:
                        out.cold.add(res.request_id)
                        continue  # a most-popular list says nothing about the user: not worth printing
                    quota = show_excl if sent.exclude_seen else show_stream
                    if out.shown[sent.exclude_seen] < quota:
                        say(format_list(res, sent, titles, out.latency_ms[res.request_id], window))
                        say()
                        out.shown[sent.exclude_seen] += 1

    def make_request(user: str, ts_ms: int, exclude: bool) -> RecRequest:
        hist = seen.get(user, [])
        rid = f"demo-{len(out.requests) + 1:04d}"
        recent = tuple(dict.fromkeys(reversed(hist)))[:3][::-1]
        out.requests[rid] = Sent(rid, user, exclude, frozenset(hist), frozenset(hist[-window:]), recent)
        return RecRequest(request_id=rid, user_id=user, ts=ts_ms, k=k, exclude_seen=exclude)

    async def send_request(req: RecRequest) -> Any:
        out.requests[req.request_id].t_sent = time.perf_counter()
        return await producer.send(topics.requests, key=req.user_id.encode(), value=encode(req))

    rx = asyncio.create_task(receive())

    def check_receiver() -> None:
        if rx.done():  # it only ends by raising (e.g. an undecodable result): fail now, not at --timeout
            raise DemoError(f"the results reader stopped: {rx.exception()!r}")

    timings: dict[str, Any] = {}
    try:
        # -- phase 1: the stream
        now_ms = int(time.time() * 1000)
        events = dataset_events(ds, limit=n_events, now_ms=slice_now_ms(ds, n_events, now_ms))
        limiter = RateLimiter(rate)
        pending: list[Any] = []
        sent_events = 0
        t0 = time.perf_counter()
        for ev in events:
            if remaining() <= 0:
                raise DemoError("--timeout reached while replaying events")
            await limiter.wait()
            pending.append(await producer.send(topics.events, key=ev.user_id.encode(), value=encode(ev)))
            sent_events += 1
            assert ev.item_id is not None
            seen.setdefault(ev.user_id, []).append(ev.item_id)
            if sent_events % every == 0 and len(out.requests) < n_stream:
                await limiter.wait()
                pending.append(await send_request(make_request(ev.user_id, ev.ts, exclude=False)))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        timings["send_s"] = time.perf_counter() - t0
        # The stream phase ends when the worker has ingested every event and answered every request.
        ingested = 0.0
        while True:
            with contextlib.suppress(OSError):
                ingested = events_processed(await asyncio.to_thread(scrape, port))
            check_receiver()
            if ingested >= sent_events and len(out.results) >= len(out.requests):
                break
            if remaining() <= 0:
                raise DemoError(
                    f"--timeout reached: worker ingested {ingested:.0f}/{sent_events} events, "
                    f"{len(out.results)}/{len(out.requests)} results"
                )
            await asyncio.sleep(0.05)
        timings["stream_s"] = time.perf_counter() - t0
        timings["stream_messages"] = sent_events + len(out.requests)
        timings["events"] = sent_events
        # -- phase 2: exclude_seen requests for the most active users, their whole stream history ingested
        active = sorted(seen, key=lambda u: -len(seen[u]))[:n_excl]
        ts_ms = int(time.time() * 1000)
        for user in active:
            await asyncio.sleep(0.02)  # spaced out: each is its own batch, its latency its own
            await send_request(make_request(user, ts_ms, exclude=True))
        await producer.flush()
        while len(out.results) < len(out.requests) and remaining() > 0:
            check_receiver()
            await asyncio.sleep(0.05)
        timings["total_s"] = time.perf_counter() - t0
        # Anything extra (a duplicate result) would have arrived by now.
        await asyncio.sleep(0.3)
    finally:
        rx.cancel()
        # Its exception, if any, was already turned into a DemoError above.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await rx
        await producer.stop()
        await consumer.stop()
    timings["outcome"] = out
    return timings


# ------------------------------------------------------------------------ the whole demo


@dataclass
class DemoOptions:
    data_dir: Path | None
    dataset: str
    checkpoint: Path | None
    epochs: int
    events: int
    requests: int
    k: int
    rate: float
    show: int
    partitions: int
    threads: int
    timeout_s: float
    json_out: bool


def _install_sigterm() -> Callable[[], None]:
    """SIGTERM → KeyboardInterrupt, so that a killed demo cleans up like a Ctrl-C'd one."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _load_data(opts: DemoOptions) -> tuple[Any, str, bool]:
    """(data set, its name, whether it is real data); falls back to the generated set, loudly."""
    from genrec.model.data import load_dataset

    if opts.dataset == "synthetic":
        return load_dataset("synthetic"), "synthetic", False
    try:
        return load_dataset(opts.dataset, opts.data_dir), opts.dataset, True
    except (FileNotFoundError, OSError, ValueError) as exc:
        if opts.dataset == "interactions":  # the user's own files: what is wrong with them, never made-up data
            raise DemoError(f"your interactions data cannot be read: {exc}") from exc
        if opts.checkpoint is not None:
            raise DemoError(f"the checkpoint was trained on {opts.dataset}, which cannot be read: {exc}") from exc
        where = opts.data_dir / opts.dataset if opts.data_dir else "(no --data-dir)"
        banner = "!" * 100
        say(banner)
        say(f"!! The real {opts.dataset} data was not found at {where}.")
        say("!! Using a GENERATED data set instead (model.data.synthetic_dataset): the events, users and")
        say("!! 'Synthetic item N' titles below are made up. Point --data-dir (or DATA_DIR=) at the data to see")
        say("!! real MovieLens titles.")
        say(banner)
        return load_dataset("synthetic"), "synthetic", False


def run_demo(opts: DemoOptions) -> int:
    from genrec.ops.bench_stream import scrape, start_worker, stop_process, wait_ready
    from genrec.ops.broker import EmbeddedBroker, free_port
    from genrec.ops.topics import TopicNames, create_topics, default_specs

    t_start = time.monotonic()
    deadline = t_start + opts.timeout_s
    work = Path(tempfile.mkdtemp(prefix="genrec-demo-"))
    broker: EmbeddedBroker | None = None
    worker: subprocess.Popen[bytes] | None = None
    restore = _install_sigterm()
    status = 1
    summary: dict[str, Any] = {}
    try:
        if opts.checkpoint is not None:
            meta = _read_json(opts.checkpoint / "config.json")
            if not meta:
                raise DemoError(f"{opts.checkpoint} is not a checkpoint directory (no readable config.json)")
            opts.dataset = str(meta.get("dataset", opts.dataset))
        ds, dataset, real = _load_data(opts)
        say(f"data: {dataset} — {ds.num_users} users, {ds.num_items} items, {ds.num_events} events"
            + ("" if real else " (generated)"))
        if ds.load_report:
            say(f"      {ds.load_report['file']}: {ds.load_report['rows']} rows, "
                f"{ds.load_report['duplicates_dropped']} exact duplicates dropped, timestamps read as epoch "
                f"{ds.load_report['timestamp_unit']}")

        # 1. broker and topics
        broker = EmbeddedBroker(log_path=work / "broker.log").start()
        topics = TopicNames()
        asyncio.run(create_topics(broker.bootstrap, default_specs(topics, partitions=opts.partitions)))
        say(f"broker: embedded Tansu at {broker.bootstrap} (pid {broker.pid}); topics {', '.join(topics.all())}")

        # 2. the model
        from genrec.model.baselines import evaluate_popularity

        popular = evaluate_popularity(ds) if dataset == "synthetic" or real else None
        if opts.checkpoint is not None:
            ckpt = opts.checkpoint
            test = dict(_read_json(ckpt / "metrics.json").get("test") or {})
            quality = describe_quality(test, popular, f"checkpoint {ckpt}")
        else:
            ckpt = work / "ckpt"
            budget = deadline - time.monotonic() - RESERVE_S
            if budget <= 0:
                raise DemoError("--timeout leaves no time to train a model")
            say(f"model: training the {dataset} preset for {opts.epochs} epochs (a short run; pass --checkpoint "
                "to skip) …")
            t_train = time.monotonic()
            trained = train_demo_model(dataset, opts.data_dir if real else None, ckpt, epochs=opts.epochs,
                                       threads=opts.threads, timeout_s=budget, work=work)
            test = dict(trained.get("test") or {})
            quality = describe_quality(test, popular, f"{dataset} preset, {opts.epochs} epochs, "
                                                      f"{time.monotonic() - t_train:.0f} s")
        for line in quality:
            say(line)

        # 3. the worker
        from genrec.model.serving import item_titles

        titles = item_titles(ds, opts.data_dir if real else None)
        # exclude_seen can only exclude what the worker keeps (the last DEMO_HISTORY_LEN events) and, in
        # model.serving, what the model reads (its max_events): the demo checks against the smaller window.
        max_events = int(_read_json(ckpt / "config.json").get("model", {}).get("max_events") or DEMO_HISTORY_LEN)
        window = min(DEMO_HISTORY_LEN, max_events)
        port = free_port()
        threads_env = {"OMP_NUM_THREADS": str(opts.threads)} if opts.threads else {}
        worker = start_worker(
            broker.bootstrap,
            ckpt,
            work / "state",
            port,
            app_id="genrec-demo",
            log_path=work / "worker.log",
            env={**threads_env, "GENREC_WORKER_ID": "demo-worker"},
            extra_args=["--partitions", str(opts.partitions), "--history-len", str(DEMO_HISTORY_LEN),
                        "--log-level", "warning", *(["--threads", str(opts.threads)] if opts.threads else [])],
        )
        waited = wait_ready(port, worker, timeout_s=max(1.0, min(180.0, deadline - time.monotonic())))
        say(f"worker: pid {worker.pid}, ready after {waited:.1f} s (/ready on port {port})")

        # 4-5. the stream and the live lists
        n_events = min(opts.events, ds.num_events)
        say(f"stream: {n_events} {dataset} events in time order at "
            + (f"{opts.rate:g} msg/s" if opts.rate > 0 else "full speed")
            + f", {opts.requests} recommendation requests (k={opts.k}); ranked lists as they arrive:")
        say()
        timings = asyncio.run(
            run_stream(bootstrap=broker.bootstrap, port=port, ds=ds, titles=titles, n_events=n_events,
                       n_requests=opts.requests, k=opts.k, rate=opts.rate, show=opts.show, deadline=deadline,
                       topics=topics, window=window)
        )
        out: Outcome = timings["outcome"]
        metrics = scrape(port)
        dead = int(sum(v for key, v in metrics.items() if key.startswith("genrec_dead_letters_total")))
        versions = sorted({r.model_version for r in out.results.values()})
        lat = list(out.latency_ms.values())
        violations = exclude_seen_violations(out)
        older = seen_before_window(out)
        n_excl = sum(1 for s in out.requests.values() if s.exclude_seen)
        missing = [rid for rid in out.requests if rid not in out.results]
        throughput = timings["stream_messages"] / timings["stream_s"]
        summary = {
            "dataset": dataset,
            "real_data": real,
            "events": timings["events"],
            "requests": len(out.requests),
            "results": len(out.results),
            "missing": len(missing),
            "duplicate_results": out.duplicates,
            "dead_letters": dead,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": percentile(lat, 100),
            "stream_seconds": round(timings["stream_s"], 2),
            "throughput_msg_per_s": round(throughput, 1),
            "cold_start_results": len(out.cold),
            "exclude_seen_lists": n_excl,
            "exclude_seen_violations": len(violations),
            "exclude_seen_window": window,
            "exclude_seen_items_before_window": older,
            "model_version": versions[0] if len(versions) == 1 else versions,
            "model_test": {key: round(float(v), 4) for key, v in test.items() if key in ("ndcg@10", "hr@10", "auc")},
        }
        say()
        say("─" * 100)
        say(f"events sent        {summary['events']}")
        say(f"requests sent      {summary['requests']} ({n_excl} with exclude_seen, sent once every event was "
            f"ingested)")
        say(f"results received   {summary['results']}" + (f"  — MISSING {len(missing)}" if missing else "")
            + (f"  — {out.duplicates} duplicates" if out.duplicates else ""))
        say(f"dead letters       {dead}")
        say(f"latency end to end p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms (request sent → result "
            f"received, measured here)")
        say(f"throughput         {summary['throughput_msg_per_s']:g} msg/s: {timings['stream_messages']} events + "
            f"requests in {timings['stream_s']:.2f} s, first sent → last ingested/answered"
            + (f" (replay paced at {opts.rate:g}/s; --rate 0 for full speed)" if opts.rate > 0 else ""))
        if out.cold:
            say(f"cold start         {len(out.cold)} stream requests arrived before any of their user's events had "
                "reached the worker's state (answered with the most popular items)")
        say(f"exclude_seen       {n_excl - len({r for r, _ in violations})}/{n_excl} lists free of the items of the "
            f"user's last {window} events (what the worker keeps and the model reads)"
            + (f"; {older} recommended items were rated before that window, out of exclude_seen's reach" if older
               else ""))
        say(f"model version      {summary['model_version']}")
        say(
            f"summary: events {summary['events']} · requests {summary['requests']} · results {summary['results']} · "
            f"dead letters {dead} · p50 {summary['p50_ms']} ms · p99 {summary['p99_ms']} ms · "
            f"{summary['throughput_msg_per_s']:g} msg/s · model {summary['model_version']}"
        )
        if missing or violations or out.duplicates:
            say(f"FAILED: {len(missing)} requests without a result, {len(violations)} seen items in exclude_seen "
                f"lists, {out.duplicates} duplicate results")
            _print_log_tail(work / "worker.log")
            status = 1
        else:
            status = 0
    except DemoError as exc:
        say(f"genrec demo: {exc}")
        _print_log_tail(work / "worker.log")
        status = 1
    except KeyboardInterrupt:
        say("\ngenrec demo: interrupted — stopping the worker and the broker")
        status = 130
    finally:
        restore()
        # Worker first: cut off from its broker, it would take long to stop.
        if worker is not None:
            code = stop_process(worker, timeout_s=30.0)
            summary["worker_exit"] = code
            say(f"stopped: worker (SIGTERM, exit status {code})")
        if broker is not None:
            code = broker.stop()
            say(f"stopped: broker (pid {broker.pid}, exit status {code})")
        shutil.rmtree(work, ignore_errors=True)
        say(f"removed {work}; total {time.monotonic() - t_start:.0f} s")
    if opts.json_out and summary:
        summary["exit_status"] = status
        summary["wall_seconds"] = round(time.monotonic() - t_start, 1)
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    return status


def _print_log_tail(path: Path, n: int = 30) -> None:
    with contextlib.suppress(OSError):
        # Without Faust's terminal control sequences (its spinner), which a log file does not need.
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", path.read_text(errors="replace"))
        lines = [ln for ln in text.splitlines() if ln.strip()][-n:]
        if lines:
            say(f"--- last {len(lines)} lines of the worker log ---")
            say("\n".join(lines))


def demo(
    data_dir: Path | None = typer.Option(
        DEFAULT_DATA_DIR, "--data-dir", envvar="GENREC_DATA_DIR",
        help="Folder holding ml-100k/, or your interactions.csv (read in place)."
    ),
    dataset: str = typer.Option(
        "ml-100k", "--dataset", help="ml-100k (falls back to synthetic if absent) | synthetic | interactions (your own "
        "--data-dir DIR/interactions.csv, README 'Your own data')"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Serve this model instead of training one."),
    epochs: int = typer.Option(DEFAULT_EPOCHS, "--epochs", min=1, help="Epochs of the demo training."),
    events: int = typer.Option(3000, "--events", min=1, help="Events replayed (the first N in time order)."),
    requests: int = typer.Option(40, "--requests", min=1, help="Recommendation requests (a quarter exclude_seen)."),
    k: int = typer.Option(10, "--k", min=1, max=100, help="List length."),
    rate: float = typer.Option(500.0, "--rate", min=0.0, help="Replay messages per second (0: full speed)."),
    show: int = typer.Option(6, "--show", min=0, help="Ranked lists printed."),
    partitions: int = typer.Option(3, "--partitions", min=1, help="Partitions of the topics."),
    threads: int = typer.Option(
        DEFAULT_THREADS, "--threads", min=0, help="Torch threads to train and to serve (0: torch's default)."
    ),
    timeout: float = typer.Option(900.0, "--timeout", min=10.0, help="Give up (and clean up) after this many seconds."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object last on stdout."),
) -> None:
    """The main job end to end: embedded broker → model → worker → replayed events and requests → live ranked
    lists with titles → summary → everything stopped."""
    opts = DemoOptions(data_dir=data_dir, dataset=dataset, checkpoint=checkpoint, epochs=epochs, events=events,
                       requests=requests, k=k, rate=rate, show=show, partitions=partitions, threads=threads,
                       timeout_s=timeout, json_out=json_out)
    raise typer.Exit(run_demo(opts))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("demo")(demo)
