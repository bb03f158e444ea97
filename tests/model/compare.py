"""Comparing ranked lists across batch compositions."""

from __future__ import annotations

from typing import Any


def tie_groups(ranked: list[Any], tol: float = 1e-5) -> list[frozenset[str]]:
    """The ranked items as groups of equal score.

    Float noise between a batch and a single row may swap two items whose ranking scores agree to the last
    digit (saturated sigmoids), never anything else. The last group may be cut by k, so it is left out.
    """
    groups: list[set[str]] = []
    for i, r in enumerate(ranked):
        if i == 0 or abs(r.score - ranked[i - 1].score) > tol:
            groups.append(set())
        groups[-1].add(r.item_id)
    return [frozenset(g) for g in groups[:-1]]
