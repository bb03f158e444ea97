"""`genrec bench quality`: does the unified model beat the parts it replaces? One data set, several seeds.

Rows, each trained per seed with the data set's preset (model/presets.py, or `--config configs/…`) and evaluated
with the papers' protocol (leave-one-out by time, full ranking over all items, seen items left out; `incl_*`:
ranked too), on the order the worker serves (`served_*`, model/serving.py `served_order`) and on the retrieval
head alone:

- `joint`: the unified model (UniGRF: one backbone, retrieval and ranking heads);
- `retrieval_only`: the same model trained for retrieval alone; its served order is its retrieval order;
- `ranking_only`: a ranking-only model trained on `retrieval_only`'s top-K' (AUC/GAUC where there is feedback);
- `two_model`: `retrieval_only`'s top-K' re-ordered by `ranking_only`, the pipeline the product replaces;
- `popular`: the most-popular items; ablations of `joint` on request.

Prints one JSON object last on stdout: {"dataset", "seeds", "rows": {row: {metric: {"mean", "std", "values"}}},
"paired": {"joint-two_model": {"metric", "mean_diff", "ci95", "verdict"}, …}, …}. A difference is claimed only
when its paired 95 % interval over seeds excludes 0 (model/stats.py).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

# The rows every run trains, per seed: the unified model, and the pipeline it replaces (a retrieval-only model,
# then a ranking-only model trained on that retriever's top-K'; together: two_model).
BASE_JOBS = ("joint", "pipeline")
# Ablations of the unified model (name → train overrides, model overrides), each compared with `joint` seed by seed.
ABLATIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # The ranking-driven enhancer (off in the presets: a tie on ML-100K, model/config.py EnhancerConfig).
    "enhancer": ({"enhancer": {"enabled": True}}, {}),
    # Static loss weights instead of the adaptive weighter, without and with the enhancer.
    "static_weights": ({"weighter": {"mode": "static"}}, {}),
    "enhancer_static_weights": ({"enhancer": {"enabled": True}, "weighter": {"mode": "static"}}, {}),
    "no_time_rope": ({}, {"time_rope": False}),
    # The ranker without its own inputs: no retrieval score β·s(u, i), no per-item bias.
    "plain_ranker": ({}, {"rank_retrieval_feature": False, "rank_item_bias": False}),
    # Frozen MiniLM item-text features beside the ID embeddings (SynerGen).
    "item_text": ({"item_text": "minilm"}, {}),
}
METRICS = ("served_hr@10", "served_ndcg@10", "served_hr@50", "served_ndcg@50", "served_mrr",
           "hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr", "auc", "gauc",
           "search_hr@10", "search_ndcg@10", "search_mrr")
INCLUDE_SEEN = ("served_hr@10", "served_ndcg@10", "hr@10", "ndcg@10")
# Paired comparisons: joint minus each of these rows, on these metrics (where both rows have them).
PAIRED = {"two_model": ("served_ndcg@10", "gauc"), "retrieval_only": ("served_ndcg@10",),
          "ranking_only": ("gauc",)}
# Other pairs (a, b) compared on served NDCG@10: the weighter with the enhancer on.
PAIRED_OTHER = (("enhancer", "enhancer_static_weights"),)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def serving_latency(rec: Any, ds: Any, batch_sizes: tuple[int, ...] = (1, 64), repeats: int = 5) -> dict[str, Any]:
    """Wall-clock ms per `recommend` call (k=10, K'=200, exclude seen) on real test histories."""
    import numpy as np

    users = list(range(min(ds.num_users, max(batch_sizes))))
    hists = [rec.history_from_raw([ds.item_ids[i - 1] for i in ds.items[u][:-1]], ds.actions[u][:-1],
                                  ds.ts[u][:-1] * 1000) for u in users]
    out: dict[str, Any] = {"k": 10, "k_prime": rec.k_prime}
    for bs in batch_sizes:
        rec.recommend(hists[:bs], k=10)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rec.recommend(hists[:bs], k=10)
            times.append((time.perf_counter() - t0) * 1000)
        out[f"batch{bs}_ms"] = float(np.median(times))
        out[f"batch{bs}_ms_per_request"] = float(np.median(times)) / bs
    return out


def _test_row(test: dict[str, float], incl: dict[str, float] | None, res: Any, t0: float) -> dict[str, Any]:
    row: dict[str, Any] = {k: round(v, 5) for k, v in test.items() if k in METRICS}
    if not res.model.cfg.ranking_trained:  # an untrained ranking head's AUC means nothing
        row = {k: v for k, v in row.items() if k not in ("auc", "gauc")}
    if incl is not None:
        row.update({f"incl_{k}": round(incl[k], 5) for k in INCLUDE_SEEN if k in incl})
    row.update(best_epoch=res.best_epoch, epochs_run=res.epochs_run, train_seconds=round(res.train_seconds, 1),
               wall_seconds=round(time.perf_counter() - t0, 1), serving_order=res.model.cfg.serving_order)
    row.update({f"valid_{k}": round(v, 5) for k, v in res.best_valid.items() if k in ("served_ndcg@10", "ndcg@10")})
    return row


def run_job(dataset: str, data_dir: Path | None, job: str, seed: int, run_cfg: dict[str, Any],
            results_dir: Path | None = None, progress: bool = False, checkpoint_dir: Path | None = None
            ) -> dict[str, dict[str, Any]]:
    """Train one job for one seed; return its rows' test figures (and write them to results_dir/<job>-seed<s>.json).

    "joint": the unified model; "pipeline": retrieval_only, then ranking_only on its top-K' → rows retrieval_only,
    ranking_only (AUC/GAUC, where the data has feedback) and two_model (served); an ablation name: joint with it.
    The test split is read once per trained model (with seen items left out, and ranked: `incl_*`)."""
    from genrec.model.config import TrainConfig
    from genrec.model.data import load_dataset
    from genrec.model.train import fit_and_test, validate

    ds = load_dataset(dataset, data_dir)
    base_train = _merge(run_cfg["train"], {"seed": seed})
    model_over = dict(run_cfg["model"])
    rows: dict[str, dict[str, Any]] = {}

    def train(name: str, t_over: dict[str, Any], m_over: dict[str, Any], retriever: Any = None) -> Any:
        tcfg = TrainConfig(**_merge(base_train, t_over))
        typer.echo(f"[bench quality] {ds.name}: training {name} (seed {seed}) …", err=True)
        t0 = time.perf_counter()
        text = None
        if tcfg.item_text != "none":
            from genrec.model.search import item_text_vectors

            text = item_text_vectors(ds, data_dir, tcfg.item_text)
        res, test = fit_and_test(ds, tcfg, progress=progress, retriever=retriever, item_text_vecs=text,
                                 **{**model_over, **m_over})
        incl = validate(res.model, ds, tcfg.model_copy(update={"eval_exclude_seen": False}), None, retriever, "test")
        typer.echo(f"[bench quality] {name} seed {seed}: served NDCG@10 {test.get('served_ndcg@10', 0):.4f}", err=True)
        return res, test, incl, t0

    if job == "pipeline":
        res, test, incl, t0 = train("retrieval_only", {"task": "retrieval"}, {})
        rows["retrieval_only"] = _test_row(test, incl, res, t0)
        retriever = res.model.eval()
        res, test, incl, t0 = train("ranking_only", {"task": "ranking"}, {}, retriever)
        full = _test_row(test, incl, res, t0)
        rows["two_model"] = {k: v for k, v in full.items() if k not in ("auc", "gauc")}
        if "auc" in full:
            rows["ranking_only"] = {k: full[k] for k in ("auc", "gauc") if k in full}
    else:
        t_over, m_over = ({}, {}) if job == "joint" else ABLATIONS[job]
        res, test, incl, t0 = train(job, t_over, m_over)
        rows[job] = _test_row(test, incl, res, t0)
        if checkpoint_dir is not None and job == "joint":
            from genrec.model.checkpoint import save_checkpoint
            from genrec.model.data import train_popularity

            save_checkpoint(checkpoint_dir / f"{ds.name}-joint-seed{seed}", res.model, ds.item_ids, dataset=ds.name,
                            train_config=TrainConfig(**base_train).model_dump(), metrics={"test": test},
                            extra_meta={"item_popularity": train_popularity(ds).tolist()})
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / f"{job}-seed{seed}.json").write_text(json.dumps({"seed": seed, "rows": rows}))
    return rows


