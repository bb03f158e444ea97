"""Training loop: AdamW, joint retrieval + ranking losses balanced by the adaptive weighter, the
ranking-driven enhancer, validation every epoch, early stopping on validation, fixed seeds."""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from genrec.model.backbone import HistoryCache
from genrec.model.batching import TrainBatch, make_train_batch
from genrec.model.candidates import (
    build_candidates,
    candidate_ranking_loss,
    distillation_loss,
    exclude_prefix,
    sample_positions,
)
from genrec.model.config import ModelConfig, TrainConfig
from genrec.model.data import SequenceDataset, eval_users, split_lengths
from genrec.model.device import resolve_device
from genrec.model.evaluate import evaluate
from genrec.model.generative import GenerativeRecommender
from genrec.model.losses import full_softmax_nce, info_nce, log_sampling_prob, ranking_loss, sample_negatives
from genrec.model.search import SearchData
from genrec.model.serving import ServingOrder
from genrec.model.tokens import Kind
from genrec.model.weighting import AdaptiveWeighter, task_grad_norms
from torch import Tensor
from torch.optim.lr_scheduler import MultiStepLR, ReduceLROnPlateau
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config_for(ds: SequenceDataset, **overrides: object) -> ModelConfig:
    """Defaults per data set: action tokens only where there is feedback, time rotary only with times."""
    base: dict[str, object] = {"num_items": ds.num_items, "interleave_actions": ds.has_feedback,
                               "time_rope": ds.has_time}
    base.update(overrides)
    # A next-item ranker learns from candidates on any data; a feedback ranker needs feedback labels.
    next_task = base.get("rank_task") == "next"
    base.setdefault("ranking_trained", ds.has_feedback or next_task)
    base.setdefault("feedback_channel", next_task and ds.has_feedback)
    return ModelConfig(**base)  # type: ignore[arg-type]


@dataclass
class StepLosses:
    retrieval: Tensor | None  # InfoNCE (+ the enhancer's weighted distillation when due)
    ranking: Tensor | None  # candidate slots + feedback labels + impressions
    distill: float | None = None


