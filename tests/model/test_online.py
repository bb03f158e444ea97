"""Online learning (model/online.py): batch layout, impressions as negatives, the replay mix, the gate,
state that survives a restart, and a short run on real ML-100K events."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from genrec.model.config import ModelConfig, TrainConfig
from genrec.model.generative import GenerativeRecommender
from genrec.model.online import (
    OnlineConfig,
    OnlineExample,
    OnlineLearner,
    ReplayBuffer,
    make_example,
    make_online_batch,
)
from genrec.model.store import ModelStore
from genrec.model.tokens import Action, History, Kind


def _cfg(n_items: int = 50) -> ModelConfig:
    return ModelConfig(num_items=n_items, d_model=16, n_layers=1, n_heads=2, dropout=0.0, max_events=20)


def _learner(cfg: OnlineConfig | None = None, seed: int = 0, n_items: int = 50) -> OnlineLearner:
    torch.manual_seed(seed)
    model = GenerativeRecommender(_cfg(n_items))
    tcfg = TrainConfig(uniform_negatives=16, inbatch_negatives=8)
    return OnlineLearner(model, [str(i) for i in range(1, n_items + 1)], tcfg, cfg or OnlineConfig(min_holdout=5))


def _example(rng: np.random.Generator, eid: str, n: int = 6, shown: list[int] | None = None,
             n_items: int = 50) -> OnlineExample:
    items = rng.integers(1, n_items + 1, n).astype(np.int32)
    acts = rng.choice([Action.POSITIVE, Action.NEGATIVE], n).astype(np.int8)
    ts = (1_700_000_000_000 + np.arange(n) * 60_000).astype(np.int64)
    h = History(items[:-1], acts[:-1], ts[:-1])
    return make_example(h, int(items[-1]), int(acts[-1]), int(ts[-1]), shown or [], eid, int(ts[-1]), 20, 5)


def test_batch_targets_only_the_new_event_and_aligns_impressions() -> None:
    rng = np.random.default_rng(0)
    ex = _example(rng, "e1", n=4, shown=[7, 8, 9])
    ex = OnlineExample(ex.items, ex.actions.copy(), ex.ts_s, ex.impressions, ex.event_id, ex.event_ts_ms)
    first = make_example(History.empty(), 5, int(Action.NEGATIVE), 1_700_000_000_000, [5, 6], "e2", 0, 20, 5)
    tb = make_online_batch([ex, first], interleave=True, max_impressions=5)
    T = tb.tokens.kind.shape[1]
    # Row 0: 4 events → 8 tokens; the retrieval target sits at the 3rd event's action token (T-3).
    assert tb.tokens.kind[0, T - 3] == Kind.ACTION and tb.ret_target[0, T - 3] == ex.target
    assert (tb.ret_target[0] > 0).sum() == 1
    assert tb.target_ts[0, T - 3] == ex.ts_s[-1]
    assert list(tb.impressions[0, T - 3, :3]) == [7, 8, 9] and tb.impressions[0].sum() == 24
    # Ranking label only at the new item's token.
    assert (tb.rank_label[0] >= 0).sum() == 1 and tb.rank_label[0, T - 2] == (ex.actions[-1] == Action.POSITIVE)
    # Row 1: a first event has nothing to retrieve it from; the target is never its own impression.
    assert (tb.ret_target[1] > 0).sum() == 0 and tb.rank_label[1, T - 2] == 0
    assert list(first.impressions) == [6]


def test_impressed_items_lose_ranking_probability() -> None:
    learner = _learner(OnlineConfig(lr=1e-3, batch_size=8, recent_share=1.0, steps_per_round=1))
    rng = np.random.default_rng(1)
    shown = [11, 12, 13]
    exs = [_example(rng, f"e{i}", shown=shown) for i in range(8)]
    model = learner.model

    def shown_prob() -> float:
        tb = make_online_batch(exs, True, 5)
        with torch.no_grad():
            model.eval()
            _, cache = model.encode(model.to_tensors(tb.tokens))
            ids = torch.tensor([shown] * len(exs))
            ts = torch.full_like(ids, int(exs[0].ts_s[-1]))
            return float(torch.sigmoid(model.score_candidates(ids, ts, cache)).mean())

    before = shown_prob()
    for _ in range(15):
        for ex in exs:
            learner.buffer.add(ex)
        learner.train_round()
    assert shown_prob() < before - 0.05


def test_replay_mixes_new_and_old_and_stays_bounded() -> None:
    rng = np.random.default_rng(2)
    buf = ReplayBuffer(capacity=10, rng=np.random.default_rng(0))
    for i in range(30):
        buf.add(_example(rng, f"old{i}"))
        if len(buf.unseen) == 5:
            buf.batch(8, 1.0)
    while buf.unseen:
        buf.batch(8, 1.0)
    assert len(buf.old) == 10 and buf.seen_total == 30
    for i in range(6):
        buf.add(_example(rng, f"new{i}"))
    batch, n_new = buf.batch(8, 0.5)
    assert n_new == 4 and len(batch) == 8
    assert all(e.event_id.startswith("new") for e in batch[:4])
    assert all(e.event_id.startswith("old") for e in batch[4:])
    assert len(buf.unseen) == 2


def test_gate_refuses_a_worse_candidate_and_reverts_it() -> None:
    learner = _learner(OnlineConfig(lr=1e-3, min_holdout=5, holdout_every=2))
    rng = np.random.default_rng(3)
    # Users whose next item is always item 1 (never seen before): the serving model is taught that first.
    train = []
    for i in range(400):
        ex = _example(rng, f"h{i}")
        items = np.where(ex.items == 1, 2, ex.items)
        ex = OnlineExample(np.concatenate([items[:-1], [1]]).astype(np.int32),
                           np.concatenate([ex.actions[:-1], [Action.POSITIVE]]).astype(np.int8), ex.ts_s,
                           ex.impressions, ex.event_id, ex.event_ts_ms)
        if not learner.add(ex):
            train.append(ex)
    assert len(learner.holdout) >= 5
    for i in range(60):
        learner.trainer.step(make_online_batch(train[(i * 32) % 192 :][:32], True, 5))
    learner.serving.load_state_dict(learner.model.state_dict())
    good = learner.gate()
    assert good.accepted and good.candidate == good.serving  # identical models: equal is not worse
    assert good.serving["ndcg@10"] > 0.5
    serving_state = {k: v.clone() for k, v in learner.model.state_dict().items()}
    with torch.no_grad():
        learner.model.item_emb.weight[1].mul_(-1.0)  # the candidate forgets what every user wants next
    bad = learner.gate()
    assert not bad.accepted and bad.candidate["ndcg@10"] < bad.serving["ndcg@10"]
    learner.reject()
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in serving_state.items())
    assert learner.state.rejected == 1


def test_state_weighter_and_optimizer_survive_a_restart(tmp_path: Path) -> None:
    cfg = OnlineConfig(batch_size=8, min_holdout=5)
    learner = _learner(cfg)
    learner.trainer.cfg.weighter.every = 2  # update the weights within a few steps
    rng = np.random.default_rng(4)
    for i in range(80):
        learner.add(_example(rng, f"s{i}"))
    while learner.buffer.unseen:
        learner.train_round()
    w = learner.trainer.state.weighter
    assert w is not None and w.weights != [1.0, 1.0] and learner.trainer.state.step > 4
    store = ModelStore(tmp_path / "store")
    store.save_trainer_state(learner.model, learner.item_ids, "test", learner.state_dict(),
                             learner.optimizer_tensors())

    fresh = _learner(cfg, seed=9)
    loaded = store.load_trainer_state()
    assert loaded is not None
    weights_dir, state, opt = loaded
    from genrec.model.checkpoint import load_checkpoint

    fresh.model.load_state_dict(load_checkpoint(weights_dir).model.state_dict())
    fresh.load_state_dict(state)
    fresh.load_optimizer_tensors(*opt)
    fw = fresh.trainer.state.weighter
    assert fw is not None
    assert fresh.trainer.state.step == learner.trainer.state.step
    assert fw.weights == pytest.approx(w.weights) and fw.step == w.step and fw.initial_losses == w.initial_losses
    assert fresh.state.examples == 80
    a, b = learner.trainer.opt.state_dict()["state"], fresh.trainer.opt.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    # Both continue identically from here (same data, same state).
    ex = [_example(np.random.default_rng(5), f"c{i}") for i in range(8)]
    torch.manual_seed(0)
    la = learner.trainer.step(make_online_batch(ex, True, 5))
    torch.manual_seed(0)
    lb = fresh.trainer.step(make_online_batch(ex, True, 5))
    assert la["loss"] == pytest.approx(lb["loss"], rel=1e-5)


@pytest.mark.slow
def test_short_online_run_on_ml100k_changes_weights_and_stays_finite(data_dir: Path) -> None:
    from genrec.model.data import load_dataset
    from genrec.ops.replay import dataset_events

    torch.set_num_threads(1)
    ds = load_dataset("ml-100k", data_dir)
    index = ds.item_index()
    torch.manual_seed(0)
    model = GenerativeRecommender(ModelConfig(num_items=ds.num_items, d_model=32, n_layers=1, n_heads=2,
                                              max_events=50))
    learner = OnlineLearner(model, ds.item_ids, TrainConfig(uniform_negatives=128, inbatch_negatives=64),
                            OnlineConfig(batch_size=32, steps_per_round=4, min_new_examples=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hist: dict[str, History] = {}
    action = {"click": Action.POSITIVE, "impression": Action.NEGATIVE}
    rounds = []
    for ev in dataset_events(ds, limit=1500):
        h = hist.get(ev.user_id, History.empty())
        it, act = index[ev.item_id], int(action[ev.type.value])
        learner.add(make_example(h, it, act, ev.ts, [], ev.event_id, ev.ts, 50, 20))
        hist[ev.user_id] = History(np.append(h.items, it).astype(np.int32), np.append(h.actions, act).astype(np.int8),
                                   np.append(h.ts_ms, ev.ts))
        if learner.ready():
            rounds.append(learner.train_round())
    assert len(rounds) >= 5
    assert all(r.finite for r in rounds)
    assert all(math.isfinite(x["loss_ret"]) and math.isfinite(x["loss_rank"]) for r in rounds for x in r.losses)
    changed = sum(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert changed >= len(before) // 2
