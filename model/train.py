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
from torch import Tensor
from torch.optim.lr_scheduler import MultiStepLR, ReduceLROnPlateau
from tqdm.auto import tqdm

from model.backbone import HistoryCache
from model.batching import TrainBatch, make_train_batch
from model.config import ModelConfig, TrainConfig
from model.data import SequenceDataset, eval_users, split_lengths
from model.enhancer import select_targets
from model.evaluate import evaluate
from model.generative import GenerativeRecommender
from model.losses import full_softmax_nce, info_nce, log_sampling_prob, ranking_loss, sample_negatives
from model.search import SearchData
from model.tokens import Kind
from model.weighting import AdaptiveWeighter, task_grad_norms

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config_for(ds: SequenceDataset, **overrides: object) -> ModelConfig:
    """Defaults per data set: action tokens only where there is feedback, time rotary only with times."""
    base: dict[str, object] = {"num_items": ds.num_items, "interleave_actions": ds.has_feedback,
                               "time_rope": ds.has_time, "ranking_trained": ds.has_feedback}
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]


@dataclass
class StepLosses:
    retrieval: Tensor | None
    ranking: Tensor | None
    soft: float = 0.0
    hard_negatives: int = 0
    impression_ranking: Tensor | None = None


@dataclass
class TrainState:
    """What survives between calls (and trainer restarts): step counter and weighter state."""

    step: int = 0
    weighter: AdaptiveWeighter | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    def __init__(self, model: GenerativeRecommender, cfg: TrainConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.state = TrainState(weighter=AdaptiveWeighter(cfg.weighter))
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    @property
    def uses_retrieval(self) -> bool:
        return self.cfg.task in ("joint", "retrieval")

    @property
    def uses_ranking(self) -> bool:
        return self.cfg.task in ("joint", "ranking") and self.model.cfg.ranking_trained

    def _enhancer_due(self) -> bool:
        e = self.cfg.enhancer
        return (e.enabled and self.uses_retrieval and self.uses_ranking and self.state.step >= e.warmup_steps
                and self.state.step % e.period == 0)

    def losses(self, tb: TrainBatch) -> StepLosses:
        model, cfg = self.model, self.cfg
        batch = model.to_tensors(tb.tokens)
        h, cache = model.encode(batch)
        dev = h.device
        out = StepLosses(retrieval=None, ranking=None)
        ret_target = torch.as_tensor(tb.ret_target, device=dev)
        ret_mask = ret_target > 0
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
            extra, soft, hard_ids = None, None, None
            if self._enhancer_due():
                extra, soft, hard_ids = self._enhancer_logits(h.detach(), cache.detach(), tb, ret_mask, u, table)
            imp_ids = None
            if tb.impressions is not None:
                # Shown and not clicked: the user saw these and chose otherwise, so they are negatives the
                # sampled ones can only approximate.
                imp_ids = torch.as_tensor(tb.impressions, device=dev)[ret_mask]  # [M, m]
                imp_logits = ((u[:, None, :] * table[imp_ids]).sum(-1) / model.cfg.tau).masked_fill(
                    (imp_ids == 0) | (imp_ids == pos_ids[:, None]), float("-inf"))
                extra = imp_logits if extra is None else torch.cat([extra, imp_logits], dim=1)
            qvec = model.query_vectors(batch, batch["query"][ret_mask])  # [M, Dq] or None
            pos_bias = neg_bias = None
            if qvec is not None:
                neg_bias = model.text_match(qvec, neg_ids)  # full: every item, the positive's column included
                if not full:
                    pos_bias = model.text_match(qvec, pos_ids[:, None])[:, 0]
                if extra is not None and hard_ids is not None:
                    extra = extra + model.text_match(qvec, hard_ids) / model.cfg.tau
            if full:
                loss, logits = full_softmax_nce(u, table, pos_ids, model.cfg.tau, extra, neg_bias)
            else:
                loss, logits = info_nce(u, table[pos_ids], pos_log_q, pos_ids, table[neg_ids], neg_log_q, neg_ids,
                                        model.cfg.tau, extra, pos_bias, neg_bias)
            if extra is not None:
                out.hard_negatives = int(torch.isfinite(extra).sum())
            if soft is not None:
                rows, soft_logit, w = soft
                # Negatives only: in the full layout the positive is column id − 1, in the sampled one column 0.
                neg = (logits[rows].scatter(1, (pos_ids[rows] - 1)[:, None], float("-inf")) if full
                       else logits[rows, 1:])
                lse_neg = torch.logsumexp(neg, dim=1)
                soft_loss = (w * -(soft_logit - torch.logaddexp(soft_logit, lse_neg))).sum() / w.sum().clamp_min(1e-6)
                loss = loss + cfg.enhancer.soft_weight * soft_loss
                out.soft = soft_loss.item()
            out.retrieval = loss
            if imp_ids is not None and self.uses_ranking:
                out.impression_ranking = self._impression_ranking(cache, tb, ret_mask, imp_ids, h)
        if self.uses_ranking:
            kind = batch["kind"]
            is_item = kind == Kind.ITEM
            P = int(is_item.sum(1).max())
            idx = torch.argsort((~is_item).to(torch.int8), dim=1, stable=True)[:, :P]  # item positions first
            labels = torch.as_tensor(tb.rank_label, device=dev).gather(1, idx)
            labels = labels.masked_fill(~is_item.gather(1, idx), -1)
            aff = model.teacher_forced_affinity(h, batch).gather(1, idx) if model.rank_retrieval_gain is not None \
                else None
            logits = model.rank_logits(h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1])), aff,
                                       batch["item"].gather(1, idx))
            out.ranking = ranking_loss(logits, labels, cfg.bpr_weight)
            if out.impression_ranking is not None:
                out.ranking = out.ranking + out.impression_ranking
        return out

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

    def _enhancer_logits(self, h: Tensor, cache: HistoryCache, tb: TrainBatch,
                         ret_mask: Tensor, u: Tensor, table: Tensor
                         ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None, Tensor]:
        """Score the retriever's top-K' at a few positions per user with the ranker (no grad), and return
        the hard negatives' logits [M, m] (−inf where none), soft positives (row, logit, weight) and the hard
        negatives' ids [M, m] (0 where none)."""
        e = self.cfg.enhancer
        model = self.model
        B, T = ret_mask.shape
        table_nograd = table.detach()
        dev = h.device
        row_of = (ret_mask.flatten().cumsum(0) - 1).view(B, T)  # [B, T] → row of u
        target = torch.as_tensor(tb.ret_target, device=dev)
        target_ts = torch.as_tensor(tb.target_ts, device=dev)
        hard_ids = torch.zeros((u.shape[0], e.hard_negatives), dtype=torch.long, device=dev)
        soft_rows, soft_items, soft_w = [], [], []
        has = ret_mask.any(dim=1)
        b_idx = torch.arange(B, device=dev)[has]
        prob = ret_mask[has].float()
        was_training = model.training
        model.eval()  # the ranker judges without dropout
        with torch.no_grad():
            for _ in range(e.positions_per_user):
                pos = torch.multinomial(prob, 1, generator=self.gen).squeeze(1)  # a retrieval position per user
                scores = F.normalize(h[b_idx, pos], dim=-1) @ table_nograd.T
                scores[:, 0] = float("-inf")
                k = min(e.k_prime, model.cfg.num_items)
                top_s, top_i = scores.topk(k, dim=1)
                # Candidates take the next event's time: what the request time would be when serving.
                cand_ts = target_ts[b_idx, pos][:, None].expand(-1, k)
                sub_cache = cache.select(b_idx)
                probs = torch.sigmoid(model.score_candidates(top_i, cand_ts, sub_cache, prefix_len=pos + 1,
                                                             user=h[b_idx, pos]))
                sel = select_targets(top_i, top_s, probs, target[b_idx, pos], e.hard_negatives, e.hard_max_prob,
                                     e.alpha)
                rows = row_of[b_idx, pos]
                hard_ids[rows] = sel.hard_negatives
                r, c = (sel.soft_positives > 0).nonzero(as_tuple=True)
                soft_rows.append(rows[r])
                soft_items.append(sel.soft_positives[r, c])
                soft_w.append(sel.soft_weights[r, c])
        model.train(was_training)
        hard_logits = (u[:, None, :] * table[hard_ids]).sum(-1) / model.cfg.tau  # differentiable [M, m]
        extra = hard_logits.masked_fill(hard_ids == 0, float("-inf"))
        rows = torch.cat(soft_rows)
        if not len(rows):
            return extra, None, hard_ids
        items = torch.cat(soft_items)
        return extra, (rows, (u[rows] * table[items]).sum(-1) / model.cfg.tau, torch.cat(soft_w)), hard_ids

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
        if lo.hard_negatives:
            out["hard_negatives"] = lo.hard_negatives
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