@dataclass
class TrainState:
    """What survives between calls (and trainer restarts): step counter and weighter state."""

    step: int = 0
    weighter: AdaptiveWeighter | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """One optimizer step at a time. `retriever`: a frozen retrieval model whose top-K' the ranking task learns to
    re-rank (the two-model pipeline's ranker); without it a model ranks its own retrieval top-K'."""

    def __init__(self, model: GenerativeRecommender, cfg: TrainConfig,
                 retriever: GenerativeRecommender | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.retriever = retriever.eval() if retriever is not None else None
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.state = TrainState(weighter=AdaptiveWeighter(cfg.weighter))
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    @property
    def uses_retrieval(self) -> bool:
        return self.cfg.task in ("joint", "retrieval")

    @property
    def uses_ranking(self) -> bool:
        return self.cfg.task in ("joint", "ranking") and self.model.cfg.ranking_trained

    @property
    def uses_candidates(self) -> bool:
        """The ranker learns in candidate slots from a retriever's top-K' (its own, or `retriever`'s)."""
        return self.uses_ranking and self.model.cfg.rank_task == "next" and (
            self.uses_retrieval or self.retriever is not None)

    def _enhancer_due(self) -> bool:
        e = self.cfg.enhancer
        return (e.enabled and e.weight > 0 and self.uses_retrieval and self.uses_candidates
                and self.state.step >= e.warmup_steps)

    def has_signal(self, tb: TrainBatch) -> bool:
        """Whether `losses(tb)` holds any term: a next item to retrieve, or a ranking label (feedback, an
        impression, a feedback-ranking task). A length bucket of one-event windows on data ranked over candidates
        only (a time cut of Amazon Beauty) has none."""
        has_target = self.uses_retrieval or self.uses_candidates
        if has_target and bool((tb.ret_target > 0).any()):
            return True
        return self.uses_ranking and (bool((tb.rank_label >= 0).any()) or self.model.cfg.rank_task == "feedback"
                                      or tb.impressions is not None)

    def losses(self, tb: TrainBatch) -> StepLosses:
        model, cfg = self.model, self.cfg
        batch = model.to_tensors(tb.tokens)
        h, cache = model.encode(batch)
        dev = h.device
        out = StepLosses(retrieval=None, ranking=None)
        ret_target = torch.as_tensor(tb.ret_target, device=dev)
        ret_mask = ret_target > 0
        imp_ids = None
        # A batch of one-event training windows has no next item: the mean over zero targets would be NaN.
        if self.uses_retrieval and bool(ret_mask.any()):
            pos_ids = ret_target[ret_mask]  # [M]
            u = model.user_state(h[ret_mask])  # [M, D]
            table = model.output_item_table()
            N = model.cfg.num_items
            full = cfg.negatives == "full"
            if full:
                neg_ids = torch.arange(1, N + 1, device=dev)
            else:
                neg_ids, neg_log_q = sample_negatives(pos_ids, N, cfg.uniform_negatives, cfg.inbatch_negatives)
                pos_log_q = log_sampling_prob(pos_ids, pos_ids, N, cfg.uniform_negatives, cfg.inbatch_negatives)
            extra = None
            if tb.impressions is not None:
                # Shown and not clicked: the user saw these and chose otherwise, so they are negatives the
                # sampled ones can only approximate.
                imp_ids = torch.as_tensor(tb.impressions, device=dev)[ret_mask]  # [M, m]
                extra = ((u[:, None, :] * table[imp_ids]).sum(-1) / model.cfg.tau).masked_fill(
                    (imp_ids == 0) | (imp_ids == pos_ids[:, None]), float("-inf"))
            qvec = model.query_vectors(batch, batch["query"][ret_mask])  # [M, Dq] or None
            pos_bias = neg_bias = None
            if qvec is not None:
                neg_bias = model.text_match(qvec, neg_ids)  # full: every item, the positive's column included
                if not full:
                    pos_bias = model.text_match(qvec, pos_ids[:, None])[:, 0]
            if full:
                loss, _ = full_softmax_nce(u, table, pos_ids, model.cfg.tau, extra, neg_bias)
            else:
                loss, _ = info_nce(u, table[pos_ids], pos_log_q, pos_ids, table[neg_ids], neg_log_q, neg_ids,
                                   model.cfg.tau, extra, pos_bias, neg_bias)
            out.retrieval = loss
        if not self.uses_ranking:
            return out
        parts: list[Tensor] = []
        if self.uses_candidates and bool(ret_mask.any()):
            cand_loss, distill = self._candidate_losses(batch, h, cache, tb, ret_mask)
            parts.append(cand_loss)
            if distill is not None and out.retrieval is not None:
                out.retrieval = out.retrieval + cfg.enhancer.weight * distill
                out.distill = distill.item()
        feedback = torch.as_tensor(tb.rank_label, device=dev)
        if (feedback >= 0).any() or model.cfg.rank_task == "feedback":
            parts.append(self._feedback_loss(batch, h, feedback))
        if imp_ids is not None:
            imp = self._impression_ranking(cache, tb, ret_mask, imp_ids, h)
            if imp is not None:
                parts.append(imp)
        if parts:
            out.ranking = torch.stack(parts).sum()
        return out

    def _feedback_loss(self, batch: dict[str, Tensor], h: Tensor, labels_bt: Tensor) -> Tensor:
        """BCE + BPR of feedback labels (rating ≥ 4, click vs impression) at the history's item tokens."""
        model = self.model
        is_item = batch["kind"] == Kind.ITEM
        P = int(is_item.sum(1).max())
        idx = torch.argsort((~is_item).to(torch.int8), dim=1, stable=True)[:, :P]  # item positions first
        labels = labels_bt.gather(1, idx).masked_fill(~is_item.gather(1, idx), -1)
        aff = model.teacher_forced_affinity(h, batch).gather(1, idx) if model.rank_retrieval_gain is not None \
            else None
        logits = model.feedback_logits(h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1])), aff,
                                       batch["item"].gather(1, idx))
        return ranking_loss(logits, labels, self.cfg.bpr_weight)

    @torch.no_grad()
    def _retrieval_scores(self, batch: dict[str, Tensor], h: Tensor, rows: Tensor, pos: Tensor
                          ) -> tuple[Tensor, float]:
        """Every item's retrieval score [M, N+1] (cosine) at the contexts, from this model or the frozen retriever,
        and that retriever's τ."""
        src = self.model if self.retriever is None else self.retriever
        if self.retriever is not None:
            h = self.retriever.encode(batch)[0]
        state = h[rows, pos].detach()
        qvec = src.query_vectors(batch, batch["query"][rows, pos])
        return src.retrieval_scores(state, qvec).clone(), src.cfg.tau

    def _candidate_losses(self, batch: dict[str, Tensor], h: Tensor, cache: HistoryCache, tb: TrainBatch,
                          ret_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """The ranker on the retrieval top-K' in candidate slots (model/candidates.py), and the enhancer's
        distillation of its judgement into retrieval (None when not due)."""
        c, model = self.cfg.candidates, self.model
        rows, pos = sample_positions(ret_mask, c.positions_per_user, self.gen)
        dev = h.device
        targets = torch.as_tensor(tb.ret_target, device=dev)[rows, pos]
        scores, tau = self._retrieval_scores(batch, h, rows, pos)
        exclude_prefix(scores, batch["item"][rows], pos + 1, targets)
        cs = build_candidates(scores, targets, c.k_prime, c.top, c.sampled, self.gen)
        keep = torch.ones_like(cs.in_top) if c.include_missed else cs.in_top
        if not keep.any():
            return h.sum() * 0.0, None
        rows, pos, scores, items, labels = rows[keep], pos[keep], scores[keep], cs.items[keep], cs.labels[keep]
        valid = items > 0
        cand_ts = torch.as_tensor(tb.target_ts, device=dev)[rows, pos][:, None].expand_as(items)
        sub = cache.select(rows)
        if self.retriever is not None:  # the pipeline's ranker reads the retriever's score as its feature
            aff = (scores.gather(1, items) / tau).masked_fill(~valid, 0.0)
            logits = model.score_candidates(items, cand_ts, sub, prefix_len=pos + 1, affinity=aff)
        else:
            logits = model.score_candidates(items, cand_ts, sub, prefix_len=pos + 1, user=h[rows, pos])
        loss = candidate_ranking_loss(logits, labels, valid, c.listwise_weight)
        distill = None
        if self._enhancer_due():
            u = model.user_state(h[rows, pos])  # [M, D], with gradient: the retriever is the student
            ret_logits = (u[:, None, :] * F.normalize(model.item_vectors(items), dim=-1)).sum(-1) / model.cfg.tau
            distill = distillation_loss(ret_logits, logits, valid, self.cfg.enhancer.temperature)
        return loss, distill

    def _impression_ranking(self, cache: HistoryCache, tb: TrainBatch, ret_mask: Tensor, imp_ids: Tensor,
                            h: Tensor) -> Tensor | None:
        """BCE (label 0) of the shown-not-clicked items scored as serving scores them: candidates appended
        after the history up to the retrieval position, at the target's time."""
        has = (imp_ids > 0).any(dim=1)
        if not has.any():
            return None
        b_idx, pos = ret_mask.nonzero(as_tuple=True)
        b_idx, pos, ids = b_idx[has], pos[has], imp_ids[has]
        ts = torch.as_tensor(tb.target_ts, device=ids.device)[b_idx, pos][:, None].expand_as(ids)
        logits = self.model.score_candidates(ids, ts, cache.select(b_idx), prefix_len=pos + 1, user=h[b_idx, pos])
        valid = ids > 0
        return F.binary_cross_entropy_with_logits(logits[valid], torch.zeros_like(logits[valid]))

    def step(self, tb: TrainBatch) -> dict[str, float]:
        self.model.train()
        lo = self.losses(tb)
        w = self.state.weighter
        assert w is not None
        tasks = [x for x in (lo.retrieval, lo.ranking) if x is not None]
        if not tasks:
            raise ValueError("the batch holds no retrieval target and no ranking label: nothing to learn from")
        if len(tasks) == 2:
            w.observe([tasks[0].item(), tasks[1].item()])
            if w.due():
                w.update(task_grad_norms(tasks, self.model.backbone.last_shared_layer))
            total = w.weights[0] * tasks[0] + w.weights[1] * tasks[1]
        else:
            total = tasks[0]
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.state.step += 1
        out = {"loss": total.item()}
        if lo.retrieval is not None:
            out["loss_ret"] = lo.retrieval.item()
        if lo.ranking is not None:
            out["loss_rank"] = lo.ranking.item()
        if len(tasks) == 2:
            out["w_ret"], out["w_rank"] = w.weights
        if lo.distill is not None:
            out["distill"] = lo.distill
        return out


def length_bucketed_batches(users: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator
                            ) -> list[np.ndarray]:
    """Batches of users with similar history lengths, in random order: padding (and the quadratic attention
    spent on it) shrinks several-fold on skewed data like MovieLens. Users are shuffled before the stable
    sort so that equal lengths mix across epochs."""
    shuffled = rng.permutation(users)
    by_len = shuffled[np.argsort(lengths[shuffled], kind="stable")]
    batches = [by_len[i : i + batch_size] for i in range(0, len(by_len), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class FitResult:
    model: GenerativeRecommender
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]]
    train_seconds: float
    tokens_per_s: float
    epochs_run: int


def plateau_scheduler(opt: torch.optim.Optimizer, tcfg: TrainConfig) -> ReduceLROnPlateau | None:
    """Decay the learning rate when the validation metric (higher is better) stops rising; None when off
    (or when fixed milestones replace it)."""
    if tcfg.lr_decay >= 1.0 or tcfg.lr_milestones:
        return None
    return ReduceLROnPlateau(opt, mode="max", factor=tcfg.lr_decay, patience=tcfg.lr_decay_patience,
                             min_lr=tcfg.min_lr)


def milestone_scheduler(opt: torch.optim.Optimizer, tcfg: TrainConfig) -> MultiStepLR | None:
    """LR × lr_decay after each epoch listed in lr_milestones (stepped once per epoch); None when none."""
    if not tcfg.lr_milestones:
        return None
    return MultiStepLR(opt, milestones=sorted(tcfg.lr_milestones), gamma=tcfg.lr_decay)


def refit_schedule(history: list[dict[str, float]], best_epoch: int) -> dict[str, object]:
    """TrainConfig fields that replay a validated run up to its best epoch on train + validation (a refit):
    its epoch count, starting LR and the epochs after which its LR fell (one constant factor)."""
    if not 1 <= best_epoch <= len(history):
        raise ValueError(f"best epoch {best_epoch} is not in the run's {len(history)}-epoch history")
    lrs = [float(row["lr"]) for row in history[:best_epoch]]
    milestones = [e for e in range(1, best_epoch) if lrs[e] != lrs[e - 1]]
    factors = {round(lrs[e] / lrs[e - 1], 6) for e in milestones}
    if len(factors) > 1:
        raise ValueError(f"the LR fell by different factors {sorted(factors)} (a min_lr floor?): "
                         "lr_milestones with one lr_decay cannot replay it")
    out: dict[str, object] = {"refit": True, "epochs": best_epoch, "lr": lrs[0], "lr_milestones": milestones}
    if factors:
        out["lr_decay"] = factors.pop()
    return out


def selection_metric(select: str, task: str, valid: dict[str, float], rank_task: str = "feedback") -> str:
    """The validation figure that picks the checkpoint (TrainConfig.select; "auto" resolved by task and data).

    A next-item ranker is judged by what users get: the served order's NDCG@10."""
    if select != "auto":
        return select
    if rank_task == "next" and task in ("joint", "ranking") and "served_ndcg@10" in valid:
        return "served_ndcg@10"
    if task == "ranking":
        return "auc"
    return "ndcg@10*auc_lift" if task == "joint" and "auc" in valid else "ndcg@10"


SERVING_ORDERS: tuple[ServingOrder, ...] = ("joint", "ranking", "retrieval")


def select_serving_order(valid: dict[str, float]) -> ServingOrder:
    """The serving key with the best validation served NDCG@10 (ties: the earlier of SERVING_ORDERS)."""
    return max(SERVING_ORDERS, key=lambda o: (valid.get(f"served_{o}_ndcg@10", float("-inf")),
                                             -SERVING_ORDERS.index(o)))


def validate(model: GenerativeRecommender, ds: SequenceDataset, tcfg: TrainConfig, search: SearchData | None,
             retriever: GenerativeRecommender | None = None, split: str = "valid",
             orders: tuple[ServingOrder, ...] = ()) -> dict[str, float]:
    """`evaluate` on a split; a pipeline ranker (with `retriever`) is served on the retriever's top-K', and keeps
    its own AUC/GAUC."""
    if retriever is None:
        return evaluate(model, ds, split, tcfg.eval_batch_size, search, tcfg.eval_exclude_seen, orders)
    out = evaluate(retriever, ds, split, tcfg.eval_batch_size, search, tcfg.eval_exclude_seen, orders, ranker=model)
    if ds.has_feedback:
        own = evaluate(model, ds, split, tcfg.eval_batch_size, None, tcfg.eval_exclude_seen)
        out.update({k: own[k] for k in ("auc", "gauc") if k in own})
    return out


def selection_score(valid: dict[str, float], name: str) -> float:
    if name == "ndcg@10*auc_lift":
        return valid.get("ndcg@10", float("nan")) * (valid.get("auc", float("nan")) - 0.5)
    return valid.get(name, float("nan"))


def _say(msg: str, progress: bool) -> None:
    if progress:
        tqdm.write(msg)
    else:
        print(msg, file=sys.stderr, flush=True)


def fit(ds: SequenceDataset, mcfg: ModelConfig, tcfg: TrainConfig, item_text: np.ndarray | None = None,
        progress: bool = True, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        search: SearchData | None = None,
        on_best: Callable[[GenerativeRecommender, dict[str, float]], None] | None = None,
        retriever: GenerativeRecommender | None = None) -> FitResult:
    """Train on the leave-one-out training part; early-stop on the validation targets; keep the best; then pick
    the serving order on validation (a model with a trained ranker).

    With `tcfg.refit`: train on every event but the test targets for exactly `tcfg.epochs` epochs, no
    validation (its targets are training data then), and keep the last epoch (and the configured serving order).
    retriever: a frozen retrieval model whose top-K' a ranking-only model learns to re-rank (the two-model
    pipeline)."""
    set_seed(tcfg.seed)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)  # "cuda" without a GPU fails here, before any work
    model = GenerativeRecommender(mcfg, item_text).to(device)
    if retriever is not None:
        retriever = retriever.to(device)
    trainer = Trainer(model, tcfg, retriever)
    if tcfg.task == "ranking" and mcfg.rank_task == "next" and retriever is None:
        raise ValueError("a ranking-only next-item ranker re-ranks another model's retrieval: pass its retriever")
    rng = np.random.default_rng(tcfg.seed)
    users = eval_users(ds)
    # The test split's input lengths end just before each test target: the validation target becomes training data.
    lengths = split_lengths(ds, "test" if tcfg.refit else "train")
    if not trainer.uses_ranking:
        # A one-event training window holds no (event, next item) pair: retrieval alone learns nothing there.
        users = users[lengths[users] >= 2]
    select = tcfg.select
    sched = plateau_scheduler(trainer.opt, tcfg)
    steps = milestone_scheduler(trainer.opt, tcfg)
    best, best_epoch, best_state, bad = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = []
    tokens, train_seconds = 0, 0.0
    epoch = 0
    for epoch in range(1, tcfg.epochs + 1):
        batches = length_bucketed_batches(users, lengths, tcfg.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False)
        sums: dict[str, float] = {}
        n = 0
        t0 = time.perf_counter()
        for ub in bar:
            tb = make_train_batch(ds, ub, lengths, mcfg.max_events, mcfg.interleave_actions,
                                  rng if tcfg.random_crop else None, search if mcfg.query_dim else None)
            if not trainer.has_signal(tb):
                continue
            tokens += int((tb.tokens.kind != Kind.PAD).sum())
            out = trainer.step(tb)
            if not np.isfinite(out["loss"]):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}: {out}")
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{out['loss']:.3f}")
        train_seconds += time.perf_counter() - t0  # validation time does not count toward throughput
        row = {"epoch": epoch, "lr": trainer.opt.param_groups[0]["lr"], **{k: v / max(n, 1) for k, v in sums.items()}}
        if steps is not None:
            steps.step()
        if tcfg.refit:
            history.append(row)
            if on_epoch:
                on_epoch(epoch, row)
            _say(f"epoch {epoch}: loss {row['loss']:.4f}  (refit, no validation; {train_seconds:.0f} s training "
                 "so far)", progress)
            best_epoch = epoch
            if on_best:
                on_best(model, row)
            continue
        valid = validate(model, ds, tcfg, search, retriever)
        row.update({f"valid_{k}": v for k, v in valid.items()})
        history.append(row)
        if on_epoch:
            on_epoch(epoch, row)
        name = selection_metric(select, tcfg.task, valid, mcfg.rank_task)
        score = selection_score(valid, name)
        if not np.isfinite(score):
            raise ValueError(f"select={select!r}: validation gives no {name} here (it has {sorted(valid)})")
        _say(f"epoch {epoch}: loss {row['loss']:.4f}  valid {name} {score:.4f}  "
             f"({train_seconds:.0f} s training so far)", progress)
        if sched is not None:
            sched.step(score)
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            if on_best:
                on_best(model, row)
        else:
            bad += 1
            if bad >= tcfg.patience and epoch >= tcfg.min_epochs:
                break
    if not tcfg.refit:  # a refit keeps its last epoch
        model.load_state_dict(best_state)
    best_valid = {k.removeprefix("valid_"): v for k, v in history[best_epoch - 1].items() if k.startswith("valid_")}
    if not tcfg.refit and model.cfg.ranking_trained and (trainer.uses_retrieval or retriever is not None):
        by_order = validate(model, ds, tcfg, search, retriever, orders=SERVING_ORDERS)
        model.cfg.serving_order = select_serving_order(by_order)
        best_valid.update({k: v for k, v in by_order.items() if k.startswith("served_")})
        _say(f"serving order picked on validation: {model.cfg.serving_order} "
             + "  ".join(f"{o} {by_order[f'served_{o}_ndcg@10']:.4f}" for o in SERVING_ORDERS), progress)
    return FitResult(model, best_epoch, best_valid, history, train_seconds, tokens / max(train_seconds, 1e-9), epoch)


