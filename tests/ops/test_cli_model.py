"""`genrec train` / `genrec eval` on a search model: search metrics in the JSON, item-text cache beside it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from ops import cli_model


def _app() -> typer.Typer:
    app, bench_app = typer.Typer(), typer.Typer()
    app.add_typer(bench_app, name="bench")
    cli_model.register(app, bench_app)
    return app


def test_train_and_eval_report_search_metrics_and_keep_the_item_text_cache(tmp_path: Path) -> None:
    app, runner, out = _app(), CliRunner(), tmp_path / "ckpt"
    trained = runner.invoke(app, ["train", "--dataset", "synthetic", "--out", str(out), "--epochs", "1", "--search",
                                  "--text-encoder", "hashed", "--no-progress"])
    assert trained.exit_code == 0, trained.output
    cached = sorted(out.glob("item_text_*.npy"))
    assert len(cached) == 1, "the item text embeddings are cached next to the checkpoint, across its saves"
    stamp = cached[0].stat().st_mtime_ns
    evaluated = runner.invoke(app, ["eval", "--checkpoint", str(out), "--dataset", "synthetic", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    for key in ("hr@10", "ndcg@10", "auc", "search_hr@10", "search_ndcg@10"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["search_ndcg@10"] > 0.0
    # Reused, not recomputed: the same single file, untouched.
    assert sorted(out.glob("item_text_*.npy")) == cached and cached[0].stat().st_mtime_ns == stamp

