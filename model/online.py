"""Online learning (the trainer role, docs/architecture.md): turn the stream into training examples with the offline
tokenization, fine-tune in small bounded steps, and publish only what does not hurt a held-back slice.

    example  = a user's last L−1 events + the new event (the retrieval target and, through its item token,
               a ranking label), + the items of the list last served to the user that were not clicked
               (impressions: extra retrieval negatives and ranking negatives, as serving scores them)
    round    = ≤ steps_per_round optimizer steps; each batch mixes the newest unseen examples with a uniform
               sample of older ones (replay buffer), so the model follows the stream without forgetting
    gate     = every holdout_every-th example is never trained on; a candidate is published only if its
               NDCG@10 on those (served exactly as the worker serves) is not below the serving model's

No Kafka here: the trainer agent (`streams/trainer.py`) feeds examples and publishes versions.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from genrec.model.batching import TrainBatch
from genrec.model.checkpoint import Checkpoint
from genrec.model.config import TrainConfig
from genrec.model.generative import GenerativeRecommender
from genrec.model.tokens import History, feedback_label, tokenize
from genrec.model.train import Trainer
from genrec.model.vocab import ITEM_TABLES, grow_items, grow_optimizer_state, grow_popularity, new_item_rows
from pydantic import BaseModel, ConfigDict, Field

# Hard caps whatever the configuration says: online steps see few examples, a large LR would let one
# burst of unusual traffic rewrite the model.
MAX_LR = 1e-3
MAX_STEPS_PER_ROUND = 64


class OnlineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(default=3e-4, gt=0.0, le=MAX_LR)
    steps_per_round: int = Field(default=4, ge=1, le=MAX_STEPS_PER_ROUND)
    batch_size: int = Field(default=32, ge=1, le=1024)
    min_new_examples: int = Field(default=32, ge=1)  # a round waits for this many unseen examples
    recent_share: float = Field(default=0.5, gt=0.0, le=1.0)  # of each batch: unseen examples, rest replay
    replay_capacity: int = Field(default=20_000, ge=1)
    holdout_every: int = Field(default=10, ge=2)  # one example in this many is held back, never trained on
    holdout_capacity: int = Field(default=500, ge=1)  # the most recent held-back examples
    min_holdout: int = Field(default=30, ge=1)  # below this, the gate compares nothing and refuses
    tolerance: float = Field(default=0.0, ge=0.0, le=1.0)  # candidate NDCG@10 ≥ serving − tolerance
    max_impressions: int = Field(default=20, ge=0, le=200)
    revert_on_reject: bool = True  # a refused candidate's weights are dropped: drift does not accumulate
    seed: int = 0


@dataclass(frozen=True)
class OnlineExample:
    """One new event in context: `items/actions/ts_s` end with it (vocabulary indices, ≤ L events)."""

    items: np.ndarray  # int32 [n]
    actions: np.ndarray  # int8 [n]
    ts_s: np.ndarray  # int64 [n]
    impressions: np.ndarray  # int64 [≤ m] shown before the event, not clicked, not the target
    event_id: str
    event_ts_ms: int  # when the event happened (Kafka timestamp): what "delay to a learned model" counts from

    @property
    def target(self) -> int:
        return int(self.items[-1])

    @property
    def is_positive(self) -> bool:
        return bool(feedback_label(self.actions[-1:])[0] != 0)

    @property
    def max_index(self) -> int:
        """The highest vocabulary index the example reads (history, target, impressions)."""
        return max(int(self.items.max(initial=0)), int(self.impressions.max(initial=0)))


def make_example(history: History, item: int, action: int, ts_ms: int, shown: Sequence[int], event_id: str,
                 event_ts_ms: int, max_events: int, max_impressions: int) -> OnlineExample:
    """The history before the event (last L−1 events) + the event; `shown` = the last served list."""
    h = history.last(max_events - 1) if max_events > 1 else History.empty()
    seen_target = {item}
    imp = [int(i) for i in shown if i > 0 and i not in seen_target][:max_impressions]
    return OnlineExample(
        items=np.concatenate([h.items, [item]]).astype(np.int32),
        actions=np.concatenate([h.actions, [action]]).astype(np.int8),
        ts_s=np.concatenate([h.ts_ms // 1000, [ts_ms // 1000]]).astype(np.int64),
        impressions=np.asarray(imp, np.int64),
        event_id=event_id,
        event_ts_ms=int(event_ts_ms),
    )


def make_online_batch(examples: Sequence[OnlineExample], interleave: bool, max_impressions: int) -> TrainBatch:
    """The offline tokenization (`tokenize`), with targets only where the stream brought news: retrieval of
    the new item after the previous event, ranking of the new item's feedback at its item token."""
    tb = tokenize([e.items for e in examples], [e.actions for e in examples], [e.ts_s for e in examples],
                  interleave)
    B, T = tb.kind.shape
    ret_target = np.zeros((B, T), np.int64)
    target_ts = np.zeros((B, T), np.int64)
    rank_label = np.full((B, T), -1, np.int64)
    m = max(1, max_impressions)
    impressions = np.zeros((B, T, m), np.int64)
    for b, e in enumerate(examples):
        ip = tb.item_pos[b]
        rank_label[b, ip[-1]] = feedback_label(e.actions[-1:])[0]
        if len(e.items) < 2:
            continue  # no history: nothing retrieves the first event
        read = ip[-2] + (1 if interleave else 0)
        ret_target[b, read] = e.target
        target_ts[b, read] = e.ts_s[-1]
        k = min(len(e.impressions), m)
        impressions[b, read, :k] = e.impressions[:k]
    return TrainBatch(tb, ret_target, target_ts, rank_label, impressions if max_impressions else None)


