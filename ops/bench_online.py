"""`genrec bench online`: prequential evaluation of online learning through the real broker and workers.

Protocol (prequential: every request is scored before any model learned from its click):

1. The data set's events in one global time order (ties: user, then position). The first 70 % of them train
   the starting model offline (the data set's preset, leave-one-out early stopping inside that prefix).
2. A fresh embedded broker (Tansu); two infer workers and one trainer, real `genrec worker` processes:
   *frozen* (serves the starting model, does not follow genrec.models), *online* (follows genrec.models),
   and the trainer (learns from events after the cutoff and from the online worker's served lists).
3. The prefix is replayed (histories only). The last 30 % is replayed in waves of W events; before a wave's
   events are sent, every user with a click in the wave gets a request (k=10, exclude seen) at the time of that
   first click, answered by both workers from the history before the wave; the list is scored against that
   click (NDCG@10, HR@10) — before any model has learned from it. Then the wave's events go out, and the
   next wave waits until the trainer has trained on them and the online worker serves what it published.

Prints one JSON object (`frozen_ndcg@10`, `online_ndcg@10` over the evaluated part, per-window curves,
trainer throughput and delays) and writes a PNG of both curves.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ops.bench_stream import http_get, scrape, start_worker, stop_process, wait_ready


def global_order(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, position, ts) of every event in global time order; ties by user, then position."""
    users = np.concatenate([np.full(len(x), u, np.int64) for u, x in enumerate(ds.items)])
    pos = np.concatenate([np.arange(len(x), dtype=np.int64) for x in ds.items])
    ts = np.concatenate([np.asarray(t, np.int64) if ds.has_time else np.arange(len(t), dtype=np.int64)
                         for t in ds.ts])
    order = np.lexsort((pos, users, ts))
    return users[order], pos[order], ts[order]


def prefix_dataset(ds: Any, users: np.ndarray, pos: np.ndarray, cutoff: int) -> Any:
    """The data set cut at global event `cutoff`: each user keeps the events that came before it."""
    from model.data import SequenceDataset

    keep = np.zeros(len(ds.items), np.int64)
    np.maximum.at(keep, users[:cutoff], pos[:cutoff] + 1)
    return SequenceDataset(ds.name, ds.item_ids, ds.user_ids, [x[:k] for x, k in zip(ds.items, keep, strict=True)],
                           [x[:k] for x, k in zip(ds.actions, keep, strict=True)],
                           [x[:k] for x, k in zip(ds.ts, keep, strict=True)], ds.has_time, ds.has_feedback,
                           ds.synthetic_meta)


def restrict_users(ds: Any, n: int) -> Any:
    from model.data import SequenceDataset

    return SequenceDataset(ds.name, ds.item_ids, ds.user_ids[:n], ds.items[:n], ds.actions[:n], ds.ts[:n],
                           ds.has_time, ds.has_feedback, ds.synthetic_meta)