def fit_and_test(ds: SequenceDataset, tcfg: TrainConfig, progress: bool = True, search: SearchData | None = None,
                 on_best: Callable[[GenerativeRecommender, dict[str, float]], None] | None = None,
                 retriever: GenerativeRecommender | None = None, item_text_vecs: np.ndarray | None = None,
                 **model_overrides: object) -> tuple[FitResult, dict[str, float]]:
    """Train with early stopping, then evaluate the best model on the test targets.

    With `search` and `tcfg.search.enabled`, the model gets query tokens and item text features and trains on
    the generated queries; with `search` alone (search disabled), it is evaluated on the search targets as a
    recommendation-only model. item_text_vecs [N+1, dim] (`item_text_vectors`, for TrainConfig.item_text): frozen
    item-text features beside the ID embeddings.
    """
    overrides = dict(model_overrides)
    item_text = None
    if item_text_vecs is not None and not tcfg.search.enabled:  # TrainConfig.item_text, encoded by the caller
        overrides["text_dim"] = item_text_vecs.shape[1]
        item_text = item_text_vecs
    if tcfg.search.enabled:
        if search is None:
            raise ValueError("search training needs SearchData (see model.search.build_search_data)")
        overrides["query_dim"] = search.dim
        if tcfg.search.item_text:
            overrides["text_dim"] = search.dim
            item_text = search.item_text_vecs
    mcfg = model_config_for(ds, **overrides)
    if tcfg.task == "retrieval":
        mcfg = mcfg.model_copy(update={"ranking_trained": False})
    result = fit(ds, mcfg, tcfg, item_text, progress=progress, search=search, on_best=on_best, retriever=retriever)
    return result, validate(result.model, ds, tcfg, search, retriever, split="test")
