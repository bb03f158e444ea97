"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from genrec.model.data import SequenceDataset
from genrec.model.metrics import auc, gauc, ranking_metrics, target_ranks


def test_target_ranks_count_strictly_better_items() -> None:
    scores = np.array([[-np.inf, 0.1, 0.9, 0.5, 0.7], [-np.inf, 0.9, 0.8, 0.7, 0.6]])
    assert target_ranks(scores, np.array([3, 1])).tolist() == [2, 0]


def test_ranking_metrics_by_hand() -> None:
    m = ranking_metrics(np.array([0, 2, 12]), ks=(10,))
    assert math.isclose(m["hr@10"], 2 / 3)
    assert math.isclose(m["ndcg@10"], (1.0 + 1 / math.log2(4)) / 3)
    assert math.isclose(m["mrr"], (1 + 1 / 3 + 1 / 13) / 3)


def test_auc_by_hand_with_ties() -> None:
    # positives 0.8, 0.4; negatives 0.4, 0.1 → pairs: (0.8>0.4) (0.8>0.1) (0.4=0.4 → ½) (0.4>0.1) = 3.5/4
    assert math.isclose(auc(np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])), 3.5 / 4)
    assert math.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_gauc_weights_users_by_their_item_count_and_skips_single_class_users() -> None:
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.5, 0.5])
    labels = np.array([1, 0, 1, 0, 0, 1, 1])
    groups = np.array([1, 1, 2, 2, 2, 3, 3])
    # user 1: AUC 1 (2 items); user 2: positive 0.2 vs negatives 0.3, 0.8 → 0 (3 items); user 3: one class
    assert math.isclose(gauc(scores, labels, groups), (1.0 * 2 + 0.0 * 3) / 5)


def _two_users() -> SequenceDataset:
    items = [np.array([1, 2, 3, 4], np.int32), np.array([1, 2, 5, 3], np.int32)]
    return SequenceDataset("hand", [f"i{i}" for i in range(1, 6)], ["a", "b"], items,
                           [np.ones(4, np.int8)] * 2, [np.arange(4, dtype=np.int64)] * 2, True, True)


def test_popularity_leaves_each_users_seen_items_out_of_the_ranking_by_hand() -> None:
    from genrec.model.baselines import evaluate_popularity

    # Test histories a=[1,2,3] → 4, b=[1,2,5] → 3; counts 1:2 2:2 3:1 5:1 4:0 (ties: lower index first).
    # Seen items ranked too: a's 4 is 5th (rank 4), b's 3 is 3rd (rank 2).
    # Seen left out: a's 4 is behind 5 only (rank 1); b's 3 is behind nothing (1 and 2 were seen: rank 0).
    ds = _two_users()
    incl = evaluate_popularity(ds, exclude_seen=False)
    excl = evaluate_popularity(ds)
    assert incl["ndcg@10"] == pytest.approx((1 / np.log2(6) + 1 / np.log2(4)) / 2)
    assert excl["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1.0) / 2)
    assert excl["mrr"] == pytest.approx((1 / 2 + 1) / 2)