def _run_job_star(args: tuple[Any, ...]) -> tuple[str, int, dict[str, dict[str, Any]]]:
    import torch

    torch.set_num_threads(1)  # parallel jobs share the cores
    dataset, data_dir, job, seed, run_cfg, results_dir, ckpt_dir = args
    return job, seed, run_job(dataset, data_dir, job, seed, run_cfg, results_dir, False, ckpt_dir)


def aggregate(dataset: str, per_seed: dict[int, dict[str, dict[str, Any]]], popular: dict[str, float] | None
              ) -> dict[str, Any]:
    """The issue's JSON shape: rows[name][metric] = {mean, std, values} over the seeds every row finished, and
    paired differences (joint − baseline) with Student-t 95 % intervals."""
    from genrec.model.stats import paired_interval, summary

    seeds = sorted(per_seed)
    names = sorted({n for rows in per_seed.values() for n in rows})
    out_rows: dict[str, dict[str, Any]] = {}
    for name in names:
        have = [s for s in seeds if name in per_seed[s]]
        metrics = [k for k in per_seed[have[0]][name] if isinstance(per_seed[have[0]][name][k], (int, float))]
        out_rows[name] = {k: summary([per_seed[s][name][k] for s in have]) for k in metrics
                          if all(k in per_seed[s][name] for s in have)}
        out_rows[name]["seeds"] = have
        orders = [per_seed[s][name].get("serving_order") for s in have]
        if any(orders):
            out_rows[name]["serving_order"] = orders
    if popular is not None:
        out_rows["popular"] = {k: {"mean": round(v, 5), "std": 0.0, "values": [round(v, 5)]} for k, v in
                               popular.items()}
    paired: dict[str, Any] = {}
    second = {b for _, b in PAIRED_OTHER}  # two switches away from joint: compared with their one-switch row only
    pairs = [("joint", other, metrics) for other, metrics in
             {**PAIRED, **{a: ("served_ndcg@10",) for a in ABLATIONS if a not in second}}.items()]
    pairs += [(a, b, ("served_ndcg@10",)) for a, b in PAIRED_OTHER]
    for first, other, metrics in pairs:
        both = [s for s in seeds if first in per_seed[s] and other in per_seed[s]]
        for metric in metrics:
            if not both or not all(metric in per_seed[s][first] and metric in per_seed[s][other] for s in both):
                continue
            key = f"{first}-{other}" if metric == metrics[0] else f"{first}-{other}:{metric}"
            paired[key] = {"metric": metric, "seeds": both,
                           **paired_interval([per_seed[s][first][metric] for s in both],
                                             [per_seed[s][other][metric] for s in both])}
    return {"dataset": dataset, "seeds": seeds, "rows": out_rows, "paired": paired}


