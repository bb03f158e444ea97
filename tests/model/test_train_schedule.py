"""Training schedule and loss options: learning-rate decay on a validation plateau (TrainConfig.lr_decay), the
full-softmax retrieval loss (TrainConfig.negatives)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from genrec.model.batching import make_train_batch
from genrec.model.config import CandidateConfig, EnhancerConfig, TrainConfig
from genrec.model.data import split_lengths, synthetic_dataset
from genrec.model.evaluate import eval_users
from genrec.model.generative import GenerativeRecommender
from genrec.model.tokens import Action
from genrec.model.train import Trainer, fit, model_config_for, plateau_scheduler


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_off_by_default() -> None:
    assert plateau_scheduler(_opt(), TrainConfig()) is None


def test_decays_after_more_than_patience_epochs_without_a_gain() -> None:
    opt = _opt(1.0)
    sched = plateau_scheduler(opt, TrainConfig(lr_decay=0.5, lr_decay_patience=2, min_lr=0.2))
    assert sched is not None
    lrs = []
    for score in [0.1, 0.2, 0.2, 0.19, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]:
        sched.step(score)
        lrs.append(opt.param_groups[0]["lr"])
    # higher is better: 0.2 → three epochs without a gain → halved; 0.3 resets; then halved every 3, floored.
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2]


def test_fit_records_the_learning_rate_it_trained_each_epoch_with() -> None:
    ds = synthetic_dataset(n_users=60, n_items=40, events_per_user=20, seed=2)
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=20)
    tcfg = TrainConfig(epochs=6, min_epochs=6, patience=6, batch_size=32, lr=1e-2, uniform_negatives=32,
                       inbatch_negatives=16, lr_decay=0.5, lr_decay_patience=1, select="ndcg@10")
    res = fit(ds, mcfg, tcfg, progress=False)
    lrs = [row["lr"] for row in res.history]
    assert lrs[0] == 1e-2 and min(lrs) < 1e-2, lrs  # this small run does plateau (seed 2)
    # Replay the rule on the recorded validation scores: the LR of epoch e+1 follows from epochs 1..e.
    best, bad, lr = float("-inf"), 0, 1e-2
    for row, next_lr in zip(res.history, [*lrs[1:], None], strict=True):
        score = row["valid_ndcg@10"]
        if score > best * (1 + 1e-4) if best > 0 else score > best:
            best, bad = score, 0
        else:
            bad += 1
        if bad > tcfg.lr_decay_patience:
            lr, bad = max(lr * tcfg.lr_decay, tcfg.min_lr), 0
        if next_lr is not None:
            assert abs(next_lr - lr) < 1e-12, (lrs, [r["valid_ndcg@10"] for r in res.history])


def test_full_softmax_joint_training_with_candidates_and_the_enhancer_learns() -> None:
    """negatives="full" through the whole joint step: the ranker in candidate slots on the model's own top-K',
    the enhancer's distillation into retrieval, the weighter, and losses that fall on a learnable data set."""
    ds = synthetic_dataset(n_users=64, n_items=40, events_per_user=20, seed=3)
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=20, rank_task="next")
    assert mcfg.ranking_trained and mcfg.rank_outputs == (2 if ds.has_feedback else 1)
    torch.manual_seed(0)
    trainer = Trainer(GenerativeRecommender(mcfg), TrainConfig(
        negatives="full", lr=1e-2, candidates=CandidateConfig(k_prime=10, top=4, sampled=4),
        enhancer=EnhancerConfig(enabled=True, warmup_steps=0, weight=0.5)))
    users, lengths = eval_users(ds), split_lengths(ds, "train")
    rng = np.random.default_rng(0)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for step in range(40):
        tb = make_train_batch(ds, users, lengths, 20, mcfg.interleave_actions, rng)
        out = trainer.step(tb)
        assert np.isfinite(out["loss"]), out
        assert "distill" in out, "the enhancer never ran"
        first = out if step == 0 else first
        last = out
    assert last["loss_ret"] < first["loss_ret"] - 0.3, (first, last)
    assert last["loss_rank"] < first["loss_rank"] - 0.1, (first, last)


