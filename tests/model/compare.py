"""Comparing ranked lists across batch compositions."""

from __future__ import annotations

import math
from typing import Any


def joint_key(r: Any, tau: float = 0.05) -> float:
    """The serving sort key of a Recommendation (model/serving.py): s/τ + log σ(r), from what it reports."""
    return r.retrieval_score / tau + math.log(max(r.score, 1e-30))


def tie_groups(ranked: list[Any], tol: float = 1e-4, tau: float = 0.05) -> list[frozenset[str]]:
    """The ranked items as groups of equal sort key.

    Float noise between a batch and a single row may swap two items whose keys agree to the last digits,
    never anything else. The last group may be cut by k, so it is left out.
    """
    groups: list[set[str]] = []
    for i, r in enumerate(ranked):
        if i == 0 or abs(joint_key(r, tau) - joint_key(ranked[i - 1], tau)) > tol:
            groups.append(set())
        groups[-1].add(r.item_id)
    return [frozenset(g) for g in groups[:-1]]