def popular_row(dataset: str, data_dir: Path | None, exclude_seen: bool) -> dict[str, float]:
    """The most-popular baseline under the same protocol; its served list is its own ranking."""
    from genrec.model.baselines import evaluate_popularity
    from genrec.model.data import load_dataset

    ds = load_dataset(dataset, data_dir)
    pop = evaluate_popularity(ds, exclude_seen=exclude_seen)
    row = {k: v for k, v in pop.items() if k in METRICS}
    row.update({f"served_{k}": pop[k] for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr")})
    incl = evaluate_popularity(ds, exclude_seen=False)
    row.update({f"incl_{k}": incl[k.removeprefix("served_")] for k in INCLUDE_SEEN})
    return row


def run_quality(dataset: str, data_dir: Path | None, run_cfg: dict[str, Any], seeds: list[int], jobs: list[str],
                workers: int, results_dir: Path | None, progress: bool, checkpoint_dir: Path | None = None
                ) -> dict[str, Any]:
    import torch
    from genrec.model.data import load_dataset

    ds = load_dataset(dataset, data_dir)
    todo = [(ds.name, data_dir, job, seed, run_cfg, results_dir, checkpoint_dir) for seed in seeds for job in jobs]
    per_seed: dict[int, dict[str, dict[str, Any]]] = {s: {} for s in seeds}
    if workers <= 1:
        for args in todo:
            per_seed[args[3]].update(run_job(*args[:6], progress, checkpoint_dir))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_job_star, a) for a in todo]
            for f in as_completed(futures):
                _job, seed, rows = f.result()
                per_seed[seed].update(rows)
    excl = bool(run_cfg["train"].get("eval_exclude_seen", True))
    result = aggregate(ds.name, per_seed, popular_row(ds.name, data_dir, excl))
    seen = "each user's seen items left out of the ranking" if excl else "seen items ranked too"
    result.update(protocol=f"leave-one-out by time, full ranking over all items ({seen}), test split; incl_*: "
                           "seen items ranked too", data=ds.summary(), config=run_cfg,
                  environment={"torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
                               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                               "machine": platform.machine(), "cpus": _cpus()})
    return result