def test_checkpoint_selection_weighs_both_tasks_for_a_joint_model() -> None:
    from genrec.model.train import selection_metric, selection_score

    with_auc = {"ndcg@10": 0.1, "auc": 0.8}
    assert selection_metric("auto", "ranking", with_auc) == "auc"
    assert selection_metric("auto", "retrieval", with_auc) == "ndcg@10"
    assert selection_metric("auto", "joint", with_auc) == "ndcg@10*auc_lift"
    assert selection_metric("auto", "joint", {"ndcg@10": 0.1}) == "ndcg@10"  # no feedback, no AUC
    assert selection_metric("ndcg@10", "joint", with_auc) == "ndcg@10"
    # A next-item ranker is picked by the order users are served.
    served = {**with_auc, "served_ndcg@10": 0.12}
    assert selection_metric("auto", "joint", served, "next") == "served_ndcg@10"
    assert selection_metric("auto", "ranking", served, "next") == "served_ndcg@10"
    assert selection_metric("auto", "joint", served, "feedback") == "ndcg@10*auc_lift"
    assert abs(selection_score(with_auc, "ndcg@10*auc_lift") - 0.1 * 0.3) < 1e-12
    # +10 % NDCG@10 and +10 % AUC lift score alike: neither task is sold for the other's units.
    more_ndcg = selection_score({"ndcg@10": 0.11, "auc": 0.8}, "ndcg@10*auc_lift")
    more_auc = selection_score({"ndcg@10": 0.1, "auc": 0.83}, "ndcg@10*auc_lift")
    assert abs(more_ndcg - more_auc) < 1e-12


def test_selecting_on_a_figure_the_data_cannot_give_is_a_clear_error() -> None:
    # Order only, like ML-1M: no feedback, so validation has no AUC.
    ds = dataclasses.replace(synthetic_dataset(n_users=30, n_items=20, events_per_user=10, seed=2), has_feedback=False)
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=10)
    tcfg = TrainConfig(epochs=2, batch_size=32, task="retrieval", uniform_negatives=8, inbatch_negatives=4,
                       select="auc")  # a retrieval-only run is never evaluated on AUC
    with pytest.raises(ValueError, match="no auc"):
        fit(ds, mcfg, tcfg, progress=False)


def _with_short_users(n_short: int) -> object:
    """The synthetic set with its first `n_short` users cut to 3 events: a one-event training window each
    (events [:n-2]), as a time cut leaves many users of Amazon Beauty."""
    ds = synthetic_dataset(n_users=80, n_items=40, events_per_user=12, seed=4)
    cut = [3 if u < n_short else len(x) for u, x in enumerate(ds.items)]
    return dataclasses.replace(ds, items=[x[:c] for x, c in zip(ds.items, cut, strict=True)],
                               actions=[x[:c] for x, c in zip(ds.actions, cut, strict=True)],
                               ts=[x[:c] for x, c in zip(ds.ts, cut, strict=True)])


@pytest.mark.parametrize("task", ["retrieval", "joint"])
def test_users_with_a_one_event_training_window_never_make_the_loss_nan(task: str) -> None:
    ds = _with_short_users(40)
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=12)
    # Batches bucket users by length: with 40 short users and batches of 16, some batches are all short.
    tcfg = TrainConfig(epochs=2, min_epochs=2, batch_size=16, lr=1e-2, uniform_negatives=16, inbatch_negatives=8,
                       task=task)
    res = fit(ds, mcfg, tcfg, progress=False)
    assert all(np.isfinite(row["loss"]) for row in res.history), res.history


def test_a_batch_without_a_next_item_has_no_retrieval_loss_and_retrieval_alone_refuses_it() -> None:
    ds = _with_short_users(80)
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=12)
    tb = make_train_batch(ds, np.arange(16), split_lengths(ds, "train"), 12, mcfg.interleave_actions, None)
    assert not (tb.ret_target > 0).any()
    joint = Trainer(GenerativeRecommender(mcfg), TrainConfig(task="joint"))
    lo = joint.losses(tb)
    assert lo.retrieval is None and lo.ranking is not None and torch.isfinite(lo.ranking)
    with pytest.raises(ValueError, match="nothing to learn"):
        Trainer(GenerativeRecommender(mcfg), TrainConfig(task="retrieval")).step(tb)


def test_milestones_step_the_learning_rate_after_the_listed_epochs() -> None:
    ds = synthetic_dataset(n_users=40, n_items=30, events_per_user=12, seed=3)
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=12)
    tcfg = TrainConfig(epochs=5, min_epochs=5, patience=5, batch_size=32, lr=1e-2, uniform_negatives=16,
                       inbatch_negatives=8, lr_decay=0.5, lr_milestones=[2, 4], lr_decay_patience=1)
    assert plateau_scheduler(_opt(), tcfg) is None  # fixed steps replace the plateau rule
    res = fit(ds, mcfg, tcfg, progress=False)
    assert [row["lr"] for row in res.history] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3])


