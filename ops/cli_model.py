"""Model commands: `genrec train`, `genrec eval`, `genrec recommend` (README)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

DatasetOpt = Annotated[str, typer.Option(
    "--dataset", help="ml-100k | ml-1m | amazon | amazon-beauty | synthetic | interactions (your own "
    "DIR/interactions.csv or .parquet [+ items.csv], model/interactions.py)")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", envvar="GENREC_DEVICE",
    help="auto | cpu | cuda[:N] (auto: a CUDA GPU when torch sees one, else the CPU; cuda without one is an error)")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="folder holding the data set (../shared/data; interactions: the folder of interactions.csv)")]


def check_device(device: str | None) -> Any:
    """The torch device, or a usage error (no traceback) for an unknown name or a GPU this machine lacks."""
    from genrec.model.device import DeviceUnavailableError, resolve_device

    try:
        return resolve_device(device)
    except DeviceUnavailableError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from exc


def load_data(dataset: str, data_dir: Path | None) -> Any:
    """The data set, or a usage error naming what is wrong with the user's own files (no traceback)."""
    from genrec.model.data import load_dataset
    from genrec.model.interactions import InteractionsError

    try:
        ds = load_dataset(dataset, data_dir)
    except (InteractionsError, FileNotFoundError) as exc:
        if dataset != "interactions":
            raise
        raise typer.BadParameter(str(exc), param_hint="--data-dir") from exc
    unit = ds.load_report.get("timestamp_unit")
    if unit:
        typer.echo(f"{ds.load_report['file']}: {ds.load_report['rows']} rows, {ds.load_report['duplicates_dropped']}"
                   f" exact duplicates dropped; timestamps read as epoch {unit}", err=True)
    return ds


