"""Small models and data for model tests (CPU, seconds)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from genrec.model.config import ModelConfig
from genrec.model.generative import GenerativeRecommender
from genrec.model.tokens import Action, tokenize


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return ModelConfig(num_items=50, d_model=16, n_layers=2, n_heads=2, dropout=0.0, max_events=20)


@pytest.fixture
def tiny_model(tiny_cfg: ModelConfig) -> GenerativeRecommender:
    torch.manual_seed(0)
    return GenerativeRecommender(tiny_cfg).eval()


def _random_batch(model: GenerativeRecommender, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    items = [rng.integers(1, model.cfg.num_items + 1, n).astype(np.int32) for n in lengths]
    actions = [rng.choice([Action.POSITIVE, Action.NEGATIVE], n).astype(np.int8) for n in lengths]
    ts = [np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)).astype(np.int64) for n in lengths]
    return model.to_tensors(tokenize(items, actions, ts, model.cfg.interleave_actions))


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """Random histories (items, actions, increasing timestamps) tokenized for a model."""
    return _random_batch
