"""`genrec bench quality`: the unified model, its ablations and trivial baselines, one data set, one run.

Every row is trained with the data set's preset (model/presets.py) and evaluated with the papers'
protocol (leave-one-out by time, full ranking over all items). Prints one JSON object last on stdout:
{"dataset", "rows": {"genrec": {...}, "popular": {...}, ...}, "serving": {...}, "environment": {...}}.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

# Ablations (ML-100K, where every module applies): name → (train overrides, model overrides).
ABLATIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "no_enhancer": ({"enhancer": {"enabled": False}}, {}),
    "static_weights": ({"weighter": {"mode": "static"}}, {}),
    "no_time_rope": ({}, {"time_rope": False}),
    # The ranker without its own inputs: no retrieval score β·s(u, i), no per-item bias.
    "plain_ranker": ({}, {"rank_retrieval_feature": False, "rank_item_bias": False}),
    "retrieval_only": ({"task": "retrieval"}, {}),
    "ranking_only": ({"task": "ranking"}, {}),
}
METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr", "auc", "gauc", "search_hr@10",
           "search_ndcg@10", "search_mrr")


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
    if rec.supports_queries:
        # Query encoding alone (the frozen text encoder, batched as the worker batches requests).
        queries = [f"{g} movie" for g in ("comedy", "drama", "action", "thriller")] * 16
        rec._encode_queries(queries[:2])  # loads the encoder
        for bs in batch_sizes:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                rec._encode_queries(queries[:bs])
                times.append((time.perf_counter() - t0) * 1000)
            out[f"query_encode_batch{bs}_ms_per_query"] = float(np.median(times)) / bs
    return out


def mean_std_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several seeds: the mean of every number, and `<metric>_std` (population) for metrics."""
    import numpy as np

    row: dict[str, Any] = {}
    for key in runs[0]:
        vals = np.asarray([r[key] for r in runs], np.float64)
        row[key] = round(float(vals.mean()), 5)
        if key in METRICS and len(runs) > 1:
            row[f"{key}_std"] = round(float(vals.std()), 5)
    row["seeds"] = len(runs)
    return row