class ReplayBuffer:
    """Unseen examples (FIFO) and a bounded reservoir of examples already trained on (uniform over the stream)."""

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity = capacity
        self.rng = rng
        self.unseen: deque[OnlineExample] = deque(maxlen=capacity)
        self.old: list[OnlineExample] = []
        self.seen_total = 0  # examples ever moved into the reservoir

    def add(self, ex: OnlineExample) -> None:
        self.unseen.append(ex)

    def _retire(self, ex: OnlineExample) -> None:
        self.seen_total += 1
        if len(self.old) < self.capacity:
            self.old.append(ex)
        else:
            j = int(self.rng.integers(0, self.seen_total))
            if j < self.capacity:
                self.old[j] = ex

    def batch(self, size: int, recent_share: float) -> tuple[list[OnlineExample], int]:
        """Up to recent_share·size unseen examples (oldest first) + older ones; returns (batch, n unseen)."""
        n_new = min(len(self.unseen), max(1, round(size * recent_share)))
        new = [self.unseen.popleft() for _ in range(n_new)]
        n_old = min(size - n_new, len(self.old))
        old = [self.old[int(i)] for i in self.rng.choice(len(self.old), n_old, replace=False)] if n_old else []
        for ex in new:
            self._retire(ex)
        return new + old, n_new


@dataclass
class RoundResult:
    steps: int
    new_examples: int
    examples: int  # rows trained on, replay included
    seconds: float
    losses: list[dict[str, float]]
    newest_event_ts_ms: int  # the latest event this round learned from (0: none)
    oldest_event_ts_ms: int

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for row in self.losses for v in row.values())


@dataclass
class GateResult:
    accepted: bool
    candidate: dict[str, float]
    serving: dict[str, float]
    n_holdout: int
    reason: str


@dataclass
class OnlineState:
    """Counters that survive a trainer restart (with the weighter's state and the optimizer's)."""

    examples: int = 0
    held_back: int = 0
    rounds: int = 0
    published: int = 0
    rejected: int = 0
    serving_version: str | None = None
    pending_event_ts_ms: list[int] = field(default_factory=list)  # events trained on since the last publish


