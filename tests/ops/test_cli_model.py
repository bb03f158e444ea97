"""`genrec train` / `genrec eval` on a search model: search metrics in the JSON, item-text cache beside it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from genrec.ops import cli_model
from typer.testing import CliRunner


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



def test_refit_from_replays_the_validated_runs_schedule_and_refuses_validation(tmp_path: Path) -> None:
    app, runner = _app(), CliRunner()
    first, refit = tmp_path / "validated", tmp_path / "refit"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"train": {"lr_milestones": [1], "lr_decay": 0.5, "min_epochs": 3, "patience": 3}}))
    ran = runner.invoke(app, ["train", "--dataset", "synthetic", "--out", str(first), "--epochs", "3", "--config",
                              str(cfg), "--no-progress"])
    assert ran.exit_code == 0, ran.output
    done = json.loads((first / "metrics.json").read_text())
    ran = runner.invoke(app, ["train", "--dataset", "synthetic", "--out", str(refit), "--config", str(cfg),
                              "--refit-from", str(first), "--no-progress"])
    assert ran.exit_code == 0, ran.output
    again = json.loads((refit / "metrics.json").read_text())
    assert again["epochs_run"] == done["best_epoch"] and again["valid"] == {}
    assert [r["lr"] for r in again["history"]] == [r["lr"] for r in done["history"][: done["best_epoch"]]]
    train_cfg = json.loads((refit / "config.json").read_text())["train"]
    assert train_cfg["refit"] is True
    bad = runner.invoke(app, ["eval", "--checkpoint", str(refit), "--dataset", "synthetic", "--split", "valid"],
                        env={"COLUMNS": "400"})
    assert bad.exit_code != 0 and "trained on the validation targets" in bad.output, bad.output
    assert runner.invoke(app, ["eval", "--checkpoint", str(refit), "--dataset", "synthetic", "--json"]).exit_code == 0
    # A checkpoint without a finished run's history (here: none at all) is refused with the reason.
    nothing = runner.invoke(app, ["train", "--dataset", "synthetic", "--out", str(tmp_path / "x"), "--refit-from",
                                  str(tmp_path / "missing"), "--no-progress"], env={"COLUMNS": "400"})
    assert nothing.exit_code != 0 and "no finished validated run" in nothing.output, nothing.output
