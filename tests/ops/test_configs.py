"""configs/: every committed run configuration is one `genrec train --config` reads, and is listed in its README."""

from __future__ import annotations

from pathlib import Path

import pytest
from genrec.model.config import ModelConfig
from genrec.ops.cli_model import load_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(CONFIGS.rglob("*.json"))
DATASETS = ("ml-100k", "ml-1m", "amazon-beauty", "synthetic")


def test_there_are_configs() -> None:
    assert (CONFIGS / "ml-1m-refit-8l.json") in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_each_config_validates_over_its_data_sets_preset_and_is_listed(path: Path) -> None:
    dataset = next(d for d in sorted(DATASETS, key=len, reverse=True) if path.name.startswith(d + "-"))
    run = load_run_config(dataset, path, None, {})
    ModelConfig(num_items=100, **run.model)
    assert f"`{path.relative_to(CONFIGS).as_posix()}`" in (CONFIGS / "README.md").read_text()
