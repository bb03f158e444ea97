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
trainer throughput and delays) and writes a PNG of both curves. Also:

- new items: every score split by whether the target is an item the starting model never trained on
  (`new_item_targets` vs `known_item_targets`). With `--vocabulary seen` the starting model's vocabulary is only
  the items of the first 70 % (what a model trained then can know): the frozen worker leaves the others out of
  histories and can never serve them, and the trainer adds them to the vocabulary as they are first seen
  (model/vocab.py). With `full` (the default, as before) every item has a row from the start, untrained.
- a periodic-retrain baseline (`--retrain-every N`): a third infer worker whose model is retrained from scratch
  (the preset, the starting model's epochs) on every event sent so far, every N waves, and published to it
  alone: what an operator without online learning runs.
- delays: from a wave's events being sent to the online worker serving a version that learned from them
  (`serve_delay`), and from an item's first event to the online worker serving a version whose vocabulary
  holds it (`new_item_first_event_to_servable_s`).
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
from genrec.ops.bench_stream import http_get, scrape, start_worker, stop_process, wait_ready
from genrec.ops.plots import require_matplotlib as _require_matplotlib


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
    from genrec.model.data import SequenceDataset

    keep = np.zeros(len(ds.items), np.int64)
    np.maximum.at(keep, users[:cutoff], pos[:cutoff] + 1)
    return SequenceDataset(ds.name, ds.item_ids, ds.user_ids, [x[:k] for x, k in zip(ds.items, keep, strict=True)],
                           [x[:k] for x, k in zip(ds.actions, keep, strict=True)],
                           [x[:k] for x, k in zip(ds.ts, keep, strict=True)], ds.has_time, ds.has_feedback,
                           ds.synthetic_meta)


def seen_vocabulary(ds: Any) -> Any:
    """The data set with a vocabulary of only the items its events name (data set order kept, re-indexed): what a
    model trained on it can know."""
    from genrec.model.data import SequenceDataset

    used = np.zeros(len(ds.item_ids) + 1, bool)
    for x in ds.items:
        used[np.asarray(x, np.int64)] = True
    used[0] = False
    keep = np.flatnonzero(used)  # old indices, ascending
    new_index = np.zeros(len(ds.item_ids) + 1, np.int32)
    new_index[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return SequenceDataset(ds.name, [ds.item_ids[int(i) - 1] for i in keep], ds.user_ids,
                           [new_index[np.asarray(x, np.int64)] for x in ds.items], ds.actions, ds.ts, ds.has_time,
                           ds.has_feedback, ds.synthetic_meta)


def restrict_users(ds: Any, n: int) -> Any:
    from genrec.model.data import SequenceDataset

    return SequenceDataset(ds.name, ds.item_ids, ds.user_ids[:n], ds.items[:n], ds.actions[:n], ds.ts[:n],
                           ds.has_time, ds.has_feedback, ds.synthetic_meta)


def train_base(ds: Any, out: Path, epochs: int, version: str | None = None) -> dict[str, Any]:
    """The data set's preset on the prefix (at most `epochs`, its early stopping), one torch thread, saved."""
    import torch
    from genrec.model.checkpoint import save_checkpoint
    from genrec.model.data import train_popularity
    from genrec.model.presets import preset
    from genrec.model.train import fit_and_test

    torch.set_num_threads(1)
    run = preset(ds.name)
    tcfg = run.train.model_copy(update={"epochs": epochs, "min_epochs": min(run.train.min_epochs, epochs),
                                        "threads": 1})
    result, test = fit_and_test(ds, tcfg, progress=False, **run.model)
    save_checkpoint(out, result.model, ds.item_ids, dataset=ds.name, train_config=tcfg.model_dump(),
                    metrics={"test_on_prefix": test, "best_epoch": result.best_epoch},
                    extra_meta={"item_popularity": train_popularity(ds).tolist()}, version=version)
    return {"prefix_test": test, "best_epoch": result.best_epoch, "train_seconds": result.train_seconds}


def resolve_epochs(ds: Any, epochs: int | None) -> int:
    if epochs is None:
        from genrec.model.presets import preset

        return preset(ds.name).train.epochs
    return epochs


def starting_model(ds: Any, u_of: np.ndarray, p_of: np.ndarray, cutoff: int, work: Path, epochs: int | None,
                   say: Any = None, vocabulary: str = "full") -> tuple[Path, dict[str, Any]]:
    """The model trained on the first `cutoff` events, kept in `work` and reused by every bench that starts
    from it. `epochs` None: the preset's budget and early stopping (an under-trained start would flatter
    online learning). `vocabulary`: "full" (every item of the data set has a row) or "seen" (only the items of
    the first `cutoff` events, `seen_vocabulary`)."""
    epochs = resolve_epochs(ds, epochs)
    suffix = "" if vocabulary == "full" else f"-{vocabulary}"
    base = work / f"base-{ds.name}-{len(ds.user_ids)}u-{cutoff}-e{epochs}{suffix}"
    if (base / "config.json").is_file():
        return base, {"reused": str(base)}
    if say is not None:
        say(f"training the starting model on the first {cutoff} of {len(u_of)} events (at most {epochs} epochs)")
    prefix = prefix_dataset(ds, u_of, p_of, cutoff)
    return base, train_base(seen_vocabulary(prefix) if vocabulary == "seen" else prefix, base, epochs)


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
                     plot: Path | None = None, progress: bool = True, vocabulary: str = "full",
                     retrain_every: int = 0, retrain_epochs: int | None = None) -> dict[str, Any]:
    from genrec.model.data import load_dataset
    from genrec.ops.broker import EmbeddedBroker, free_port
    from genrec.ops.topics import TopicSpec, create_topics

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
    if vocabulary not in ("full", "seen"):
        raise ValueError(f"vocabulary must be 'full' or 'seen', not {vocabulary!r}")
    base, base_info = starting_model(ds, u_of, p_of, cutoff, work, epochs, say, vocabulary)
    say(f"starting model: {base}")
    base_items = set(json.loads((base / "items.json").read_text()))
    # Items the starting model never trained on: absent from the first 70 % (whether or not they have a row).
    trained_items = {ds.item_ids[int(ds.items[int(u)][int(p)]) - 1] for u, p in zip(u_of[:cutoff], p_of[:cutoff],
                                                                                     strict=True)}
    store = work / f"store-{uuid.uuid4().hex[:6]}"
    retrain_store = work / f"retrain-store-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:6]
    names = {k: f"b{tag}.{k}" for k in ("events", "requests", "frozen", "online", "deadletter", "models", "retrain",
                                         "retrain_models")}
    # Data set times shifted so that the last event is "now" (the schemas reject times before 2000).
    shift_ms = int(time.time() * 1000) - int(ts_of[-1]) * 1000
    from genrec.ops.replay import _EVENT_TYPE
    from genrec.schemas.messages import Event, EventType, RecRequest, RecResult, decode, encode

    def event_msg(i: int) -> tuple[bytes, bytes]:
        u, p = int(u_of[i]), int(p_of[i])
        ev = Event(event_id=f"{tag}-{i}", user_id=ds.user_ids[u], ts=int(ts_of[i]) * 1000 + shift_ms,
                   type=_EVENT_TYPE.get(int(ds.actions[u][p]), EventType.RATING),
                   item_id=ds.item_ids[int(ds.items[u][p]) - 1])
        return ds.user_ids[u].encode(), encode(ev)

    def is_click(i: int) -> bool:
        from genrec.model.tokens import Action

        return int(ds.actions[int(u_of[i])][int(p_of[i])]) != int(Action.NEGATIVE)

    broker = EmbeddedBroker()
    broker.start()
    procs: list[_Proc] = []
    out: dict[str, Any] = {}
    try:
        bs = broker.bootstrap
        asyncio.run(create_topics(bs, [TopicSpec(names[k], partitions) for k in
                                       ("events", "requests", "frozen", "online", "deadletter", "retrain")]
                                  + [TopicSpec(names["models"], 1), TopicSpec(names["retrain_models"], 1)]))
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
        if retrain_every:
            # Follows its own models topic: only the bench's from-scratch retrains are published there.
            specs.append(("retrain", "infer", {"GENREC_RESULTS_TOPIC": names["retrain"],
                                               "GENREC_MODEL_STORE": str(retrain_store),
                                               "GENREC_MODELS_TOPIC": names["retrain_models"]}))
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
        retrain = _Retrainer(ds, u_of, p_of, work, retrain_store, vocabulary,
                             resolve_epochs(ds, retrain_epochs if retrain_epochs is not None else epochs),
                             retrain_every, say) if retrain_every else None
        out = asyncio.run(_drive(bs, names, ds, procs, event_msg, is_click, u_of, p_of, ts_of, shift_ms, cutoff,
                                 n_eval, wave, say, decode, encode, RecRequest, RecResult,
                                 _NewItems(trained_items, base_items, store), retrain))
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
        shutil.rmtree(retrain_store, ignore_errors=True)
        for d in work.glob(f"state-{tag}-*"):
            shutil.rmtree(d, ignore_errors=True)
    result = {
        "dataset": ds.name, "users": len(ds.user_ids), "events_total": n_total, "cutoff_event": cutoff,
        "split": "first 70% of events by global time train the starting model; the rest is replayed prequentially",
        "events_evaluated": n_eval, "wave_events": wave, "base": base_info, "vocabulary": vocabulary,
        "base_items": len(base_items), "retrain_every_waves": retrain_every, **out,
        "broker": "tansu",  # the embedded broker started above (BENCHMARKS.md names the broker of each row)
        "seconds": round(time.time() - t_start, 1),
    }
    if plot is not None:
        _plot(result, plot)
        result["plot"] = str(plot)
    return result


class _NewItems:
    """Items the starting model never trained on (`trained`: the items of the first 70 %), and for those outside
    its vocabulary (`base_items`), how long from their first event until the online worker served a version
    whose items.json holds them."""

    def __init__(self, trained: set[str], base_items: set[str], store: Path) -> None:
        self.trained, self.base_items, self.store = trained, base_items, store
        self.first_sent: dict[str, float] = {}  # outside the vocabulary, not yet servable: first send time
        self.servable_s: list[float] = []
        self._vocab_of: dict[str, set[str]] = {}

    def is_new(self, item: str) -> bool:
        return item not in self.trained

    def sent(self, item: str, t: float) -> None:
        if item not in self.base_items and item not in self.first_sent and item not in self._known():
            self.first_sent[item] = t

    def _known(self) -> set[str]:
        return set().union(*self._vocab_of.values()) if self._vocab_of else set()

    def serving(self, version: str | None, t: float) -> None:
        """The online worker serves `version` at time t: items it holds are servable from now."""
        if not version or not self.first_sent:
            return
        if version not in self._vocab_of:
            path = self.store / "versions" / version / "items.json"
            self._vocab_of[version] = set(json.loads(path.read_text())) if path.is_file() else set()
        vocab = self._vocab_of[version]
        for item in [i for i in self.first_sent if i in vocab]:
            self.servable_s.append(t - self.first_sent.pop(item))

    def summary(self) -> dict[str, Any]:
        d = np.asarray(self.servable_s, np.float64)
        return {"items_servable": len(d), "items_never_servable": len(self.first_sent),
                "mean": round(float(d.mean()), 2) if len(d) else None,
                "p50": round(float(np.median(d)), 2) if len(d) else None,
                "max": round(float(d.max()), 2) if len(d) else None}


class _Retrainer:
    """The periodic-retrain baseline: every `every` waves, the preset trained from scratch on every event sent so
    far (the same vocabulary rule as the starting model), stored as a version of its own store."""

    def __init__(self, ds: Any, u_of: np.ndarray, p_of: np.ndarray, work: Path, store_root: Path, vocabulary: str,
                 epochs: int, every: int, say: Any) -> None:
        from genrec.model.store import ModelStore

        self.ds, self.u_of, self.p_of, self.work = ds, u_of, p_of, work
        self.store = ModelStore(store_root)
        self.vocabulary, self.epochs, self.every, self.say = vocabulary, epochs, every, say
        self.train_seconds: list[float] = []
        self.versions: list[str] = []

    def due(self, wave_index: int) -> bool:
        return (wave_index + 1) % self.every == 0

    def train(self, upto: int) -> Any:
        """Blocking: train on events [0, upto), store; returns the VersionInfo."""
        data = prefix_dataset(self.ds, self.u_of, self.p_of, upto)
        if self.vocabulary == "seen":
            data = seen_vocabulary(data)
        version = f"{self.ds.name}-retrain-{upto:09d}"
        self.say(f"periodic retrain from scratch on {upto} events ({self.epochs} epochs at most)")
        t0 = time.monotonic()
        train_base(data, self.store.path_of(version), self.epochs, version=version)
        self.train_seconds.append(time.monotonic() - t0)
        self.versions.append(version)
        return self.store.info(version)

    def summary(self) -> dict[str, Any]:
        return {"retrains": len(self.versions), "epochs": self.epochs,
                "train_seconds_mean": round(float(np.mean(self.train_seconds)), 1) if self.train_seconds else None}


def _read_models(bootstrap: str, topic: str) -> list[Any]:
    from genrec.ops.cli_models import read_published

    return read_published(bootstrap, topic)


async def _drive(bs: str, names: dict[str, str], ds: Any, procs: list[_Proc], event_msg: Any, is_click: Any,
                 u_of: np.ndarray, p_of: np.ndarray, ts_of: np.ndarray, shift_ms: int, cutoff: int, n_eval: int,
                 wave: int, say: Any, decode: Any, encode: Any, RecRequest: Any, RecResult: Any,
                 new_items: _NewItems | None = None, retrain: _Retrainer | None = None) -> dict[str, Any]:
    from genrec.ops.kafka_clients import make_consumer, make_producer
    from genrec.streams.models import publish_version, version_message

    online, trainer = procs[1], procs[2]
    retrain_proc = procs[3] if retrain is not None else None
    sides = ["frozen", "online"] + (["retrain"] if retrain is not None else [])
    producer = make_producer(bs, one_record_batches=False, linger_ms=5, acks="all")
    await producer.start()
    # The retrain worker recovers its models topic by its end offset: one-record batches (docs/architecture.md).
    models_producer = make_producer(bs, one_record_batches=True, acks="all") if retrain is not None else None
    if models_producer is not None:
        await models_producer.start()
    consumer = make_consumer(bs, *(names[k] for k in sides))
    await consumer.start()
    results: dict[str, dict[str, list[str]]] = {k: {} for k in sides}
    side_of = {names[k]: k for k in sides}
    versions: dict[str, str] = {}

    async def collect() -> None:
        while True:
            for msgs in (await consumer.getmany(timeout_ms=100)).values():
                for m in msgs:
                    r = decode(RecResult, m.value)
                    side = side_of[m.topic]
                    results[side][r.request_id] = [i.item_id for i in r.items]
                    if side == "online":
                        versions[r.request_id] = r.model_version

    collector = asyncio.create_task(collect())

    async def send_events(lo: int, hi: int) -> None:
        futs = []
        for i in range(lo, hi):
            key, value = event_msg(i)
            if new_items is not None:
                new_items.sent(ds.item_ids[int(ds.items[int(u_of[i])][int(p_of[i])]) - 1], time.monotonic())
            futs.append(await producer.send(names["events"], key=key, value=value))
            if len(futs) >= 2000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)

    async def wait_ingested(n: int, timeout_s: float) -> None:
        t0 = time.monotonic()
        appended = 'genrec_events_total{outcome="appended"}'
        keys = {"frozen": appended, "online": appended, "retrain": appended,
                "trainer": 'genrec_trainer_events_total{outcome="appended"}'}
        while time.monotonic() - t0 < timeout_s:
            counts = {}
            for p in procs:
                p.alive()
                counts[p.name] = (await asyncio.to_thread(p.metrics)).get(keys[p.name], 0.0)
            if all(c >= n for c in counts.values()):
                return
            await asyncio.sleep(0.3)
        raise TimeoutError(f"events not ingested within {timeout_s}s: {counts} < {n}")

    async def wait_trainer(timeout_s: float) -> tuple[float, str | None]:
        """Until the trainer cannot start another round and the online worker serves its latest version; returns
        the seconds waited and that version."""
        t0 = time.monotonic()
        min_new = 32
        while time.monotonic() - t0 < timeout_s:
            st = await asyncio.to_thread(trainer.ready)
            if st.get("unseen", 0) < min_new and not st.get("busy"):
                want = st.get("serving_version")
                om = await asyncio.to_thread(online.metrics)
                if om.get(f'genrec_model_info{{version="{want}"}}') == 1.0:
                    return time.monotonic() - t0, want
            await asyncio.sleep(0.2)
        say(f"trainer still busy after {timeout_s}s; going on")
        return time.monotonic() - t0, None

    async def retrain_now(upto: int) -> None:
        assert retrain is not None and retrain_proc is not None and models_producer is not None
        info = await asyncio.to_thread(retrain.train, upto)
        await publish_version(models_producer, names["retrain_models"], version_message(info))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            retrain_proc.alive()
            m = await asyncio.to_thread(retrain_proc.metrics)
            if m.get(f'genrec_model_info{{version="{info.version}"}}') == 1.0:
                return
            await asyncio.sleep(0.2)
        say(f"the retrain worker does not serve {info.version} after 300s; going on")

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
        for wave_index, lo in enumerate(range(cutoff, end, wave)):
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
            while not all(rid in results[k] for k in sides for rid in reqs):
                for p in procs:
                    p.alive()
                if time.monotonic() - t_req > 300:
                    raise TimeoutError(f"results missing for wave at {lo}")
                await asyncio.sleep(0.05)
            for rid, (i, u) in reqs.items():
                target = ds.item_ids[int(ds.items[u][int(p_of[i])]) - 1]
                row: dict[str, Any] = {"event": i, "version": versions.get(rid),
                                       "new_item": bool(new_items is not None and new_items.is_new(target))}
                for k in sides:
                    row[f"{k}_ndcg"], row[f"{k}_hr"] = ndcg_hr(results[k][rid], target)
                scores.append(row)
            t_ev = time.monotonic()
            await send_events(lo, hi)
            sent = hi
            await wait_ingested(sent, 600)
            _, serving = await wait_trainer(600)
            serve_delays.append(time.monotonic() - t_ev)
            if new_items is not None:
                new_items.serving(serving, time.monotonic())
            if retrain is not None and retrain.due(wave_index) and hi < end:
                await retrain_now(sent)
            f = np.mean([s["frozen_ndcg"] for s in scores]) if scores else 0.0
            o = np.mean([s["online_ndcg"] for s in scores]) if scores else 0.0
            say(f"events {hi - cutoff}/{n_eval}: {len(scores)} requests scored; NDCG@10 frozen {f:.4f} online {o:.4f}")
    finally:
        collector.cancel()
        await consumer.stop()
        await producer.stop()
        if models_producer is not None:
            await models_producer.stop()
    out = summarize(scores, cutoff, n_eval, serve_delays)
    if new_items is not None:
        out["serve_delay"]["new_item_first_event_to_servable_s"] = new_items.summary()
    if retrain is not None:
        out["retrain"] = retrain.summary()
    return out


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

    sides = [k for k in ("frozen", "online", "retrain") if scores and f"{k}_ndcg" in scores[0]]
    edges = np.linspace(cutoff, cutoff + n_eval, n_windows + 1)
    windows = []
    for a, b in itertools.pairwise(edges):
        rows = [s for s in scores if a <= s["event"] < b]
        windows.append({"events": [int(a), int(b)], "requests": len(rows),
                        "frozen_ndcg@10": mean("frozen_ndcg", rows), "online_ndcg@10": mean("online_ndcg", rows),
                        "frozen_hr@10": mean("frozen_hr", rows), "online_hr@10": mean("online_hr", rows),
                        **({"retrain_ndcg@10": mean("retrain_ndcg", rows)} if "retrain" in sides else {}),
                        # The band of the prequential plot (ops/plots.py `window_intervals`).
                        **({"online_minus_frozen_ndcg@10": _paired(rows, "frozen", "online")} if rows else {})})
    f = np.array([s["frozen_ndcg"] for s in scores])
    o = np.array([s["online_ndcg"] for s in scores])
    diff, lo, hi = paired_diff_ci(f, o)
    extra: dict[str, Any] = {}
    if "retrain" in sides:
        extra = {"retrain_ndcg@10": mean("retrain_ndcg", scores), "retrain_hr@10": mean("retrain_hr", scores),
                 "online_minus_retrain_ndcg@10": _paired(scores, "retrain", "online"),
                 "retrain_minus_frozen_ndcg@10": _paired(scores, "frozen", "retrain")}
    # Targets the starting model never trained on vs the rest: where online learning (and a growing vocabulary)
    # has the most to win.
    new = [s for s in scores if s.get("new_item")]
    known = [s for s in scores if not s.get("new_item")]
    for name, rows in (("new_item_targets", new), ("known_item_targets", known)):
        part: dict[str, Any] = {"requests": len(rows),
                                "share": round(len(rows) / len(scores), 4) if scores else None}
        for k in sides:
            part[f"{k}_ndcg@10"] = mean(f"{k}_ndcg", rows)
            part[f"{k}_hr@10"] = mean(f"{k}_hr", rows)
        part["online_minus_frozen_ndcg@10"] = _paired(rows, "frozen", "online")
        if "retrain" in sides:
            part["online_minus_retrain_ndcg@10"] = _paired(rows, "retrain", "online")
        extra[name] = part
    return {
        "requests": len(scores),
        "frozen_ndcg@10": mean("frozen_ndcg", scores), "online_ndcg@10": mean("online_ndcg", scores),
        "frozen_hr@10": mean("frozen_hr", scores), "online_hr@10": mean("online_hr", scores),
        "online_served_by_updated_model": round(float(np.mean([s["version"] is not None and "online" in s["version"]
                                                               for s in scores])), 3) if scores else None,
        "online_minus_frozen_ndcg@10": {"mean": round(diff, 5), "ci95_paired_bootstrap": [round(lo, 5), round(hi, 5)],
                                        "requests_online_better": int((o > f).sum()),
                                        "requests_frozen_better": int((f > o).sum())},
        **extra,
        "windows": windows,
        "serve_delay": {
            "wave_events_sent_to_online_serving_s_mean": round(float(np.mean(serve_delays)), 2)
            if serve_delays else None,
            "wave_events_sent_to_online_serving_s_max": round(float(np.max(serve_delays)), 2)
            if serve_delays else None,
        },
    }