def load_results(results_dir: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """Per-seed rows written by earlier jobs (`--results-dir`), e.g. to aggregate runs made on several machines."""
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for f in sorted(results_dir.glob("*-seed*.json")):
        d = json.loads(f.read_text())
        per_seed.setdefault(int(d["seed"]), {}).update(d["rows"])
    return per_seed


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def markdown_table(result: dict[str, Any]) -> str:
    """Rows × metrics, mean ± std over seeds, then the paired differences."""
    rows = result["rows"]
    cols = [c for c in (*METRICS, *(f"incl_{m}" for m in INCLUDE_SEEN)) if any(c in r for r in rows.values())]
    lines = ["| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [(f"{r[c]['mean']:.4f}" + (f" ± {r[c]['std']:.4f}" if r[c]["std"] else "")) if c in r else "—"
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result.get("paired"):
        lines += ["", "| paired difference | metric | mean | 95 % interval | verdict |", "|---|---|---|---|---|"]
        for name, p in result["paired"].items():
            lo, hi = p["ci95"]
            lines.append(f"| {name} | {p['metric']} | {p['mean_diff']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | "
                         f"{p.get('verdict', '—')} |")
    return "\n".join(lines)


def quality(
    dataset: Annotated[str, typer.Option("--dataset")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    seeds: Annotated[int, typer.Option(min=1, max=20, help="seeds per row (the preset's seed, +1, +2, …)")] = 1,
    config: Annotated[Path | None, typer.Option(help="JSON {model, train} over the preset (configs/…)")] = None,
    epochs: Annotated[int | None, typer.Option(help="cap on epochs per model (default: the preset's)")] = None,
    ablations: Annotated[str | None, typer.Option(
        help=f"comma-separated ablations of joint to train too: {', '.join(ABLATIONS)}")] = None,
    rows: Annotated[str, typer.Option(help="trained jobs: joint, pipeline (retrieval_only + ranking_only → "
                                           "two_model)")] = "joint,pipeline",
    jobs: Annotated[int, typer.Option(min=1, help="train this many models at once (processes, one thread each)")] = 1,
    results_dir: Annotated[Path | None, typer.Option(help="write each (job, seed)'s figures here as it ends")] = None,
    aggregate_only: Annotated[bool, typer.Option("--aggregate-only", help="train nothing: aggregate --results-dir")
                              ] = False,
    checkpoints: Annotated[Path | None, typer.Option(help="save each joint model here")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the JSON here (docs/bench/quality-<dataset>.json)")
                   ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = False,
) -> None:
    """The unified model against the pipeline it replaces, over seeds, with paired 95 % intervals (JSON last)."""
    from genrec.model.presets import preset

    t0 = time.perf_counter()
    base = preset(dataset.replace("amazon", "amazon-beauty") if dataset == "amazon" else dataset)
    run_cfg: dict[str, Any] = {"model": dict(base.model), "train": base.train.model_dump()}
    if config is not None:
        over = json.loads(config.read_text())
        run_cfg = {"model": {**run_cfg["model"], **over.get("model", {})},
                   "train": _merge(run_cfg["train"], over.get("train", {}))}
    if epochs is not None:
        run_cfg["train"]["epochs"] = epochs
    job_list = [r.strip() for r in rows.split(",") if r.strip()]
    job_list += [a.strip() for a in (ablations or "").split(",") if a.strip()]
    unknown = set(job_list) - set(BASE_JOBS) - set(ABLATIONS)
    if unknown:
        raise typer.BadParameter(f"unknown jobs {sorted(unknown)}; known: {[*BASE_JOBS, *ABLATIONS]}")
    seed_list = [int(run_cfg["train"]["seed"]) + i for i in range(seeds)]
    if aggregate_only:
        if results_dir is None:
            raise typer.BadParameter("--aggregate-only needs --results-dir")
        from genrec.model.data import load_dataset

        name = load_dataset(dataset, data_dir).name
        excl = bool(run_cfg["train"].get("eval_exclude_seen", True))
        result = aggregate(name, load_results(results_dir), popular_row(name, data_dir, excl))
        seen = "each user's seen items left out of the ranking" if excl else "seen items ranked too"
        result.update(protocol=f"leave-one-out by time, full ranking over all items ({seen}), test split; incl_*: "
                               "seen items ranked too", config=run_cfg, results_dir=str(results_dir))
    else:
        result = run_quality(dataset, data_dir, run_cfg, seed_list, job_list, jobs, results_dir, progress,
                             checkpoints)
    args = sys.argv[sys.argv.index("quality") + 1 :] if "quality" in sys.argv else sys.argv[1:]
    result["command"] = "genrec bench quality " + " ".join(args)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=1)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(markdown_table(result))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    bench_app.command("quality")(quality)


if __name__ == "__main__":  # `python -m genrec.ops.bench_quality …`: the same command without the CLI's Kafka imports
    typer.run(quality)