def train_base(ds: Any, out: Path, epochs: int) -> dict[str, Any]:
    """The data set's preset on the prefix (at most `epochs`, its early stopping), one torch thread, saved."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.data import train_popularity
    from model.presets import preset
    from model.train import fit_and_test

    torch.set_num_threads(1)
    run = preset(ds.name)
    tcfg = run.train.model_copy(update={"epochs": epochs, "min_epochs": min(run.train.min_epochs, epochs),
                                        "threads": 1})
    result, test = fit_and_test(ds, tcfg, progress=False, **run.model)
    save_checkpoint(out, result.model, ds.item_ids, dataset=ds.name, train_config=tcfg.model_dump(),
                    metrics={"test_on_prefix": test, "best_epoch": result.best_epoch},
                    extra_meta={"item_popularity": train_popularity(ds).tolist()})
    return {"prefix_test": test, "best_epoch": result.best_epoch, "train_seconds": result.train_seconds}


def starting_model(ds: Any, u_of: np.ndarray, p_of: np.ndarray, cutoff: int, work: Path, epochs: int | None,
                   say: Any = None) -> tuple[Path, dict[str, Any]]:
    """The model trained on the first `cutoff` events, kept in `work` and reused by every bench that starts
    from it. `epochs` None: the preset's budget and early stopping (an under-trained start would flatter
    online learning)."""
    if epochs is None:
        from model.presets import preset

        epochs = preset(ds.name).train.epochs
    base = work / f"base-{ds.name}-{len(ds.user_ids)}u-{cutoff}-e{epochs}"
    if (base / "config.json").is_file():
        return base, {"reused": str(base)}
    if say is not None:
        say(f"training the starting model on the first {cutoff} of {len(u_of)} events (at most {epochs} epochs)")
    return base, train_base(prefix_dataset(ds, u_of, p_of, cutoff), base, epochs)


def ndcg_hr(items: list[str], target: str, k: int = 10) -> tuple[float, float]:
    for r, it in enumerate(items[:k]):
        if it == target:
            return 1.0 / float(np.log2(r + 2)), 1.0
    return 0.0, 0.0


class _Proc:
    def __init__(self, name: str, proc: Any, port: int, log: Path) -> None:
        self.name, self.proc, self.port, self.log = name, proc, port, log

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def counter(self, key: str) -> float:
        return self.metrics().get(key, 0.0)

    def ready(self) -> dict[str, Any]:
        return json.loads(http_get(self.port, "/ready")[1])

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")


def run_bench_online(dataset: str, data_dir: Path | None, *, events: int | None = None, users: int | None = None,
                     wave: int = 1000, epochs: int | None = None, work_dir: Path | None = None, windows: int = 10,
                     partitions: int = 3, online_env: dict[str, str] | None = None,
                     plot: Path | None = None, progress: bool = True) -> dict[str, Any]:
    from model.data import load_dataset
    from ops.broker import EmbeddedBroker, free_port
    from ops.topics import TopicSpec, create_topics

    if plot is not None:
        _require_matplotlib()  # before minutes of benchmark, not after them

    def say(msg: str) -> None:
        if progress:
            print(f"[bench online {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    t_start = time.time()
    ds = load_dataset(dataset, data_dir)
    if users:
        ds = restrict_users(ds, users)
    u_of, p_of, ts_of = global_order(ds)
    n_total = len(u_of)
    cutoff = int(0.7 * n_total)
    n_eval = n_total - cutoff if events is None else min(events, n_total - cutoff)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="genrec-bench-online-"))
    work.mkdir(parents=True, exist_ok=True)
    base, base_info = starting_model(ds, u_of, p_of, cutoff, work, epochs, say)
    say(f"starting model: {base}")
    store = work / f"store-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:6]
    names = {k: f"b{tag}.{k}" for k in ("events", "requests", "frozen", "online", "deadletter", "models")}
    # Data set times shifted so that the last event is "now" (the schemas reject times before 2000).
    shift_ms = int(time.time() * 1000) - int(ts_of[-1]) * 1000
    from ops.replay import _EVENT_TYPE
    from schemas.messages import Event, EventType, RecRequest, RecResult, decode, encode

    def event_msg(i: int) -> tuple[bytes, bytes]:
        u, p = int(u_of[i]), int(p_of[i])
        ev = Event(event_id=f"{tag}-{i}", user_id=ds.user_ids[u], ts=int(ts_of[i]) * 1000 + shift_ms,
                   type=_EVENT_TYPE.get(int(ds.actions[u][p]), EventType.RATING),
                   item_id=ds.item_ids[int(ds.items[u][p]) - 1])
        return ds.user_ids[u].encode(), encode(ev)

    def is_click(i: int) -> bool:
        from model.tokens import Action

        return int(ds.actions[int(u_of[i])][int(p_of[i])]) != int(Action.NEGATIVE)

    broker = EmbeddedBroker()
    broker.start()
    procs: list[_Proc] = []
    out: dict[str, Any] = {}
    try:
        bs = broker.bootstrap
        asyncio.run(create_topics(bs, [TopicSpec(names[k], partitions) for k in
                                       ("events", "requests", "frozen", "online", "deadletter")]
                                  + [TopicSpec(names["models"], 1)]))
        common = {"GENREC_EVENTS_TOPIC": names["events"], "GENREC_REQUESTS_TOPIC": names["requests"],
                  "GENREC_DEADLETTER_TOPIC": names["deadletter"], "GENREC_MODELS_TOPIC": names["models"],
                  "GENREC_PARTITIONS": str(partitions), "GENREC_TORCH_THREADS": "1", "GENREC_MAX_WAIT_MS": "5",
                  "GENREC_STANDBY_REPLICAS": "0", "OMP_NUM_THREADS": "1"}
        trainer_env = {"GENREC_TRAINER_LEARN_FROM_TS_MS": str(int(ts_of[cutoff]) * 1000 + shift_ms),
                       "GENREC_TRAINER_ONLINE__BATCH_SIZE": "64", "GENREC_TRAINER_ONLINE__STEPS_PER_ROUND": "16",
                       "GENREC_TRAINER_ONLINE__MIN_NEW_EXAMPLES": "32", **(online_env or {})}
        specs = [
            ("frozen", "infer", {"GENREC_RESULTS_TOPIC": names["frozen"], "GENREC_FOLLOW_MODELS": "false"}),
            ("online", "infer", {"GENREC_RESULTS_TOPIC": names["online"], "GENREC_MODEL_STORE": str(store)}),
            ("trainer", "trainer", {"GENREC_RESULTS_TOPIC": names["online"], "GENREC_MODEL_STORE": str(store),
                                    **trainer_env}),
        ]
        for name, role, env in specs:
            port = free_port()
            log = work / f"{name}-{tag}.log"
            proc = start_worker(bs, base, work / f"state-{tag}-{name}", port, app_id=f"bench-{tag}-{name}",
                                log_path=log, env={**common, **env, "GENREC_WORKER_ID": name},
                                extra_args=["--role", role])
            procs.append(_Proc(name, proc, port, log))
        for p in procs:
            wait_ready(p.port, p.proc, timeout_s=180)
        online, trainer = procs[1], procs[2]
        say("workers ready")
        out = asyncio.run(_drive(bs, names, ds, procs, event_msg, is_click, u_of, p_of, ts_of, shift_ms, cutoff,
                                 n_eval, wave, say, decode, encode, RecRequest, RecResult))
        tm = trainer.metrics()
        published = _read_models(bs, names["models"])
        rows = tm.get("genrec_trainer_rows_total", 0.0)
        secs = tm.get("genrec_trainer_train_seconds_total", 0.0)
        delays = [v.metrics.get("delay_s_mean") for v in published if "delay_s_mean" in v.metrics]
        out["trainer"] = {
            "steps": tm.get("genrec_trainer_steps_total", 0.0),
            "rows_trained": rows, "train_seconds": round(secs, 2),
            "rows_per_s": round(rows / secs, 1) if secs else None,
            "new_examples": tm.get('genrec_trainer_examples_total{use="train"}', 0.0),
            "held_back": tm.get('genrec_trainer_examples_total{use="holdout"}', 0.0),
            "rounds_published": tm.get('genrec_trainer_rounds_total{outcome="published"}', 0.0),
            "rounds_rejected": tm.get('genrec_trainer_rounds_total{outcome="rejected"}', 0.0),
            "rounds_without_holdout": tm.get('genrec_trainer_rounds_total{outcome="no_holdout"}', 0.0),
            "w_retrieval": tm.get('genrec_trainer_task_weight{task="retrieval"}'),
            "w_ranking": tm.get('genrec_trainer_task_weight{task="ranking"}'),
        }
        n_delay = tm.get("genrec_trainer_event_to_publish_seconds_count", 0.0)
        out["delay"] = {
            "event_to_publish_s_mean": round(tm["genrec_trainer_event_to_publish_seconds_sum"] / n_delay, 2)
            if n_delay else None,
            "event_to_publish_s_mean_per_version": round(float(np.mean(delays)), 2) if delays else None,
            **out.pop("serve_delay", {}),
        }
        out["versions_published"] = len(published)
        out["online_worker_swaps"] = online.counter('genrec_model_swaps_total{outcome="swapped"}')
        out["online_worker_refused"] = online.counter('genrec_model_swaps_total{outcome="refused"}')
    finally:
        for p in procs:
            stop_process(p.proc, timeout_s=30)
        broker.stop()
        shutil.rmtree(store, ignore_errors=True)
        for d in work.glob(f"state-{tag}-*"):
            shutil.rmtree(d, ignore_errors=True)
    result = {
        "dataset": ds.name, "users": len(ds.user_ids), "events_total": n_total, "cutoff_event": cutoff,
        "split": "first 70% of events by global time train the starting model; the rest is replayed prequentially",
        "events_evaluated": n_eval, "wave_events": wave, "base": base_info, **out,
        "broker": "tansu",  # the embedded broker started above (BENCHMARKS.md names the broker of each row)
        "seconds": round(time.time() - t_start, 1),
    }
    if plot is not None:
        _plot(result, plot)
        result["plot"] = str(plot)
    return result


def _read_models(bootstrap: str, topic: str) -> list[Any]:
    from ops.cli_models import read_published

    return read_published(bootstrap, topic)


async def _drive(bs: str, names: dict[str, str], ds: Any, procs: list[_Proc], event_msg: Any, is_click: Any,
                 u_of: np.ndarray, p_of: np.ndarray, ts_of: np.ndarray, shift_ms: int, cutoff: int, n_eval: int,
                 wave: int, say: Any, decode: Any, encode: Any, RecRequest: Any, RecResult: Any) -> dict[str, Any]:
    from ops.kafka_clients import make_consumer, make_producer

    online, trainer = procs[1], procs[2]
    producer = make_producer(bs, one_record_batches=False, linger_ms=5, acks="all")
    await producer.start()
    consumer = make_consumer(bs, names["frozen"], names["online"])
    await consumer.start()
    results: dict[str, dict[str, list[str]]] = {"frozen": {}, "online": {}}
    versions: dict[str, str] = {}

    async def collect() -> None:
        while True:
            for msgs in (await consumer.getmany(timeout_ms=100)).values():
                for m in msgs:
                    r = decode(RecResult, m.value)
                    side = "frozen" if m.topic == names["frozen"] else "online"
                    results[side][r.request_id] = [i.item_id for i in r.items]
                    if side == "online":
                        versions[r.request_id] = r.model_version

    collector = asyncio.create_task(collect())

    async def send_events(lo: int, hi: int) -> None:
        futs = []
        for i in range(lo, hi):
            key, value = event_msg(i)
            futs.append(await producer.send(names["events"], key=key, value=value))
            if len(futs) >= 2000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)

    async def wait_ingested(n: int, timeout_s: float) -> None:
        t0 = time.monotonic()
        appended = 'genrec_events_total{outcome="appended"}'
        keys = {"frozen": appended, "online": appended, "trainer": 'genrec_trainer_events_total{outcome="appended"}'}
        while time.monotonic() - t0 < timeout_s:
            counts = {}
            for p in procs:
                p.alive()
                counts[p.name] = (await asyncio.to_thread(p.metrics)).get(keys[p.name], 0.0)
            if all(c >= n for c in counts.values()):
                return
            await asyncio.sleep(0.3)
        raise TimeoutError(f"events not ingested within {timeout_s}s: {counts} < {n}")

    async def wait_trainer(timeout_s: float) -> float:
        """Until the trainer cannot start another round and the online worker serves its latest version."""
        t0 = time.monotonic()
        min_new = 32
        while time.monotonic() - t0 < timeout_s:
            st = await asyncio.to_thread(trainer.ready)
            if st.get("unseen", 0) < min_new and not st.get("busy"):
                want = st.get("serving_version")
                om = await asyncio.to_thread(online.metrics)
                if om.get(f'genrec_model_info{{version="{want}"}}') == 1.0:
                    return time.monotonic() - t0
            await asyncio.sleep(0.2)
        say(f"trainer still busy after {timeout_s}s; going on")
        return time.monotonic() - t0

    try:
        say(f"replaying the prefix: {cutoff} events")
        t0 = time.monotonic()
        await send_events(0, cutoff)
        await wait_ingested(cutoff, 1800)
        say(f"prefix ingested by all three in {time.monotonic() - t0:.0f}s")
        scores: list[dict[str, Any]] = []
        serve_delays: list[float] = []
        end = cutoff + n_eval
        sent = cutoff
        for lo in range(cutoff, end, wave):
            hi = min(lo + wave, end)
            first_click: dict[int, int] = {}
            for i in range(lo, hi):
                if is_click(i) and int(u_of[i]) not in first_click:
                    first_click[int(u_of[i])] = i
            reqs = {}
            for u, i in first_click.items():
                rid = f"q{i}"
                req = RecRequest(request_id=rid, user_id=ds.user_ids[u], ts=int(ts_of[i]) * 1000 + shift_ms, k=10,
                                 exclude_seen=True)
                reqs[rid] = (i, u)
                await producer.send(names["requests"], key=ds.user_ids[u].encode(), value=encode(req))
            await producer.flush()
            t_req = time.monotonic()
            while not all(rid in results["frozen"] and rid in results["online"] for rid in reqs):
                for p in procs:
                    p.alive()
                if time.monotonic() - t_req > 300:
                    raise TimeoutError(f"results missing for wave at {lo}")
                await asyncio.sleep(0.05)
            for rid, (i, u) in reqs.items():
                target = ds.item_ids[int(ds.items[u][int(p_of[i])]) - 1]
                fn, fh = ndcg_hr(results["frozen"][rid], target)
                on, oh = ndcg_hr(results["online"][rid], target)
                scores.append({"event": i, "frozen_ndcg": fn, "frozen_hr": fh, "online_ndcg": on, "online_hr": oh,
                               "version": versions.get(rid)})
            t_ev = time.monotonic()
            await send_events(lo, hi)
            sent = hi
            await wait_ingested(sent, 600)
            serve_delays.append(time.monotonic() - t_ev + await wait_trainer(600))
            f = np.mean([s["frozen_ndcg"] for s in scores]) if scores else 0.0
            o = np.mean([s["online_ndcg"] for s in scores]) if scores else 0.0
            say(f"events {hi - cutoff}/{n_eval}: {len(scores)} requests scored; NDCG@10 frozen {f:.4f} online {o:.4f}")
    finally:
        collector.cancel()
        await consumer.stop()
        await producer.stop()
    return summarize(scores, cutoff, n_eval, serve_delays)


def paired_diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b − a over paired requests and its 95 % bootstrap interval (requests resampled with replacement):
    both models answer the same requests, so the pairing removes the requests' own difficulty from the noise."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    if len(d) == 0:
        return 0.0, 0.0, 0.0
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    boots = d[idx].mean(axis=1)
    return float(d.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def summarize(scores: list[dict[str, Any]], cutoff: int, n_eval: int, serve_delays: list[float],
              n_windows: int = 10) -> dict[str, Any]:
    def mean(key: str, rows: list[dict[str, Any]]) -> float | None:
        return round(float(np.mean([r[key] for r in rows])), 5) if rows else None

    edges = np.linspace(cutoff, cutoff + n_eval, n_windows + 1)
    windows = []
    for a, b in itertools.pairwise(edges):
        rows = [s for s in scores if a <= s["event"] < b]
        windows.append({"events": [int(a), int(b)], "requests": len(rows),
                        "frozen_ndcg@10": mean("frozen_ndcg", rows), "online_ndcg@10": mean("online_ndcg", rows),
                        "frozen_hr@10": mean("frozen_hr", rows), "online_hr@10": mean("online_hr", rows)})
    f = np.array([s["frozen_ndcg"] for s in scores])
    o = np.array([s["online_ndcg"] for s in scores])
    diff, lo, hi = paired_diff_ci(f, o)
    return {
        "requests": len(scores),
        "frozen_ndcg@10": mean("frozen_ndcg", scores), "online_ndcg@10": mean("online_ndcg", scores),
        "frozen_hr@10": mean("frozen_hr", scores), "online_hr@10": mean("online_hr", scores),
        "online_served_by_updated_model": round(float(np.mean([s["version"] is not None and "online" in s["version"]
                                                               for s in scores])), 3) if scores else None,
        "online_minus_frozen_ndcg@10": {"mean": round(diff, 5), "ci95_paired_bootstrap": [round(lo, 5), round(hi, 5)],
                                        "requests_online_better": int((o > f).sum()),
                                        "requests_frozen_better": int((f > o).sum())},
        "windows": windows,
        "serve_delay": {
            "wave_events_sent_to_online_serving_s_mean": round(float(np.mean(serve_delays)), 2)
            if serve_delays else None,
            "wave_events_sent_to_online_serving_s_max": round(float(np.max(serve_delays)), 2)
            if serve_delays else None,
        },
    }


def _require_matplotlib() -> Any:
    """matplotlib, or an error naming the extra that brings it (it is not a core dependency: only plots need it)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'genrec[bench]'") from exc
    return matplotlib


