"""`genrec bench quality` table helpers: several seeds fold into mean ± std rows."""

from __future__ import annotations

import pytest

from ops.bench_quality import markdown_table, mean_std_row


def test_seeds_fold_into_mean_and_population_std() -> None:
    row = mean_std_row([{"ndcg@10": 0.02, "auc": 0.70, "best_epoch": 10},
                        {"ndcg@10": 0.04, "auc": 0.80, "best_epoch": 20}])
    assert row["ndcg@10"] == pytest.approx(0.03)
    assert row["ndcg@10_std"] == pytest.approx(0.01)
    assert row["auc_std"] == pytest.approx(0.05)
    assert row["best_epoch"] == 15 and "best_epoch_std" not in row
    assert row["seeds"] == 2


def test_table_shows_std_only_where_measured() -> None:
    table = markdown_table({"rows": {"genrec": {"ndcg@10": 0.03, "ndcg@10_std": 0.01},
                                     "popular": {"ndcg@10": 0.02}}})
    assert "| genrec | 0.0300 ± 0.0100 |" in table
    assert "| popular | 0.0200 |" in table


def test_every_ablation_is_a_valid_config_that_changes_the_preset() -> None:
    from model.config import ModelConfig, TrainConfig
    from model.presets import preset
    from ops.bench_quality import ABLATIONS, _merge

    base = preset("ml-100k")
    for name, (t_over, m_over) in ABLATIONS.items():
        tcfg = TrainConfig(**_merge(base.train.model_dump(), t_over))
        mcfg = ModelConfig(num_items=10, **{**base.model, **m_over})
        changed = tcfg != base.train or mcfg != ModelConfig(num_items=10, **base.model)
        assert changed, f"ablation {name} trains the preset unchanged"
