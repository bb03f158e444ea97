"""`genrec bench quality` aggregation: seeds fold into mean ± std rows and paired intervals, in the issue's shape."""

from __future__ import annotations

import pytest
from genrec.ops.bench_quality import aggregate, markdown_table


def _per_seed() -> dict[int, dict[str, dict[str, float]]]:
    joint = [0.090, 0.095, 0.100, 0.105]
    two = [0.080, 0.086, 0.089, 0.096]  # joint − two_model: 0.010, 0.009, 0.011, 0.009 → consistently higher
    ret = [0.100, 0.085, 0.105, 0.095]  # joint − retrieval_only: −0.010, +0.010, −0.005, +0.010 → a tie
    return {42 + i: {"joint": {"served_ndcg@10": joint[i], "gauc": 0.70, "best_epoch": 10 + i},
                     "two_model": {"served_ndcg@10": two[i]},
                     "retrieval_only": {"served_ndcg@10": ret[i]},
                     "ranking_only": {"gauc": 0.69 + 0.001 * i}} for i in range(4)}


def test_rows_hold_mean_std_and_values_over_seeds() -> None:
    out = aggregate("ml-100k", _per_seed(), {"served_ndcg@10": 0.045, "ndcg@10": 0.045})
    assert out["seeds"] == [42, 43, 44, 45]
    row = out["rows"]["joint"]["served_ndcg@10"]
    assert row["mean"] == pytest.approx(0.0975)
    assert row["values"] == [0.09, 0.095, 0.1, 0.105]
    assert row["std"] == pytest.approx(0.00645, abs=1e-5)  # sample std (ddof 1)
    assert out["rows"]["popular"]["served_ndcg@10"]["mean"] == 0.045


def test_paired_differences_claim_only_what_the_interval_shows() -> None:
    out = aggregate("ml-100k", _per_seed(), None)
    two = out["paired"]["joint-two_model"]
    assert two["metric"] == "served_ndcg@10" and two["mean_diff"] == pytest.approx(0.00975, abs=1e-5)
    assert two["ci95"][0] > 0 and two["verdict"] == "higher"
    ret = out["paired"]["joint-retrieval_only"]
    assert ret["ci95"][0] < 0 < ret["ci95"][1] and ret["verdict"] == "tie"
    assert out["paired"]["joint-ranking_only"]["metric"] == "gauc"


def test_table_shows_rows_and_paired_verdicts() -> None:
    table = markdown_table(aggregate("ml-100k", _per_seed(), None))
    assert "| joint |" in table and "0.0975 ± 0.0065" in table
    assert "| joint-two_model | served_ndcg@10 | +0.0097" in table and "higher" in table


def test_every_ablation_is_a_valid_config_that_changes_the_preset() -> None:
    from genrec.model.config import ModelConfig, TrainConfig
    from genrec.model.presets import preset
    from genrec.ops.bench_quality import ABLATIONS, _merge

    base = preset("ml-100k")
    for name, (t_over, m_over) in ABLATIONS.items():
        tcfg = TrainConfig(**_merge(base.train.model_dump(), t_over))
        mcfg = ModelConfig(num_items=10, **{**base.model, **m_over})
        changed = tcfg != base.train or mcfg != ModelConfig(num_items=10, **base.model)
        assert changed, f"ablation {name} trains the preset unchanged"
