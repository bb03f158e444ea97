"""A short training run on real ML-100K beats the popularity baseline (full ranking, test split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from genrec.model.baselines import evaluate_popularity
from genrec.model.config import TrainConfig
from genrec.model.data import load_dataset
from genrec.model.train import fit_and_test


@pytest.mark.slow
def test_short_training_on_ml100k_beats_popularity(data_dir: Path) -> None:
    # All 943 users, short windows (L=50): ~35 s on 2 cores. A 400-user slice was too noisy to judge by — its
    # 400 validation targets picked an epoch-2 model that lost to popularity on test.
    # Seen (seen items left out of the ranking, the default protocol): seeds 7/42 give test NDCG@10 0.066/0.070
    # against popularity's 0.045; with seen items ranked too, seeds 1/7/42 gave 0.032–0.041 against 0.0224.
    ds = load_dataset("ml-100k", data_dir)
    tcfg = TrainConfig(epochs=12, min_epochs=12, patience=12, batch_size=32, lr=3e-3, uniform_negatives=512,
                       inbatch_negatives=128, enhancer={"enabled": True, "warmup_steps": 100},
                       candidates={"k_prime": 100, "top": 16, "sampled": 16, "positions_per_user": 1})
    result, test = fit_and_test(ds, tcfg, progress=False, d_model=64, n_layers=2, n_heads=2, max_events=50,
                                rank_task="next")
    popular = evaluate_popularity(ds)
    assert np.isfinite(result.history[-1]["loss"])
    assert any("distill" in row for row in result.history)  # the enhancer took part
    assert test["ndcg@10"] > popular["ndcg@10"], (test, popular)
    assert test["served_ndcg@10"] > popular["ndcg@10"], (test, popular)
    assert test["auc"] > 0.6  # the ranking head learned the feedback too
