"""`python -m genrec.ops.analysis_new_item_crowding`: a checkpoint grown as the online trainer grows it, served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from genrec.ops.analysis_new_item_crowding import main
from genrec.ops.bench_stream import _train_tiny


@pytest.mark.slow
def test_grown_checkpoints_are_served_and_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ckpt"
    _train_tiny(ckpt)
    assert main(["--checkpoint", str(ckpt), "--dataset", "synthetic", "--sample", "40", "--new", "0,30"]) == 0
    out = json.loads(capsys.readouterr().out)
    none, some = out["rows"]
    assert out["users_sampled"] == 40
    # Grown by nothing, the model serves exactly the lists the checkpoint serves.
    assert none == {"new_items": 0, "share_of_slots_new": 0.0, "lists_with_a_new_item": 0.0,
                    "known_items_kept_of_base_top_k": 1.0}
    assert some["new_items"] == 30
    assert 0.0 <= some["share_of_slots_new"] <= 1.0
    # A slot a new item takes is a slot no known item of the original list keeps.
    assert some["known_items_kept_of_base_top_k"] <= 1.0 - some["share_of_slots_new"] + 1e-9