def selection_metric(select: str, task: str, valid: dict[str, float]) -> str:
    """The validation figure that picks the checkpoint (TrainConfig.select; "auto" resolved by task and data)."""
    if select != "auto":
        return select
    if task == "ranking":
        return "auc"
    return "ndcg@10*auc_lift" if task == "joint" and "auc" in valid else "ndcg@10"


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
        on_best: Callable[[GenerativeRecommender, dict[str, float]], None] | None = None) -> FitResult:
    """Train on the leave-one-out training part; early-stop on the validation targets; keep the best.

    With `tcfg.refit`: train on every event but the test targets for exactly `tcfg.epochs` epochs, no
    validation (its targets are training data then), and keep the last epoch."""
    set_seed(tcfg.seed)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    model = GenerativeRecommender(mcfg, item_text)
    trainer = Trainer(model, tcfg)
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
        valid = evaluate(model, ds, "valid", tcfg.eval_batch_size, search, tcfg.eval_exclude_seen)
        row.update({f"valid_{k}": v for k, v in valid.items()})
        history.append(row)
        if on_epoch:
            on_epoch(epoch, row)
        name = selection_metric(select, tcfg.task, valid)
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
    return FitResult(model, best_epoch, best_valid, history, train_seconds, tokens / max(train_seconds, 1e-9), epoch)


def fit_and_test(ds: SequenceDataset, tcfg: TrainConfig, progress: bool = True, search: SearchData | None = None,
                 on_best: Callable[[GenerativeRecommender, dict[str, float]], None] | None = None,
                 **model_overrides: object) -> tuple[FitResult, dict[str, float]]:
    """Train with early stopping, then evaluate the best model on the test targets.

    With `search` and `tcfg.search.enabled`, the model gets query tokens and item text features and trains on
    the generated queries; with `search` alone (search disabled), it is evaluated on the search targets as a
    recommendation-only model.
    """
    overrides = dict(model_overrides)
    item_text = None
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
    result = fit(ds, mcfg, tcfg, item_text, progress=progress, search=search, on_best=on_best)
    return result, evaluate(result.model, ds, "test", tcfg.eval_batch_size, search, tcfg.eval_exclude_seen)