def _plot(result: dict[str, Any], path: Path) -> None:
    matplotlib = _require_matplotlib()

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = result.get("windows", [])
    x = [i + 1 for i in range(len(w))]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("frozen_ndcg@10", "frozen"), ("online_ndcg@10", "online fine-tuned")):
        ax.plot(x, [r[key] if r[key] is not None else np.nan for r in w], marker="o", label=label)
    ax.set_xlabel("window of the evaluated timeline (last 30 % of events, in time order)")
    ax.set_ylabel("NDCG@10 (next click)")
    ax.set_title(f"{result['dataset']}: prequential NDCG@10, frozen vs online")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(app: Any, bench_app: Any) -> None:
    import typer

    def cmd(
        dataset: str = typer.Option("ml-100k", "--dataset"),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder holding the data set (../shared/data)."),
        events: int | None = typer.Option(None, "--events", help="Evaluate only the first N events after the cut."),
        users: int | None = typer.Option(None, "--users", help="Only the first N users of the data set."),
        wave: int = typer.Option(1000, "--wave", help="Events per wave (requests are made before each wave)."),
        epochs: int | None = typer.Option(None, "--epochs", help="Epochs of the starting model on the first 70 % "
                                          "(default: the data set preset's, with its early stopping)."),
        work_dir: Path | None = typer.Option(None, "--work-dir", help="Starting model, logs (reused across runs)."),
        plot: Path = typer.Option(Path("runs/bench-online.png"), "--plot", help="PNG of both NDCG@10 curves."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object last on stdout."),
    ) -> None:
        """Prequential NDCG@10/HR@10 of a frozen vs an online-fine-tuned model through the real broker."""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        result = run_bench_online(dataset, data_dir, events=events, users=users, wave=wave, epochs=epochs,
                                  work_dir=work_dir or Path("runs/bench-online"), plot=plot)
        if json_out:
            sys.stdout.write(json.dumps(result) + "\n")
        else:
            typer.echo(json.dumps(result, indent=2))

    bench_app.command("online")(cmd)