def run_quality(dataset: str, data_dir: Path | None, epochs: int | None, ablations: bool,
                out_dir: Path | None, progress: bool, search: bool = False, text_encoder: str = "minilm",
                seeds: int = 1, only: list[str] | None = None) -> dict[str, Any]:
    import torch

    from model.baselines import evaluate_popularity
    from model.checkpoint import save_checkpoint
    from model.config import TrainConfig
    from model.data import load_dataset, train_popularity
    from model.presets import preset
    from model.serving import Recommender
    from model.train import fit_and_test

    ds = load_dataset(dataset, data_dir)
    base = preset(ds.name)
    base_train = base.train.model_dump()
    if epochs is not None:
        base_train["epochs"] = epochs
    excl = bool(base_train["eval_exclude_seen"])  # the baselines follow the trained rows' protocol
    search_data = None
    variants: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {"genrec": ({}, {})}
    if search:
        from model.search import search_data_for

        base_train["search"] = {**base_train["search"], "enabled": True, "encoder": text_encoder}
        sc = base_train["search"]
        search_data = search_data_for(ds, data_dir, text_encoder, sc["share"], sc["noise"], sc["seed"])
        # The same model without queries, evaluated on the same search targets (its recommendations).
        variants["rec_only"] = ({"search": {"enabled": False}}, {})
    if ablations and ds.has_feedback:
        variants.update(ABLATIONS)
    if only:
        unknown = set(only) - set(variants)
        if unknown:
            raise typer.BadParameter(f"unknown rows {sorted(unknown)}; this run has {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in only}
    rows: dict[str, dict[str, Any]] = {}
    serving: dict[str, Any] = {}
    for name, (t_over, m_over) in variants.items():
        runs = []
        for i in range(seeds):
            tcfg = TrainConfig(**_merge({**base_train, "seed": base_train["seed"] + i}, t_over))
            typer.echo(f"[bench quality] {ds.name}: training {name} (seed {tcfg.seed}) …", err=True)
            t0 = time.perf_counter()
            res, test = fit_and_test(ds, tcfg, progress=progress, search=search_data, **{**base.model, **m_over})
            run = {k: round(v, 5) for k, v in test.items() if k in METRICS}
            run.update(best_epoch=res.best_epoch, epochs_run=res.epochs_run,
                       train_seconds=round(res.train_seconds, 1), wall_seconds=round(time.perf_counter() - t0, 1),
                       train_tokens_per_s=round(res.tokens_per_s))
            typer.echo(f"[bench quality] {name} seed {tcfg.seed}: {json.dumps(run)}", err=True)
            runs.append(run)
        rows[name] = runs[0] if seeds == 1 else mean_std_row(runs)
        if name == "genrec":
            path = save_checkpoint((out_dir or Path("runs")) / f"bench-{ds.name}", res.model, ds.item_ids,
                                   dataset=ds.name, train_config=tcfg.model_dump(), metrics={"test": test},
                                   extra_meta={"item_popularity": train_popularity(ds).tolist(),
                                               **({"text_encoder": text_encoder} if search else {})})
            serving = serving_latency(Recommender.from_checkpoint(path, device="cpu"), ds)
    if search_data is not None:
        from model.metrics import ranking_metrics
        from model.search import text_only_ranks

        text = ranking_metrics(text_only_ranks(search_data, ds, "test", excl))
        rows["text_only"] = {f"search_{k}": round(v, 5) for k, v in text.items() if f"search_{k}" in METRICS}
    rows["popular"] = {k: round(v, 5) for k, v in evaluate_popularity(ds, exclude_seen=excl).items() if k in METRICS}
    rows["recent_popular"] = {k: round(v, 5) for k, v in
                              evaluate_popularity(ds, recent_share=0.1, exclude_seen=excl).items() if k in METRICS}
    seen = "each user's seen items left out of the ranking" if excl else "seen items ranked too"
    return {"dataset": ds.name, "protocol": f"leave-one-out by time, full ranking over all items ({seen}), test split",
            "data": ds.summary(), "rows": rows, "serving": serving,
            "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "machine": platform.machine(), "cpus": _cpus()}}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def markdown_table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    cols = [c for c in METRICS if any(c in r for r in rows.values())]
    extra = ["best_epoch", "train_seconds", "train_tokens_per_s"]
    lines = ["| row | " + " | ".join(cols + extra) + " |", "|---" * (len(cols) + len(extra) + 1) + "|"]
    for name, r in rows.items():
        cells = [(f"{r[c]:.4f}" + (f" ± {r[c + '_std']:.4f}" if c + "_std" in r else "")) if c in r else "—"
                 for c in cols] + [str(r.get(c, "—")) for c in extra]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_benchmarks(section: str, body: str, path: Path = Path("BENCHMARKS.md")) -> None:
    """Replace the text between `<!-- bench:SECTION -->` markers (append the section if absent)."""
    start, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def quality(
    dataset: Annotated[str, typer.Option("--dataset")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    epochs: Annotated[int | None, typer.Option(help="cap on epochs per row (default: the preset's)")] = None,
    ablations: Annotated[bool, typer.Option("--ablations/--no-ablations")] = True,
    out_dir: Annotated[Path | None, typer.Option(help="where the genrec row's checkpoint goes (default runs/)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    update: Annotated[bool, typer.Option("--update-benchmarks", help="write the table into BENCHMARKS.md")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = False,
    search: Annotated[bool, typer.Option("--search/--no-search", help="add search rows")] = False,
    text_encoder: Annotated[str, typer.Option(help="minilm | hashed")] = "minilm",
    seeds: Annotated[int, typer.Option(min=1, max=10, help="train every row with this many seeds; mean ± std")] = 1,
    rows: Annotated[str | None, typer.Option(help="comma-separated trained rows to run (default: all)")] = None,
) -> None:
    """Quality of the unified model vs ablations and baselines (one JSON object last on stdout)."""
    t0 = time.perf_counter()
    only = [r.strip() for r in rows.split(",") if r.strip()] if rows else None
    result = run_quality(dataset, data_dir, epochs, ablations, out_dir, progress, search, text_encoder, seeds, only)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if update:
        cmd = "genrec bench quality " + " ".join(sys.argv[sys.argv.index("quality") + 1 :])
        title = result["dataset"] + (" (search + recommendation)" if search else "") + (
            f" ({seeds} seeds)" if seeds > 1 else "")
        body = (f"### Quality — {title}\n\nCommand: `{cmd}` ({result['wall_seconds']} s wall, "
                f"{result['environment']['cpus']} CPUs, torch {result['environment']['torch']}). "
                f"Protocol: {result['protocol']}."
                + (f" Mean ± std over {seeds} seeds." if seeds > 1 else "")
                + f"\n\n{markdown_table(result)}\n\n"
                f"Serving latency (CPU, k=10, K'={result['serving'].get('k_prime')}): "
                f"batch 1 {result['serving'].get('batch1_ms', float('nan')):.1f} ms/request, batch 64 "
                f"{result['serving'].get('batch64_ms_per_request', float('nan')):.2f} ms/request."
                + (f" Query encoding ({result['serving'].get('text_encoder', text_encoder)}): batch 1 "
                   f"{result['serving']['query_encode_batch1_ms_per_query']:.1f} ms/query, batch 64 "
                   f"{result['serving']['query_encode_batch64_ms_per_query']:.2f} ms/query."
                   if "query_encode_batch1_ms_per_query" in result["serving"] else ""))
        section = f"quality:{result['dataset']}" + (":search" if search else "") + (":seeds" if seeds > 1 else "")
        update_benchmarks(section, body)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(markdown_table(result))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    bench_app.command("quality")(quality)