def holdout_pick(event_id: str, every: int) -> bool:
    """Deterministic (same event → same decision after a restart or redelivery), ~1/every of the stream."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little") % every == 0


class OnlineLearner:
    """Fine-tunes `model` in place; `serving` is the reference the gate compares against (a frozen copy)."""

    def __init__(self, model: GenerativeRecommender, item_ids: list[str], train_cfg: TrainConfig,
                 cfg: OnlineConfig, popularity: Sequence[float] | None = None) -> None:
        self.cfg = cfg
        self.item_ids = item_ids
        # Training counts of the starting model's items (checkpoint meta `item_popularity`): a new item's first
        # row copies a tail item (model/vocab.py).
        self.popularity = list(popularity) if popularity is not None else None
        tcfg = train_cfg.model_copy(update={"lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed})
        self.trainer = Trainer(model, tcfg)
        self.model = model
        self.serving = copy.deepcopy(model).eval()
        self.rng = np.random.default_rng(cfg.seed)
        self.buffer = ReplayBuffer(cfg.replay_capacity, self.rng)
        self.holdout: deque[OnlineExample] = deque(maxlen=cfg.holdout_capacity)
        self.state = OnlineState()
        # Examples that name items the model does not have yet (indices past num_items, given out by the trainer
        # as the items were first seen): they wait for `grow`, never reaching a batch the model cannot index.
        self.waiting: deque[OnlineExample] = deque(maxlen=cfg.replay_capacity)
        # The agent adds examples on the event loop while a round runs on the training thread.
        self.lock = threading.Lock()

    # ---- examples ---------------------------------------------------------------------------------
    def add(self, ex: OnlineExample) -> bool:
        """Queue an example for training, or hold it back for the gate; True when held back."""
        with self.lock:
            self.state.examples += 1
            if ex.max_index > self.model.cfg.num_items:
                self.waiting.append(ex)
                return holdout_pick(ex.event_id, self.cfg.holdout_every)
            return self._admit(ex)

    def _admit(self, ex: OnlineExample) -> bool:
        if holdout_pick(ex.event_id, self.cfg.holdout_every):
            if ex.is_positive and len(ex.items) > 1:
                self.holdout.append(ex)
            self.state.held_back += 1
            return True
        self.buffer.add(ex)
        return False

    @property
    def unseen(self) -> int:
        return len(self.buffer.unseen) + len(self.waiting)

    def ready(self) -> bool:
        return self.unseen >= self.cfg.min_new_examples

    # ---- a growing vocabulary (model/vocab.py) ----------------------------------------------------
    def grow(self, new_ids: Sequence[str], text: np.ndarray | None = None) -> None:
        """The vocabulary becomes item_ids + new_ids: the model and the gate's serving reference gain the same new
        rows (so the gate compares like with like), AdamW keeps every moment it had (new rows start at 0), and the
        examples waiting for these items join the stream. Call on the training thread, between rounds."""
        with self.lock:
            if new_ids:
                N = len(self.item_ids)
                # Seeded by the vocabulary size: a replay of the same stream grows the same rows.
                rows = new_item_rows(self.model, len(new_ids), text, seed=self.cfg.seed + N,
                                     popularity=self.popularity)
                model, ids = grow_items(self.model, self.item_ids, new_ids, rows)
                serving, _ = grow_items(self.serving, self.item_ids, new_ids, rows)
                self._swap_model(model, N + 1, len(ids) + 1)
                self.serving = serving.eval()
                self.item_ids = ids
                self.popularity = grow_popularity(self.popularity, len(ids))  # new items: no training count yet
            n = self.model.cfg.num_items
            still = [ex for ex in self.waiting if ex.max_index > n]
            for ex in self.waiting:
                if ex.max_index <= n:
                    self._admit(ex)
            self.waiting = deque(still, maxlen=self.waiting.maxlen)

    def _swap_model(self, model: GenerativeRecommender, old_rows: int, new_rows: int) -> None:
        """Train `model` from now on, with the optimizer's state carried over (parameter order is the same: the
        same module tree, only the item tables are longer)."""
        old = self.trainer.opt.state_dict()
        names = [name for name, _ in model.named_parameters()]
        state = {i: grow_optimizer_state(st, old_rows, new_rows) if names[i] in ITEM_TABLES else st
                 for i, st in old["state"].items()}
        self.trainer.model = self.model = model
        self.trainer.opt = torch.optim.AdamW(model.parameters(), lr=self.trainer.cfg.lr,
                                             weight_decay=self.trainer.cfg.weight_decay)
        self.trainer.opt.load_state_dict({"state": state, "param_groups": old["param_groups"]})

    # ---- training ---------------------------------------------------------------------------------
    def train_round(self) -> RoundResult:
        """≤ steps_per_round steps; stops early when the unseen examples run out."""
        t0 = time.perf_counter()
        losses: list[dict[str, float]] = []
        new_total = rows = 0
        newest, oldest = 0, 0
        interleave = self.model.cfg.interleave_actions
        for _ in range(self.cfg.steps_per_round):
            with self.lock:
                if not self.buffer.unseen:
                    break
                batch, n_new = self.buffer.batch(self.cfg.batch_size, self.cfg.recent_share)
            for ex in batch[:n_new]:
                newest = max(newest, ex.event_ts_ms)
                oldest = ex.event_ts_ms if oldest == 0 else min(oldest, ex.event_ts_ms)
                self.state.pending_event_ts_ms.append(ex.event_ts_ms)
            tb = make_online_batch(batch, interleave, self.cfg.max_impressions)
            out = self.trainer.step(tb)
            losses.append(out)
            new_total += n_new
            rows += len(batch)
            if not math.isfinite(out["loss"]):
                break
        self.state.rounds += 1
        return RoundResult(len(losses), new_total, rows, time.perf_counter() - t0, losses, newest, oldest)

    # ---- the gate ---------------------------------------------------------------------------------
    def evaluate(self, model: GenerativeRecommender, examples: Sequence[OnlineExample], k: int = 10
                 ) -> dict[str, float]:
        """NDCG@k / HR@k of each example's target in the list the worker would serve (retrieve, exclude
        the history, sort by the serving key of model/serving.py), from the history before the target."""
        from genrec.model.serving import Recommender

        if not examples:
            return {"ndcg@10": 0.0, "hr@10": 0.0, "n": 0.0}
        was_training = model.training
        rec = Recommender(Checkpoint(model, self.item_ids, {"version": "eval"}, {}, Path(".")), device="cpu")
        ndcg = hr = 0.0
        try:
            for i in range(0, len(examples), 128):
                chunk = examples[i : i + 128]
                hists = [History(e.items[:-1], e.actions[:-1], e.ts_s[:-1] * 1000) for e in chunk]
                lists = rec.recommend(hists, k, True, now_ms=[int(e.ts_s[-1]) * 1000 for e in chunk])
                for e, recs in zip(chunk, lists, strict=True):
                    want = self.item_ids[e.target - 1]
                    for r in recs:
                        if r.item_id == want:
                            ndcg += 1.0 / math.log2(r.rank + 1)
                            hr += 1.0
                            break
        finally:
            model.train(was_training)
        n = len(examples)
        return {"ndcg@10": ndcg / n, "hr@10": hr / n, "n": float(n)}

    def gate(self) -> GateResult:
        with self.lock:
            held = list(self.holdout)
        if len(held) < self.cfg.min_holdout:
            return GateResult(False, {}, {}, len(held), f"only {len(held)} held-back examples")
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return GateResult(False, {}, {}, len(held), "non-finite weights")
        cand = self.evaluate(self.model, held)
        serv = self.evaluate(self.serving, held)
        ok = cand["ndcg@10"] >= serv["ndcg@10"] - self.cfg.tolerance
        why = "not worse than serving" if ok else "worse than serving on the held-back slice"
        return GateResult(ok, cand, serv, len(held), why)

    def accept(self, version: str) -> list[int]:
        """The candidate is now serving; returns the event times it learned from since the last publish."""
        self.serving.load_state_dict(self.model.state_dict())
        self.state.serving_version = version
        self.state.published += 1
        done, self.state.pending_event_ts_ms = self.state.pending_event_ts_ms, []
        return done

    def reject(self) -> None:
        self.state.rejected += 1
        if self.cfg.revert_on_reject:
            self.model.load_state_dict(self.serving.state_dict())

    def follow_checkpoint(self, model: GenerativeRecommender, item_ids: list[str], version: str) -> None:
        """`follow` a version whose vocabulary may be shorter than the learner's (one published before items
        joined): it is grown to the learner's vocabulary, the later items starting afresh. A vocabulary that is
        not a prefix of the learner's (another data set's) is refused."""
        self.follow(self.extend_to_vocabulary(model, item_ids, version).state_dict(), version)

    def extend_to_vocabulary(self, model: GenerativeRecommender, item_ids: list[str], what: str
                             ) -> GenerativeRecommender:
        """`model` (vocabulary item_ids, a prefix of the learner's) grown to the learner's vocabulary: the later
        items get fresh rows, with the text vectors the learner holds for them."""
        n = len(item_ids)
        if item_ids != self.item_ids[:n]:
            raise ValueError(f"{what} has another item vocabulary than the trainer's")
        if n == len(self.item_ids):
            return model
        text = None
        if self.model.cfg.text_dim:
            text = self.model.item_text[n + 1 :].detach().cpu().numpy()  # type: ignore[index]
        grown, _ = grow_items(model, item_ids, self.item_ids[n:], text=text, seed=self.cfg.seed + n,
                              popularity=self.popularity)
        return grown

    def follow(self, model_state: dict[str, torch.Tensor], version: str) -> None:
        """Another version was made serving (promote, rollback): learn on from it."""
        self.model.load_state_dict(model_state)
        self.serving.load_state_dict(model_state)
        self.state.serving_version = version
        self.state.pending_event_ts_ms = []

    # ---- persistence (JSON + safetensors; never pickle) -------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        w = self.trainer.state.weighter
        assert w is not None
        s = self.state
        return {"step": self.trainer.state.step, "weighter": w.state_dict(), "examples": s.examples,
                "held_back": s.held_back, "rounds": s.rounds, "published": s.published, "rejected": s.rejected,
                "serving_version": s.serving_version}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        w = self.trainer.state.weighter
        assert w is not None
        self.trainer.state.step = int(d["step"])
        w.load_state_dict(d["weighter"])
        for k in ("examples", "held_back", "rounds", "published", "rejected"):
            setattr(self.state, k, int(d.get(k, 0)))
        self.state.serving_version = d.get("serving_version")

    def optimizer_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """AdamW's state as flat tensors (safetensors) + its hyper-parameters (JSON)."""
        sd = self.trainer.opt.state_dict()
        tensors = {f"{i}.{name}": t.detach().cpu().contiguous().reshape(-1) if t.dim() == 0 else
                   t.detach().cpu().contiguous()
                   for i, st in sd["state"].items() for name, t in st.items() if isinstance(t, torch.Tensor)}
        return tensors, {"param_groups": sd["param_groups"]}

    def load_optimizer_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = t.reshape(()) if name == "step" else t
        groups = meta["param_groups"]
        for g in groups:
            g["lr"] = min(float(g["lr"]), self.cfg.lr)  # a restart never raises the bound
        self.trainer.opt.load_state_dict({"state": state, "param_groups": groups})

