"""The trainer role (docs/architecture.md; `genrec worker --role trainer`, one replica).

    genrec.events  ──▶ trainer_history (RocksDB, changelog) ──▶ example: history + event + last served list
    genrec.results ──▶ trainer_served  (the user's last served list: its non-clicked items are impressions)
    examples ──▶ OnlineLearner (model/online.py) on a training thread: bounded rounds, held-back gate
         └──▶ accepted candidate ──▶ model store (versions/<v>, atomic, sha256) ──▶ ModelVersion on genrec.models
    genrec.models (global table) ──▶ a promote/rollback published by someone else: learn on from that version
    an item id the vocabulary lacks ──▶ the next index (≤ max_new_items_per_version per version) ──▶ the model grows
         before the next round (model/vocab.py), trains on the events that name it, and the published version's
         items.json ends with it: workers serve it after they swap to that version

The trainer is its own consumer group (`<app_id>-trainer`), so it reads every partition of the events and
results and never takes partitions from the infer replicas. Its weights, optimizer, weighter and step counter
are saved to the store after every round and restored on start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from faust.types import EventT, StreamT
from genrec.model.checkpoint import load_checkpoint, resolve_in_store
from genrec.model.config import TrainConfig
from genrec.model.online import OnlineConfig, OnlineLearner, make_example
from genrec.model.store import ModelStore
from genrec.model.tokens import History, action_from_event
from genrec.model.vocab import grow_items, grow_popularity, new_item_text, valid_item_id
from genrec.schemas.messages import Event, EventType, ModelVersion, RecResult, decode
from genrec.streams import history_codec, recovery_watch
from genrec.streams.app import KafkaOutput
from genrec.streams.app_builder import build_faust_app, install_pages, raw_topic, state_table
from genrec.streams.metrics import CONTENT_TYPE, install_faust_sensors
from genrec.streams.models import MODEL_KEY, ModelsTopicTable, PublishingSwitch, publish_version, version_message
from genrec.streams.settings import StreamSettings
from mode import Service
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

MAX_SERVED = 200  # items of a served list remembered per user


class TrainerSettings(BaseSettings):
    """`GENREC_TRAINER_*`; the online learning bounds as `GENREC_TRAINER_ONLINE__LR=…` etc."""

    model_config = SettingsConfigDict(env_prefix="GENREC_TRAINER_", env_nested_delimiter="__", extra="ignore")

    online: OnlineConfig = OnlineConfig()
    # Events before this time (event ts, ms) only build histories: the starting model already learned them.
    learn_from_ts_ms: int = 0
    poll_s: float = 0.2
    torch_threads: int = 1
    # Items first seen on the events topic join the vocabulary, at most this many between two published versions
    # (GENREC_TRAINER_MAX_NEW_ITEMS_PER_VERSION): a burst of made-up ids cannot grow the tables without bound, and
    # every item past the cap stays unknown (as before) until a version is published.
    max_new_items_per_version: int = Field(default=1000, ge=0, le=100_000)
    # items.csv (item_id,title,text,categories; model/interactions.py) whose text gives a new item its text vector
    # in a model with item text (text_dim > 0); re-read at each growth, so an operator can add rows while it runs.
    items_csv: Path | None = None


class TrainerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_*: the trainer's CPU and memory (training runs in this process)
        self.events = Counter("genrec_trainer_events", "Events consumed, by outcome", ["outcome"], registry=r)
        self.new_items = Counter("genrec_trainer_new_items",
                                 "Item ids first seen on the events topic, by outcome (joined | over_cap | invalid)",
                                 ["outcome"], registry=r)
        self.vocabulary = Gauge("genrec_trainer_vocabulary_items", "Items in the trainer's model", registry=r)
        self.results = Counter("genrec_trainer_results", "Served lists consumed", registry=r)
        self.examples = Counter("genrec_trainer_examples", "Examples built, by use", ["use"], registry=r)
        self.steps = Counter("genrec_trainer_steps", "Optimizer steps", registry=r)
        self.recovery_stalls = Counter("genrec_trainer_recovery_stalls",
                                       "Changelog restores that made no progress for recovery_stall_s", registry=r)
        self.rows = Counter("genrec_trainer_rows", "Example rows trained on (replay included)", registry=r)
        self.train_seconds = Counter("genrec_trainer_train_seconds", "Seconds spent in training rounds", registry=r)
        self.rounds = Counter("genrec_trainer_rounds", "Training rounds, by outcome", ["outcome"], registry=r)
        self.loss = Gauge("genrec_trainer_loss", "Last step's loss, by part", ["part"], registry=r)
        self.weight = Gauge("genrec_trainer_task_weight", "Adaptive weighter's weights", ["task"], registry=r)
        self.delay = Histogram("genrec_trainer_event_to_publish_seconds",
                               "Event (Kafka timestamp) → a published model that learned from it", registry=r,
                               buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
        self.model_info = Gauge("genrec_trainer_model_info", "Version the trainer's reference serves", ["version"],
                                registry=r)
        # The gate's figures (model/online.py): a candidate is published only if its NDCG@10 on the held-back
        # slice is not below the serving model's. Both, so a dashboard shows how close each refusal was.
        self.holdout_ndcg = Gauge("genrec_trainer_holdout_ndcg",
                                  "NDCG@10 on the held-back slice at the last gated round, by model",
                                  ["model"], registry=r)  # candidate | serving
        self.holdout_examples = Gauge("genrec_trainer_holdout_examples",
                                      "Held-back examples the last gated round was measured on", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class GenrecTrainer:
    def __init__(self, settings: StreamSettings, trainer_settings: TrainerSettings | None = None) -> None:
        s = self.settings = settings
        self.tsettings = trainer_settings or TrainerSettings()
        if s.checkpoint is None or s.model_store is None:
            raise ValueError("the trainer needs --checkpoint (the starting model) and --model-store")
        self.store = ModelStore(s.model_store)
        self.metrics = TrainerMetrics()
        self.codec = history_codec.HistoryCodec(s.history_len, s.dedup_ids)
        self.learner: OnlineLearner | None = None
        self.dataset = "online"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrec-train",
                                            initializer=self._init_thread)
        # Its own consumer group: it reads every partition and never takes partitions from the infer replicas.
        self.app = app = build_faust_app(s, f"{s.app_id}-trainer", standby_replicas=0)
        self.output = KafkaOutput(
            s.model_copy(update={"results_max_batch_size": s.producer_profile.changelog_max_batch_size})
        )
        app.first_services.append(self.output)
        self.events_topic = raw_topic(app, s.events_topic, s)
        self.results_topic = raw_topic(app, s.results_topic, s)
        self.history = state_table(app, "trainer_history", s)
        self.served = state_table(app, "trainer_served", s)
        self.models = ModelsTopicTable(s)
        recovery_watch.install(app, s.recovery_stall_s, self.metrics.recovery_stalls.inc)
        install_faust_sensors(app, self.metrics.registry)
        # Children stop in reverse order: the training loop stops (and saves) before the producer it publishes with.
        self.loop = _TrainLoop(self)
        app.first_services.extend([self.models, self.loop])
        app.agent(self.events_topic, name="genrec.trainer.events")(self._events_agent)
        app.agent(self.results_topic, name="genrec.trainer.results")(self._results_agent)
        self._published: set[str] = set()
        self._ready = False
        self.publishing = PublishingSwitch()  # genrec models pause / resume

        self._pages()

    def _init_thread(self) -> None:
        import torch

        torch.set_num_threads(self.tsettings.torch_threads)

    # ---------------------------------------------------------------- learner

    def _build_learner(self) -> OnlineLearner:
        """From the saved trainer state if there is one, else from --checkpoint (also stored as a version)."""
        s = self.settings
        assert s.checkpoint is not None
        base = load_checkpoint(s.checkpoint)
        self.dataset = str(base.meta.get("dataset", "online"))
        self._extra_meta = {k: base.meta[k] for k in ("item_popularity", "text_encoder") if k in base.meta}
        try:
            self.store.info(base.version)
        except Exception:
            self.store.save_version(base.model, base.item_ids, version=base.version, parent=base.meta.get("parent"),
                                    dataset=self.dataset, metrics={}, extra_meta=self._extra_meta)
        tcfg = TrainConfig(**base.meta.get("train", {})) if base.meta.get("train") else TrainConfig()
        self._text_encoder = tcfg.item_text if tcfg.item_text != "none" else (
            tcfg.search.encoder if tcfg.search.enabled and tcfg.search.item_text else None)
        saved = self.store.load_trainer_state()
        trained = load_checkpoint(saved[0]) if saved is not None else None
        model, item_ids = base.model, base.item_ids
        if trained is not None and trained.item_ids != base.item_ids:
            # Items joined online before the restart: the starting model grows to the saved vocabulary (the saved
            # weights and optimizer then fit it), which must extend --checkpoint's.
            n = len(base.item_ids)
            if trained.item_ids[:n] != base.item_ids:
                raise ValueError("the saved trainer state has another item vocabulary than --checkpoint")
            model, item_ids = grow_items(base.model, base.item_ids, trained.item_ids[n:])
        # Items joined before a restart count 0, as they do in the published versions' meta (`_meta_for`).
        learner = OnlineLearner(model, list(item_ids), tcfg, self.tsettings.online,
                                popularity=grow_popularity(base.meta.get("item_popularity"), len(item_ids)))
        learner.state.serving_version = base.version
        if saved is not None and trained is not None:
            _, state, opt = saved
            learner.model.load_state_dict(trained.model.state_dict())
            learner.load_state_dict(state)
            learner.load_optimizer_tensors(*opt)
            serving = state.get("serving_version")
            if serving:
                ckpt = load_checkpoint(self.store.path_of(serving))
                ref = learner.extend_to_vocabulary(ckpt.model, ckpt.item_ids, f"version {serving}")
                learner.serving.load_state_dict(ref.state_dict())
            log.info("trainer resumed at step %d (serving %s, %d items)", learner.trainer.state.step, serving,
                     len(learner.item_ids))
        learner.model.train()
        # The trainer's vocabulary: the model's, then the items given an index since (the model grows to it before
        # the next round). Appended on the event loop, read on the training thread; indices never change.
        self.vocab = list(learner.item_ids)
        self.index = {raw: i + 1 for i, raw in enumerate(self.vocab)}
        self._new_since_publish = 0
        self.metrics.vocabulary.set(len(self.vocab))
        return learner

    def _new_item_index(self, item_id: str) -> int:
        """The index an item first seen on the events topic gets (0: it stays unknown)."""
        if not valid_item_id(item_id):
            self.metrics.new_items.labels(outcome="invalid").inc()
            return 0
        if self._new_since_publish >= self.tsettings.max_new_items_per_version:
            self.metrics.new_items.labels(outcome="over_cap").inc()
            return 0
        self.vocab.append(item_id)
        self.index[item_id] = idx = len(self.vocab)
        self._new_since_publish += 1
        self.metrics.new_items.labels(outcome="joined").inc()
        return idx

    def _new_item_text(self, new_ids: list[str]) -> np.ndarray | None:
        """Text vectors [M, text_dim] of new items from GENREC_TRAINER_ITEMS_CSV (zero rows: no metadata), or None
        for a model without item text."""
        learner = self.learner
        assert learner is not None
        dim = learner.model.cfg.text_dim
        if not dim:
            return None
        path = self.tsettings.items_csv
        if path is None or self._text_encoder is None or not path.is_file():
            return np.zeros((len(new_ids), dim), np.float32)
        try:
            return new_item_text(new_ids, path, self._text_encoder, dim)
        except Exception as exc:  # metadata is a help, never a reason to stop learning
            log.error("new items' text from %s: %s", path, exc)
            return np.zeros((len(new_ids), dim), np.float32)

    async def _start_learner(self) -> None:
        loop = asyncio.get_running_loop()
        self.learner = await loop.run_in_executor(self._executor, self._build_learner)
        self.metrics.model_info.labels(version=str(self.learner.state.serving_version)).set(1)
        self._ready = True

    async def _maybe_round(self) -> None:
        learner = self.learner
        if learner is None:
            return
        raw = self.models.get(MODEL_KEY)
        if raw is not None:
            await self._maybe_follow(raw)
        if self.publishing.paused(self.models):
            return  # paused by an operator (after a rollback, say): no round, so nothing is published
        if not learner.ready():
            return
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self._executor, self._round)
        if outcome is not None:
            msg, delays = outcome
            await publish_version(self.output.producer, self.settings.models_topic, msg)
            now = time.time()
            for ts_ms in delays:
                self.metrics.delay.observe(max(0.0, now - ts_ms / 1000.0))
            self.metrics.model_info.clear()
            self.metrics.model_info.labels(version=msg.version).set(1)
            nan = float("nan")
            log.info("published %s (holdout ndcg@10 %.4f vs %.4f)", msg.version,
                     msg.metrics.get("candidate_ndcg@10", nan), msg.metrics.get("serving_ndcg@10", nan))

    async def _maybe_follow(self, raw: bytes) -> None:
        """A version published by someone else (promote, rollback) becomes the trainer's starting point."""
        learner = self.learner
        assert learner is not None
        try:
            msg: ModelVersion = decode(ModelVersion, raw)
        except ValueError:
            return
        if msg.version == learner.state.serving_version or msg.version in self._published:
            return

        def load() -> None:
            assert self.settings.model_store is not None
            ckpt = load_checkpoint(resolve_in_store(self.settings.model_store, msg.path), expected_sha256=msg.sha256)
            with learner.lock:
                learner.follow_checkpoint(ckpt.model, ckpt.item_ids, msg.version)

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, load)
            self._published.add(msg.version)
            log.info("trainer follows %s (%s)", msg.version, msg.kind)
        except Exception as exc:
            self._published.add(msg.version)  # not retried
            log.error("trainer cannot follow %s: %s", msg.version, exc)

    def _meta_for(self, learner: OnlineLearner) -> dict[str, Any]:
        meta = dict(self._extra_meta)
        if "item_popularity" in meta:
            meta["item_popularity"] = grow_popularity(meta["item_popularity"], len(learner.item_ids))
        return meta

    def save_state(self) -> None:
        learner = self.learner
        if learner is not None:
            self.store.save_trainer_state(learner.model, learner.item_ids, self.dataset, learner.state_dict(),
                                          learner.optimizer_tensors())

    async def stop_training(self) -> None:
        """Graceful stop: the running round finishes (same thread), then the state is saved once more."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.save_state)
        self._executor.shutdown(wait=True)

    def _round(self) -> tuple[ModelVersion, list[int]] | None:
        """One training round, the gate, and (accepted) a new stored version; runs on the training thread."""
        learner = self.learner
        assert learner is not None
        m = self.metrics
        new_ids = self.vocab[len(learner.item_ids):]  # a snapshot: the event loop only appends
        if new_ids or learner.waiting:
            learner.grow(new_ids, self._new_item_text(new_ids) if new_ids else None)
            if new_ids:
                log.info("vocabulary grew by %d items to %d", len(new_ids), len(learner.item_ids))
                m.vocabulary.set(len(learner.item_ids))
        rr = learner.train_round()
        m.steps.inc(rr.steps)
        m.rows.inc(rr.examples)
        m.train_seconds.inc(rr.seconds)
        if rr.losses:
            for k, v in rr.losses[-1].items():
                if k.startswith("loss"):
                    m.loss.labels(part=k).set(v)
        w = learner.trainer.state.weighter
        if w is not None:
            m.weight.labels(task="retrieval").set(w.weights[0])
            m.weight.labels(task="ranking").set(w.weights[1])
        out: tuple[ModelVersion, list[int]] | None = None
        if not rr.finite:
            m.rounds.labels(outcome="non_finite").inc()
            learner.reject()
        else:
            gate = learner.gate()
            if gate.candidate:
                m.holdout_ndcg.labels(model="candidate").set(gate.candidate["ndcg@10"])
                m.holdout_ndcg.labels(model="serving").set(gate.serving["ndcg@10"])
                m.holdout_examples.set(gate.n_holdout)
            if gate.accepted:
                parent = learner.state.serving_version
                version = f"{self.dataset}-online-s{learner.trainer.state.step:07d}"
                if (self.store.versions_dir / version).exists():
                    version += f"-{int(time.time())}"
                delays = list(learner.state.pending_event_ts_ms)
                now_ms = time.time() * 1000
                metrics = {
                    "candidate_ndcg@10": gate.candidate["ndcg@10"], "serving_ndcg@10": gate.serving["ndcg@10"],
                    "candidate_hr@10": gate.candidate["hr@10"], "serving_hr@10": gate.serving["hr@10"],
                    "holdout_n": float(gate.n_holdout), "step": float(learner.trainer.state.step),
                    "examples": float(learner.state.examples),
                    "loss": float(np.mean([x["loss"] for x in rr.losses])) if rr.losses else math.nan,
                    "delay_s_mean": float(np.mean([now_ms - t for t in delays]) / 1000) if delays else 0.0,
                    "delay_s_max": float(max(now_ms - t for t in delays) / 1000) if delays else 0.0,
                }
                metrics["items"] = float(len(learner.item_ids))
                info = self.store.save_version(learner.model, learner.item_ids, version=version, parent=parent,
                                               dataset=self.dataset, metrics=metrics,
                                               extra_meta=self._meta_for(learner))
                learner.accept(version)
                self._new_since_publish = len(self.vocab) - len(learner.item_ids)  # the cap counts afresh
                self._published.add(version)
                out = (version_message(info), delays)
                m.rounds.labels(outcome="published").inc()
            else:
                m.rounds.labels(outcome="rejected" if gate.candidate else "no_holdout").inc()
                if gate.candidate:
                    learner.reject()
                    log.info("candidate refused: %s (%s vs %s)", gate.reason, gate.candidate, gate.serving)
        self.save_state()
        return out

    # ---------------------------------------------------------------- agents

    async def _events_agent(self, stream: StreamT) -> None:
        async for event in stream.events():
            self._on_event(event)

    def _on_event(self, event: EventT) -> None:
        m = event.message
        try:
            ev: Event = decode(Event, m.value)
        except ValueError:
            self.metrics.events.labels(outcome="invalid").inc()  # the infer replicas dead-letter it
            return
        key = ev.user_id.encode("utf-8")
        if m.key != key:
            self.metrics.events.labels(outcome="wrong_key").inc()  # ingest re-publishes it under the user id
            return
        current = self.history.get(key)
        if self.codec.seen(current, ev.event_id):
            self.metrics.events.labels(outcome="duplicate").inc()
            return
        if ev.type is EventType.QUERY:
            new = self.codec.append(current, event_id=ev.event_id, item_id=None, action=0, ts_ms=ev.ts)
            if new is not None:
                self.history[key] = new
            return
        assert ev.item_id is not None
        action = int(action_from_event(ev.type.value, ev.value))
        learner = self.learner
        idx = self.index.get(ev.item_id, 0) if learner is not None else 0
        if learner is not None and not idx and ev.ts >= self.tsettings.learn_from_ts_ms:
            idx = self._new_item_index(ev.item_id)
        if learner is not None and idx and ev.ts >= self.tsettings.learn_from_ts_ms:
            raw = history_codec.decode(current)
            keep = [(self.index.get(i, 0), a, t) for i, a, t in zip(raw.item_ids, raw.actions.tolist(),
                                                                     raw.ts_ms.tolist(), strict=True)]
            keep = [x for x in keep if x[0] > 0]
            hist = History(np.asarray([x[0] for x in keep], np.int32), np.asarray([x[1] for x in keep], np.int8),
                           np.asarray([x[2] for x in keep], np.int64))
            served = self.served.get(key)
            shown = [self.index.get(i, 0) for i in json.loads(served)] if served else []
            ts_ms = int(m.timestamp * 1000) if getattr(m, "timestamp", None) else int(time.time() * 1000)
            ex = make_example(hist, idx, action, ev.ts, shown, ev.event_id, ts_ms, learner.model.cfg.max_events,
                              learner.cfg.max_impressions)
            held = learner.add(ex)
            self.metrics.examples.labels(use="holdout" if held else "train").inc()
            if served:
                self.served[key] = b"[]"  # a served list counts as impressions once
        new = self.codec.append(current, event_id=ev.event_id, item_id=ev.item_id, action=action, ts_ms=ev.ts)
        if new is not None:
            self.history[key] = new
        self.metrics.events.labels(outcome="appended").inc()

    async def _results_agent(self, stream: StreamT) -> None:
        async for event in stream.events():
            m = event.message
            try:
                res: RecResult = decode(RecResult, m.value)
            except ValueError:
                continue
            key = res.user_id.encode("utf-8")
            if m.key != key:
                continue
            self.served[key] = json.dumps([i.item_id for i in res.items[:MAX_SERVED]]).encode()
            self.metrics.results.inc()

    # ---------------------------------------------------------------- web

    def _pages(self) -> None:
        app = self.app

        def health() -> tuple[int, dict[str, Any]]:
            return 200, {"status": "ok", "role": "trainer"}

        def ready() -> tuple[int, dict[str, Any]]:
            ok = self._ready and recovery_done(app.tables.recovery) and not app.rebalancing
            learner = self.learner
            state = {"ready": ok, "learner": self._ready,
                     "step": learner.trainer.state.step if learner else None,
                     "serving_version": learner.state.serving_version if learner else None,
                     "unseen": learner.unseen if learner else 0, "busy": self.loop.busy}
            return (200 if ok else 503), state

        install_pages(app, health=health, ready=ready, metrics=self.metrics.render, content_type=CONTENT_TYPE)


class _TrainLoop(Service):
    """Builds the learner before the agents consume, runs rounds, and on stop lets the running round (and its
    publish) finish before the state is saved for the last time."""

    def __init__(self, trainer: GenrecTrainer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trainer = trainer
        self.busy = False

    async def on_start(self) -> None:
        await self.trainer._start_learner()

    @Service.task
    async def _run_rounds(self) -> None:
        while not self.should_stop:
            await self.sleep(self.trainer.tsettings.poll_s)
            if self.should_stop:
                break
            self.busy = True
            try:
                await self.trainer._maybe_round()
            finally:
                self.busy = False

    async def on_stop(self) -> None:
        while self.busy:
            await asyncio.sleep(0.05)
        await self.trainer.stop_training()


def recovery_done(recovery: Any) -> bool:
    return bool(recovery.completed.is_set()) and not recovery.in_recovery