def _spy_batch_lengths(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """The `lengths` (input window ends) of every training batch `fit` makes from now on."""
    from genrec.model import train as train_mod

    seen: list[np.ndarray] = []
    real_batch = train_mod.make_train_batch

    def spy_batch(ds_: object, users: np.ndarray, lengths: np.ndarray, *a: object, **kw: object) -> object:
        seen.append(lengths)
        return real_batch(ds_, users, lengths, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "make_train_batch", spy_batch)
    return seen


def test_refit_trains_on_the_validation_target_and_never_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec.model import train as train_mod

    ds = synthetic_dataset(n_users=40, n_items=30, events_per_user=12, seed=3)
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=12)
    seen_lengths = _spy_batch_lengths(monkeypatch)

    def no_eval(*a: object, **kw: object) -> None:
        raise AssertionError("a refit must not evaluate: the validation targets are its training data")

    monkeypatch.setattr(train_mod, "evaluate", no_eval)
    kept: list[int] = []
    tcfg = TrainConfig(epochs=3, min_epochs=1, patience=1, batch_size=16, lr=1e-2, uniform_negatives=16,
                       inbatch_negatives=8, refit=True)
    res = fit(ds, mcfg, tcfg, progress=False, on_best=lambda m, row: kept.append(int(row["epoch"])))
    # Input windows end just before each test target, so the validation target (event n−2) is a training target.
    assert seen_lengths and all(np.array_equal(x, split_lengths(ds, "test")) for x in seen_lengths)
    assert (split_lengths(ds, "test") == np.array([len(x) for x in ds.items]) - 1).all()
    assert res.epochs_run == 3 and res.best_epoch == 3 and res.best_valid == {} and kept == [1, 2, 3]
    assert not any(k.startswith("valid_") for row in res.history for k in row)


def test_a_normal_run_never_trains_on_the_validation_target(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = synthetic_dataset(n_users=30, n_items=30, events_per_user=10, seed=4)
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=10)
    seen = _spy_batch_lengths(monkeypatch)
    fit(ds, mcfg, TrainConfig(epochs=1, min_epochs=1, batch_size=16, uniform_negatives=8, inbatch_negatives=8),
        progress=False)
    assert seen and all(np.array_equal(x, split_lengths(ds, "valid")) for x in seen)


def test_refit_schedule_reads_the_epochs_and_lr_steps_up_to_the_best_epoch() -> None:
    from genrec.model.train import refit_schedule

    lrs = [3e-3] * 30 + [9e-4] * 7 + [2.7e-4] * 6 + [8.1e-5] * 4
    history = [{"epoch": i + 1, "lr": lr} for i, lr in enumerate(lrs)]
    assert refit_schedule(history, 39) == {"refit": True, "epochs": 39, "lr": 3e-3, "lr_milestones": [30, 37],
                                           "lr_decay": 0.3}
    assert refit_schedule(history, 12) == {"refit": True, "epochs": 12, "lr": 3e-3, "lr_milestones": []}
    floored = [{"epoch": 1, "lr": 1.0}, {"epoch": 2, "lr": 0.5}, {"epoch": 3, "lr": 0.4}]
    with pytest.raises(ValueError, match="different factors"):
        refit_schedule(floored, 3)
    with pytest.raises(ValueError, match="not in the run"):
        refit_schedule(history, 60)
    # What it returns is a valid config, and its milestones reproduce the LRs it read.
    cfg = TrainConfig(**{k: v for k, v in refit_schedule(history, 39).items()})  # type: ignore[arg-type]
    from genrec.model.train import milestone_scheduler

    opt = _opt(cfg.lr)
    sched = milestone_scheduler(opt, cfg)
    assert sched is not None
    replay = []
    for _ in range(39):
        replay.append(opt.param_groups[0]["lr"])
        sched.step()
    assert replay == pytest.approx(lrs[:39])


def test_a_length_bucket_with_nothing_to_learn_is_skipped_not_fatal() -> None:
    """Order-only data (Action.INTERACT: no feedback label) with a next-item ranker, as a time cut of Amazon Beauty
    for `genrec bench online`: a batch of one-event windows has no next item and no ranking label."""
    ds = _with_short_users(40)
    ds = dataclasses.replace(ds, has_feedback=False,
                             actions=[np.full(len(a), Action.INTERACT, np.int8) for a in ds.actions])
    mcfg = model_config_for(ds, d_model=16, n_layers=1, n_heads=2, max_events=12, rank_task="next")
    tcfg = TrainConfig(epochs=1, min_epochs=1, batch_size=16, uniform_negatives=16, inbatch_negatives=8,
                       task="joint", select="ndcg@10")
    short = make_train_batch(ds, np.arange(16), split_lengths(ds, "train"), 12, mcfg.interleave_actions, None)
    trainer = Trainer(GenerativeRecommender(mcfg), tcfg)
    assert not trainer.has_signal(short)
    with pytest.raises(ValueError, match="nothing to learn"):
        trainer.step(short)
    res = fit(ds, mcfg, tcfg, progress=False)  # the short users' buckets are skipped; the rest trains
    assert res.history and all(np.isfinite(row["loss"]) for row in res.history)