def _paired(rows: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """b − a in NDCG@10 over the same requests, with its 95 % paired bootstrap interval."""
    diff, lo, hi = paired_diff_ci(np.array([r[f"{a}_ndcg"] for r in rows]), np.array([r[f"{b}_ndcg"] for r in rows]))
    return {"mean": round(diff, 5), "ci95_paired_bootstrap": [round(lo, 5), round(hi, 5)], "requests": len(rows)}


def _plot(result: dict[str, Any], path: Path) -> None:
    """Both NDCG@10 curves per window, and online − frozen with its 95 % band (ops/plots.py `prequential`)."""
    from genrec.ops.plots import invoked_command, prequential_from_result

    load = os.getloadavg()[0]
    prequential_from_result(result, path, command=invoked_command(),
                            note=f"{os.cpu_count()} cores, 1-minute load average {load:.2f} at the end; "
                                 f"{result.get('seconds', '?')} s run, broker {result.get('broker', 'tansu')}")


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
        plot: Path = typer.Option(Path("runs/bench-online.png"), "--plot", help="PNG of both NDCG@10 curves, and "
                                  "online − frozen with its 95 % band."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object last on stdout."),
        vocabulary: str = typer.Option("full", "--vocabulary", help="The starting model's items: full (every item "
                                       "of the data set) or seen (only those of the first 70 %; the trainer adds "
                                       "the others as they are first seen)."),
        retrain_every: int = typer.Option(0, "--retrain-every", help="Periodic-retrain baseline: a model trained "
                                          "from scratch on every event so far, every N waves (0: none)."),
        retrain_epochs: int | None = typer.Option(None, "--retrain-epochs", help="Epochs of each retrain "
                                                  "(default: the starting model's)."),
    ) -> None:
        """Prequential NDCG@10/HR@10 of a frozen vs an online-fine-tuned model through the real broker."""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from genrec.ops.plots import check_matplotlib

        check_matplotlib("genrec bench online")  # --plot always has a path (its default)
        if vocabulary not in ("full", "seen"):
            raise typer.BadParameter("--vocabulary is full or seen")
        result = run_bench_online(dataset, data_dir, events=events, users=users, wave=wave, epochs=epochs,
                                  work_dir=work_dir or Path("runs/bench-online"), plot=plot, vocabulary=vocabulary,
                                  retrain_every=retrain_every, retrain_epochs=retrain_epochs)
        if json_out:
            sys.stdout.write(json.dumps(result) + "\n")
        else:
            typer.echo(json.dumps(result, indent=2))

    bench_app.command("online")(cmd)
