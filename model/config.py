"""Typed configuration. Defaults reproduce the ML-100K benchmark row `genrec` (BENCHMARKS.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Config):
    num_items: int = Field(ge=1)  # vocabulary indices 1..num_items; 0 is padding
    d_model: int = Field(default=64, ge=8)
    n_layers: int = Field(default=2, ge=1, le=24)
    n_heads: int = Field(default=2, ge=1)
    ffn_mult: int = Field(default=4, ge=1)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    max_events: int = Field(default=200, ge=1, le=4096)  # L: history events the model reads
    # Two tokens per item event (item, action) when the data has feedback; one otherwise.
    interleave_actions: bool = True
    backbone: Literal["transformer"] = "transformer"
    # Time-aware rotary positions (SynerGen): half the rotary pairs turn with the token index, half with time.
    time_rope: bool = True
    rope_index_base: float = 10_000.0
    time_period_min_s: float = 60.0
    time_period_max_s: float = 2 * 365 * 86_400.0
    tau: float = Field(default=0.05, gt=0.0)  # retrieval softmax temperature
    rank_hidden: int = Field(default=64, ge=1)
    # The ranker reads the retriever's judgement: the ranking logit adds β·s(u, i), the item's retrieval score from
    # the state just before it (detached, so ranking never bends retrieval), β learned from 0. Off in checkpoints
    # made before it existed.
    rank_retrieval_feature: bool = False
    # A per-item ranking bias b_i (biased-MF style), read only by the ranker: an item's overall appeal gets its own
    # parameter instead of competing with retrieval for the shared item embedding. Off in older checkpoints.
    rank_item_bias: bool = False
    query_dim: int = Field(default=0, ge=0)  # 0: no query tokens; else the text encoder's dimension
    text_dim: int = Field(default=0, ge=0)  # 0: ID-only items; else frozen item-text features are projected in
    # Serving ranks by the ranking head only if it was trained; else by the retrieval score.
    ranking_trained: bool = True
    # What the ranking head's served logit predicts. "feedback": positive feedback on a consumed item (rating ≥ 4,
    # click vs impression), learned at the history's item tokens (checkpoints made before candidate training).
    # "next": that a candidate from the retrieval top-K' is the user's next item, learned in candidate slots
    # (model/candidates.py), as serving asks it. With "next" and feedback labels a second output unit keeps
    # predicting feedback (AUC/GAUC), so the two questions do not fight over one logit.
    rank_task: Literal["feedback", "next"] = "feedback"
    feedback_channel: bool = False
    # The candidates' sort key at serving time (model/serving.py `serving_key`), picked on the validation split
    # after training (model/train.py `select_serving_order`).
    serving_order: Literal["joint", "ranking", "retrieval"] = "joint"

    @property
    def rank_outputs(self) -> int:
        return 2 if self.rank_task == "next" and self.feedback_channel else 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class CandidateConfig(_Config):
    """The ranker trained on what it will be asked to rank (model/candidates.py): at a few retrieval positions per
    user, the model's own retrieval top-K' (refreshed every step, seen items left out as served) is appended in
    candidate slots; the label is whether the candidate is the next item. Loss: pointwise BCE + listwise softmax
    cross-entropy within the same context (SynerGen's hybrid ranking loss)."""

    k_prime: int = Field(default=200, ge=2)  # the serving default
    # Negatives: the `top` highest-retrieved, always taken, + `sampled` drawn uniformly from the rest of the top-K'.
    # Uniform by default, so the candidates look like serving's (all of the top-K'): forcing the highest in skewed
    # the negatives above the target's retrieval score, and the ranker learned to invert the retrieval order.
    top: int = Field(default=0, ge=0)
    sampled: int = Field(default=64, ge=0)
    positions_per_user: int = Field(default=2, ge=1)
    listwise_weight: float = Field(default=1.0, ge=0.0)
    # Train also on contexts whose target the retriever missed (the target joins the candidates). Off: serving never
    # asks about such items, and with them in, the positive is the one low-retrieval-score item among high-score
    # negatives, so the ranker learned to prefer what retrieval scored low (seen: served NDCG@10 fell to ~0.01).
    include_missed: bool = False


class EnhancerConfig(_Config):
    """Ranking-driven enhancer (UniGRF): the ranker's judgement of the retrieved top-K' moves the retrieval head.

    In the candidate contexts of model/candidates.py the ranker's distribution over the candidates, softmax(r/T)
    (detached), is distilled into the retriever's distribution over the same candidates, softmax(s/τ):
    L_distill = KL(p_rank ‖ p_ret), weighted by `weight` (UniGRF's enhancer feeds the ranker's preference back into
    retrieval; appending its negatives as softmax columns did nothing under the exact softmax, which has them).

    Off by default: on ML-100K (4 seeds, H200) joint served NDCG@10 was 0.0875 ± 0.0099 with it and 0.0953 ± 0.0099
    without, paired difference −0.0078, 95 % interval [−0.0334, +0.0177]: a tie, so it stays out of the presets
    (docs/bench/quality-ml-100k.json)."""

    # Train configs saved before the redesign carry the old hard-negative fields: read them, ignore them.
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    enabled: bool = False
    weight: float = Field(default=0.5, ge=0.0)
    temperature: float = Field(default=1.0, gt=0.0)
    warmup_steps: int = Field(default=200, ge=0)  # the ranker first has to learn something worth distilling


class WeighterConfig(_Config):
    """Gradient-guided adaptive loss weighting (UniGRF; GradNorm-style closed form)."""

    mode: Literal["adaptive", "static"] = "adaptive"
    static_weights: tuple[float, float] = (1.0, 1.0)  # (retrieval, ranking)
    every: int = Field(default=10, ge=1)
    gamma: float = Field(default=1.5, ge=0.0)  # asymmetry: how strongly the slower task is favoured
    step: float = Field(default=0.3, gt=0.0, le=1.0)  # multiplicative move toward the target weight
    min_weight: float = Field(default=0.1, gt=0.0)
    ema: float = Field(default=0.9, ge=0.0, lt=1.0)  # smoothing of the losses that define training rates
    # "initial": each task's gradient norm is read relative to its own first measurement, so tasks whose
    # losses have different natural gradient scales (InfoNCE's are ~10x BCE's here) keep their weights
    # while they train at the same rate; "absolute" is plain GradNorm, which equalizes raw norms and on
    # ML-100K pushed w_ret to ~0.2 and lost NDCG@10 (BENCHMARKS.md).
    grad_reference: Literal["initial", "absolute"] = "initial"


class SearchConfig(_Config):
    """Joint search + recommendation (SynerGen): generated queries in the sequences, item text features."""

    enabled: bool = False
    share: float = Field(default=0.2, ge=0.0, le=1.0)  # share of training events preceded by a query
    noise: float = Field(default=0.2, ge=0.0, le=1.0)  # chance a query carries a wrong genre
    encoder: Literal["minilm", "hashed"] = "minilm"
    item_text: bool = True  # item tokens gain the projected text embedding beside the ID embedding
    seed: int = 0


class TrainConfig(_Config):
    epochs: int = Field(default=60, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=2e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    grad_clip: float = Field(default=1.0, gt=0.0)
    task: Literal["joint", "retrieval", "ranking"] = "joint"
    # "sampled": InfoNCE over uniform + in-batch negatives with log-Q correction; "full": softmax over every
    # item (exact cross-entropy, no sampling bias), affordable when the catalogue has a few thousand items.
    negatives: Literal["sampled", "full"] = "sampled"
    uniform_negatives: int = Field(default=512, ge=0)
    inbatch_negatives: int = Field(default=256, ge=0)
    bpr_weight: float = Field(default=0.5, ge=0.0)
    patience: int = Field(default=8, ge=1)  # epochs without validation improvement before stopping
    # What early stopping, LR decay and the kept checkpoint maximise on validation. "auto": AUC for ranking-only,
    # NDCG@10 for retrieval-only, and for joint training on data with feedback NDCG@10 × (AUC − 0.5): one model
    # serves both tasks, and the product counts a relative gain of either alike (d log = dN/N + dA/(A − ½)).
    select: Literal["auto", "ndcg@10", "auc", "ndcg@10*auc_lift"] = "auto"
    # After more than lr_decay_patience epochs without a validation gain, multiply the LR by lr_decay (1.0: off).
    lr_decay: float = Field(default=1.0, gt=0.0, le=1.0)
    lr_decay_patience: int = Field(default=3, ge=1)
    min_lr: float = Field(default=1e-5, ge=0.0)
    # Epochs after which the LR is multiplied by lr_decay (MultiStepLR); when set, they replace the plateau decay.
    lr_milestones: list[int] = Field(default_factory=list, max_length=32)
    # The final refit (HSTU's ML-1M protocol trains on all but each user's last event): train on every event but
    # the test target, the validation target included, for exactly `epochs` epochs with no validation, and keep
    # the last epoch. Take `epochs` and `lr_milestones` from a validated run of the same config.
    refit: bool = False
    # Sequence models sit on a popularity plateau for the first hundreds of steps: never stop before this.
    min_epochs: int = Field(default=10, ge=1)
    # Sample a random window end for users with more than L events (uses the whole history over epochs).
    random_crop: bool = True
    seed: int = 42
    threads: int = Field(default=0, ge=0)  # 0: torch's default
    # "auto": a CUDA GPU when torch sees one, else the CPU; "cuda[:N]" fails without one (model/device.py,
    # `--device` / GENREC_DEVICE). Results are not bit-identical across devices.
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    eval_batch_size: int = Field(default=256, ge=1)
    # Validation and test leave each user's seen items out of the full ranking (SASRec's and HSTU's protocol).
    eval_exclude_seen: bool = True
    # Frozen item-text features beside the ID embeddings (SynerGen) for recommendation: the item's metadata encoded
    # once by this encoder ("none": ID embeddings only). Search training brings its own (search.item_text).
    item_text: Literal["none", "minilm", "hashed"] = "none"
    candidates: CandidateConfig = CandidateConfig()
    enhancer: EnhancerConfig = EnhancerConfig()
    weighter: WeighterConfig = WeighterConfig()
    search: SearchConfig = SearchConfig()


class RunConfig(_Config):
    """What `genrec train --config FILE` reads (JSON): model overrides and training settings."""

    model: dict[str, object] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig()