def popular_figures(ds: Any, split: str, exclude_seen: bool) -> dict[str, float]:
    """The most-popular baseline (model/baselines.py) under the model's own protocol: its floor, as popular_*."""
    from genrec.model.baselines import evaluate_popularity

    pop = evaluate_popularity(ds, split, exclude_seen=exclude_seen)
    return {f"popular_{k}": pop[k] for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr")}


def load_run_config(dataset: str, config: Path | None, epochs: int | None, overrides: dict[str, Any]) -> Any:
    """The data set's preset, then the JSON config file's keys, then flags."""
    from genrec.model.config import RunConfig
    from genrec.model.presets import preset

    base = preset(dataset)
    raw: dict[str, Any] = json.loads(config.read_text()) if config else {}
    train = base.train.model_dump()
    _deep_update(train, raw.get("train", {}))
    run = RunConfig(model={**base.model, **raw.get("model", {})}, train=train)
    train = run.train.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        target = train
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    if epochs is not None:
        train["epochs"] = epochs
    return RunConfig(model=run.model, train=train)


def _deep_update(target: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            _deep_update(target[k], v)
        else:
            target[k] = v


def train(
    dataset: DatasetOpt,
    out: Annotated[Path, typer.Option("--out", help="checkpoint directory to write")],
    data_dir: DataDirOpt = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs (early stopping may end sooner)")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file: {\"model\": {...}, \"train\": {...}}")] = None,
    task: Annotated[str | None, typer.Option(help="joint | retrieval | ranking")] = None,
    enhancer: Annotated[bool | None, typer.Option("--enhancer/--no-enhancer")] = None,
    weighting: Annotated[str | None, typer.Option(help="adaptive | static")] = None,
    time_rope: Annotated[bool | None, typer.Option("--time-rope/--no-time-rope")] = None,
    search: Annotated[bool | None, typer.Option("--search/--no-search", help="joint search + recommendation")] = None,
    text_encoder: Annotated[str | None, typer.Option(help="minilm | hashed (query and item text encoder)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    device: DeviceOpt = None,
    refit_from: Annotated[Path | None, typer.Option(
        "--refit-from", help="checkpoint of a validated run with the same settings: retrain from scratch on train + "
        "validation for its best epoch count and LR steps, no early stopping (HSTU's ML-1M protocol)")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="PNG of the training loss and the validation figures per epoch (needs the bench extra: "
        "matplotlib); the history itself is in the checkpoint's metrics.json")] = None,
) -> None:
    """Train on the leave-one-out training part, early-stop on validation, evaluate on test, save."""
    if plot is not None:
        from genrec.ops.plots import check_matplotlib

        check_matplotlib("genrec train")  # before the data set loads and the epochs run
    from genrec.model.checkpoint import save_checkpoint
    from genrec.model.data import train_popularity
    from genrec.model.train import fit_and_test, refit_schedule

    flags: dict[str, Any] = {"task": task, "enhancer.enabled": enhancer, "weighter.mode": weighting,
                             "search.enabled": search, "search.encoder": text_encoder, "device": device}
    if refit_from is not None:
        try:
            done = json.loads((refit_from / "metrics.json").read_text())
            flags.update(refit_schedule(done["history"], int(done["best_epoch"])))
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise typer.BadParameter(f"{refit_from}: no finished validated run to refit from ({e})") from e
        if epochs is not None:
            raise typer.BadParameter("--refit-from sets the epochs (the validated run's best epoch); drop --epochs")
    run = load_run_config(dataset, config, epochs, flags)  # the flag (or env), else the config file's device
    check_device(run.train.device)  # before the data set loads: "cuda" on a CPU-only host fails in a second
    ds = load_data(dataset, data_dir)
    model_over = dict(run.model)
    if time_rope is not None:
        model_over["time_rope"] = time_rope
    typer.echo(f"training on {ds.summary()}", err=True)
    popularity: dict[str, Any] = {"item_popularity": train_popularity(ds).tolist()}
    search_data = None
    if run.train.search.enabled:
        from genrec.model.search import search_data_for

        sc = run.train.search
        search_data = search_data_for(ds, data_dir, sc.encoder, sc.share, sc.noise, sc.seed, cache_dir=out)
        popularity["text_encoder"] = sc.encoder
    text_vecs = None
    if run.train.item_text != "none" and not run.train.search.enabled:
        from genrec.model.search import item_text_vectors

        text_vecs = item_text_vectors(ds, data_dir, run.train.item_text, cache_dir=out)

    def save_best(model: Any, row: dict[str, Any]) -> None:
        # A checkpoint after every validation improvement: a long run can be stopped at any time.
        save_checkpoint(out, model, ds.item_ids, dataset=ds.name, train_config=run.train.model_dump(),
                        metrics={"valid": {k: v for k, v in row.items() if k.startswith("valid_")},
                                 "epoch": row["epoch"], "partial": True}, extra_meta=popularity)

    result, test = fit_and_test(ds, run.train, progress=progress, search=search_data, on_best=save_best,
                                item_text_vecs=text_vecs, **model_over)
    metrics = {"test": test, "valid": result.best_valid, "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, "train_seconds": result.train_seconds,
               "train_tokens_per_s": result.tokens_per_s, "history": result.history}
    path = save_checkpoint(out, result.model, ds.item_ids, dataset=ds.name, train_config=run.train.model_dump(),
                           metrics=metrics, extra_meta=popularity)
    out_json: dict[str, Any] = {"checkpoint": str(path), "test": test, "best_epoch": result.best_epoch,
                                "train_seconds": round(result.train_seconds, 1)}
    if plot is not None:
        out_json["plot"] = str(_plot_training(metrics, plot, ds.name, run.train.device))
    if ds.load_report:
        out_json["data"] = ds.summary()  # the user's file: rows, duplicates dropped, the timestamp unit found
    typer.echo(json.dumps(out_json))


def _plot_training(metrics: dict[str, Any], path: Path, dataset: str, device: str | None) -> Path:
    import os

    import torch
    from genrec.ops.plots import invoked_command, training_curves_from_metrics

    dev = check_device(device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    note = (f"{where}, torch {torch.__version__}, 1-minute load average {os.getloadavg()[0]:.2f} at the end; "
            f"{metrics.get('train_tokens_per_s', 0):,.0f} training tokens/s; test: " + ", ".join(
                f"{k} {metrics['test'][k]:.4f}" for k in ("served_ndcg@10", "served_hr@10") if k in metrics["test"]))
    return training_curves_from_metrics(metrics, path, dataset=dataset, command=invoked_command(), note=note)


def eval_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint")],
    dataset: DatasetOpt,
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="test | valid")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    exclude_seen: Annotated[bool, typer.Option(
        "--exclude-seen/--include-seen",
        help="leave each user's seen items out of the ranking (SASRec/HSTU protocol) or rank them too",
    )] = True,
    device: DeviceOpt = None,
) -> None:
    """Evaluate a checkpoint with the papers' protocol (leave-one-out, full ranking)."""
    from genrec.model.checkpoint import load_checkpoint
    from genrec.model.evaluate import evaluate

    dev = check_device(device)
    ckpt = load_checkpoint(checkpoint)
    ckpt.model.to(dev)
    if split == "valid" and ckpt.meta.get("train", {}).get("refit"):
        raise typer.BadParameter(f"{checkpoint} is a refit: it trained on the validation targets; evaluate on test")
    ds = load_data(dataset, data_dir)
    if ds.item_ids != ckpt.item_ids:
        raise typer.BadParameter(f"checkpoint {checkpoint} was trained on another item vocabulary than {dataset}")
    search_data = None
    if ckpt.model.cfg.query_dim:
        from genrec.model.search import search_data_for

        sc = ckpt.meta.get("train", {}).get("search", {})
        search_data = search_data_for(ds, data_dir, ckpt.meta.get("text_encoder", "minilm"), sc.get("share", 0.2),
                                      sc.get("noise", 0.2), sc.get("seed", 0), cache_dir=checkpoint)
    metrics = evaluate(ckpt.model, ds, split, search=search_data, exclude_seen=exclude_seen)
    # Every figure with its floor beside it: the same users, split and seen-item rule (model/baselines.py).
    metrics.update(popular_figures(ds, split, exclude_seen))
    if as_json:
        out: dict[str, Any] = {k: round(v, 6) for k, v in metrics.items()}
        if "timestamp_unit" in ds.load_report:
            out["timestamp_unit"] = ds.load_report["timestamp_unit"]
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        for k, v in metrics.items():
            typer.echo(f"{k:>16}  {v:.4f}")


