"""Seed statistics: mean ± std over seeds and paired differences with Student-t 95 % intervals.

A difference between two models trained with the same seeds is claimed only when the paired interval of
(a_i − b_i) over seeds excludes 0; otherwise the two tie.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def summary(values: Sequence[float]) -> dict[str, object]:
    """{"mean", "std" (sample, ddof=1; 0 for one value), "values"}."""
    v = np.asarray(values, np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": round(float(v.mean()), 5), "std": round(std, 5), "values": [round(float(x), 5) for x in v]}


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, object]:
    """Mean of a_i − b_i and its two-sided Student-t interval (n − 1 degrees of freedom); the interval is
    [nan, nan] with fewer than two pairs."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if len(d) != len(a) or len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} and {len(b)}")
    mean = float(d.mean()) if len(d) else float("nan")
    if len(d) < 2:
        return {"mean_diff": round(mean, 5), "ci95": [float("nan"), float("nan")], "n": len(d)}
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return {"mean_diff": round(mean, 5), "ci95": [round(mean - half, 5), round(mean + half, 5)], "n": len(d),
            "verdict": verdict(mean - half, mean + half)}


def verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "higher"
    if hi < 0:
        return "lower"
    return "tie"
