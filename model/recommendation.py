"""The one result type of a recommendation, shared by the model (model/serving.py) and the worker.

A module of its own, free of torch: the worker process never runs the model (it lives in the inference child,
streams/inference_process.py) and decodes the child's replies into this type, so importing it must not cost
the worker a torch import (about a second of every restart, issue 19 item 10).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    rank: int  # from 1
    score: float  # ranking head probability (or the retrieval score for retrieval-only models); not the sort key
    retrieval_score: float  # cosine of user state and item