def recommend(
    checkpoint: Annotated[Path, typer.Option("--checkpoint")],
    user: Annotated[list[str], typer.Option("--user", help="user id (repeatable)")],
    dataset: DatasetOpt = "ml-100k",
    data_dir: DataDirOpt = None,
    k: int = 10,
    query: Annotated[str | None, typer.Option(help="search query (personalized search)")] = None,
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen/--include-seen")] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: DeviceOpt = None,
) -> None:
    """Recommend for users of a data set, their full history as context (serving path)."""
    from genrec.model.serving import Recommender, item_titles

    rec = Recommender.from_checkpoint(checkpoint, device=str(check_device(device)))
    ds = load_data(dataset, data_dir)
    titles = item_titles(ds, data_dir)
    index = {u: i for i, u in enumerate(ds.user_ids)}
    missing = [u for u in user if u not in index]
    if missing:
        raise typer.BadParameter(f"unknown user(s) in {dataset}: {', '.join(missing)}")
    hists = [rec.history_from_raw([ds.item_ids[i - 1] for i in ds.items[index[u]]], ds.actions[index[u]],
                                  ds.ts[index[u]] * 1000) for u in user]
    results = rec.recommend(hists, [k] * len(user), [exclude_seen] * len(user), [query] * len(user))
    if as_json:
        out = {u: [r.__dict__ | {"title": titles.get(r.item_id)} for r in rs] for u, rs in zip(user, results,
                                                                                                 strict=True)}
        sys.stdout.write(json.dumps(out) + "\n")
        return
    for u, rs in zip(user, results, strict=True):
        typer.echo(f"user {u}" + (f"  query {query!r}" if query else ""))
        for r in rs:
            typer.echo(f"  {r.rank:>3}. {titles.get(r.item_id, r.item_id):<60} score {r.score:.3f}  "
                       f"retrieval {r.retrieval_score:.3f}")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(eval_cmd)
    app.command("recommend")(recommend)
