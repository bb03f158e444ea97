"""PNG figures of the benchmarks and of training (issue 20 item 8): small functions from plain data to a file.

- `latency_cdf`: end-to-end request latency per offered rate (`genrec bench stream --plot`);
- `scale_throughput`: replicas against requests/s, p99 on a second axis (`genrec bench scale --plot`);
- `training_curves`: loss and validation figures per epoch from `fit`'s history (`genrec train --plot`);
- `prequential`: frozen vs online NDCG@10 per window, and online − frozen with its 95 % band
  (`genrec bench online --plot`).

matplotlib is the optional `bench` extra. A command with `--plot` calls `check_matplotlib` before its work, so a
missing extra costs a second, not a run. Each PNG carries its own caption as PNG text chunks (`Title`: what it
shows, `Command`: how it was made, `Creation Time`: the date, `Comment`: the machine and the data); `png_text`
reads them back without matplotlib, and `python -m genrec.ops.bench_summary` lists every docs/bench/*.png with
them. Figures from saved data, without a rerun:

    python -m genrec.ops.plots online docs/bench/online-ml-100k.json --out docs/bench/online-ml-100k.png
    python -m genrec.ops.plots train runs/ckpt-ml100k --out docs/bench/train-ml-100k.png
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import struct
import sys
import textwrap
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MISSING = "--plot needs matplotlib: pip install 'genrec[bench]'"
Z95 = 1.959964
DPI = 110


class MatplotlibMissing(RuntimeError):
    """matplotlib is not installed (it comes with the `bench` extra)."""


def require_matplotlib() -> Any:
    """matplotlib, or an error naming the extra that brings it (it is not a core dependency: only plots need it)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MatplotlibMissing(MISSING) from exc
    return matplotlib


def check_matplotlib(prog: str) -> None:
    """For a command's `--plot`, before any of its work: without matplotlib, say so and exit with status 1."""
    try:
        require_matplotlib()
    except MatplotlibMissing as exc:
        print(f"{prog}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from exc


def invoked_command() -> str:
    """The `genrec …` command line of this process ('' when it is not the genrec CLI, e.g. under pytest)."""
    name = Path(sys.argv[0]).name if sys.argv else ""
    if name in ("genrec", "cli.py"):  # the entry point, or `python -m genrec.ops.cli`
        return "genrec " + shlex.join(sys.argv[1:])
    return ""


def today() -> str:
    return time.strftime("%Y-%m-%d")


def _pyplot() -> Any:
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heading(title: str, subtitle: str, width: int = 90) -> str:
    return "\n".join([title, *textwrap.wrap(subtitle, width)])


def _save(fig: Any, path: Path, *, title: str, command: str, note: str, subtitle: str = "") -> Path:
    """Footer (command, date, note), caption chunks (the subtitle drawn under the title is part of the
    `Comment`: it names the machine and how busy it was), then the file."""
    date = today()
    width = int(fig.get_figwidth() * 18)  # characters of 7 pt text across the figure
    lines = [ln for x in (f"{command}  ({date})" if command else date, note) if x for ln in textwrap.wrap(x, width)]
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=7, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, (0.125 * len(lines) + 0.05) / fig.get_figheight(), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = "; ".join(x for x in (subtitle, note) if x)
    meta = {"Title": title, "Command": command or None, "Creation Time": date, "Comment": comment or None}
    fig.savefig(path, dpi=DPI, metadata=meta)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def png_text(path: Path) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file as {keyword: text}; {} for a file that is not a PNG."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return {}
    out: dict[str, str] = {}
    i = 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + length]
        i += 12 + length
        if kind == b"IEND":
            break
        try:
            if kind == b"tEXt":
                key, _, text = body.partition(b"\0")
                out[key.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                out[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
        except (IndexError, zlib.error, UnicodeDecodeError):
            continue
    return out


# ------------------------------------------------------------------------ stream: latency CDF


def latency_cdf(samples: Mapping[float, Sequence[float]], path: Path, *, title: str, subtitle: str = "",
                command: str = "", note: str = "", target_ms: float | None = None) -> Path:
    """One empirical CDF of end-to-end latency (ms, log axis) per offered rate (req/s)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.6))
    for rate in sorted(samples):
        xs = sorted(float(x) for x in samples[rate])
        if not xs:
            ax.plot([], [], label=f"{rate:g} req/s: no answers")
            continue
        n = len(xs)
        p99 = xs[min(n - 1, math.ceil(0.99 * n) - 1)]
        ax.step(xs, [(i + 1) / n for i in range(n)], where="post",
                label=f"{rate:g} req/s (n={n:,}, p50 {xs[(n - 1) // 2]:.0f} ms, p99 {p99:.0f} ms)")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axhline(0.99, color="0.5", lw=0.8, ls=":", label="99 % of requests")
    if target_ms is not None:
        ax.axvline(target_ms, color="tab:red", lw=0.8, ls="--", label=f"p99 target {target_ms:g} ms")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("end-to-end latency, request sent → result received (ms, log scale)")
    ax.set_ylabel("share of requests answered within")
    ax.set_title(_heading(title, subtitle), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the curves, never over them
    return _save(fig, path, title=title, command=command, note=note, subtitle=subtitle)


# ------------------------------------------------------------------------ scale: replicas vs throughput


def scale_throughput(replicas: Sequence[int], requests_per_s: Sequence[float], path: Path, *, title: str,
                     subtitle: str = "", p99_ms: Sequence[float | None] | None = None, command: str = "",
                     note: str = "") -> Path:
    """Requests/s per replica count; p99 (ms) on a second axis when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.plot(replicas, requests_per_s, marker="o", color="tab:blue", label="requests/s (answered / span)")
    for r, v in zip(replicas, requests_per_s, strict=True):
        ax.annotate(f"{v:g}", (r, v), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xticks(list(replicas))
    ax.set_xlabel("worker replicas")
    ax.set_ylabel("requests/s", color="tab:blue")
    ax.set_ylim(0, max(requests_per_s, default=1.0) * 1.2)
    handles, labels = ax.get_legend_handles_labels()
    if p99_ms is not None and any(p is not None for p in p99_ms):
        ax2 = ax.twinx()
        ax2.plot(replicas, [math.nan if p is None else p for p in p99_ms], marker="s", ls="--", color="tab:orange",
                 label="p99 ms (of the backlog: its drain)")
        ax2.set_ylabel("p99 ms", color="tab:orange")
        ax2.set_ylim(0, max(p for p in p99_ms if p is not None) * 1.2)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title(_heading(title, subtitle), fontsize=10)
    return _save(fig, path, title=title, command=command, note=note, subtitle=subtitle)


# ------------------------------------------------------------------------ train: loss and validation per epoch

VALID_KEYS = ("valid_served_ndcg@10", "valid_ndcg@10", "valid_hr@10")
VALID_RANK_KEYS = ("valid_auc", "valid_gauc")


def training_curves(history: Sequence[Mapping[str, float]], path: Path, *, title: str,
                    best_epoch: int | None = None, command: str = "", note: str = "") -> Path:
    """Training losses (left) and validation figures (right) per epoch; the kept epoch marked."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    epochs = [int(r["epoch"]) for r in history]
    losses = [k for k in (history[0] if history else {}) if k.startswith("loss")]
    for k in losses:
        left.plot(epochs, [r.get(k, math.nan) for r in history], marker="o", ms=3,
                  label={"loss": "total (weighted)", "loss_ret": "retrieval", "loss_rank": "ranking"}.get(k, k))
    left.set_xlabel("epoch")
    left.set_ylabel("mean training loss per batch")
    left.set_title("training loss", fontsize=10)
    valid = [k for k in VALID_KEYS if any(k in r for r in history)]
    rank = [k for k in VALID_RANK_KEYS if any(k in r for r in history)]
    for k in valid:
        right.plot(epochs, [r.get(k, math.nan) for r in history], marker="o", ms=3, label=k.removeprefix("valid_"))
    right.set_xlabel("epoch")
    right.set_ylabel("validation (leave-one-out, full ranking)")
    right.set_title("validation", fontsize=10)
    handles, labels = right.get_legend_handles_labels()
    if rank:
        twin = right.twinx()
        for k, color in zip(rank, ("tab:purple", "tab:brown"), strict=False):  # not the left axis' colours
            twin.plot(epochs, [r.get(k, math.nan) for r in history], ls="--", marker=".", color=color,
                      label=k.removeprefix("valid_"))
        twin.set_ylabel("AUC / GAUC (dashed)")
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if not valid and not rank:
        right.text(0.5, 0.5, "no validation (a refit trains on the validation targets)", ha="center",
                   va="center", transform=right.transAxes, fontsize=9)
    for ax in (left, right):
        if best_epoch:
            ax.axvline(best_epoch, color="0.4", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: math.ceil(len(epochs) / 20)])
    if best_epoch:
        handles.append(right.axvline(best_epoch, color="0.4", lw=0.8, ls=":"))
        labels.append(f"kept epoch ({best_epoch})")
    left.legend(fontsize=8)
    if handles:
        right.legend(handles, labels, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, title=title, command=command, note=note)


# ------------------------------------------------------------------------ online: the prequential curve and its band

EXACT = "exact"
POOLED = "pooled"


def window_intervals(windows: Sequence[Mapping[str, Any]], overall: Mapping[str, Any] | None = None,
                     requests: int | None = None) -> tuple[list[tuple[float, float, float] | None], str | None]:
    """Per window, online − frozen NDCG@10 and its 95 % interval as (mean, lo, hi) (None for an empty window),
    and how the interval was made:

    - `exact`: every scored window carries `online_minus_frozen_ndcg@10` (runs since this change): a paired
      bootstrap over that window's requests;
    - `pooled`: older JSON keeps only window means: a normal interval whose spread is the whole run's paired
      spread (recovered from its bootstrap interval over `requests` requests) applied to each window's count —
      it assumes the per-request spread of online − frozen is the same in every window;
    - None: neither is there (means, no band).
    """
    means = [(w["online_ndcg@10"] - w["frozen_ndcg@10"]) if w.get("requests") and w.get("online_ndcg@10")
             is not None and w.get("frozen_ndcg@10") is not None else None for w in windows]
    scored = [w for w, m in zip(windows, means, strict=True) if m is not None]
    if scored and all("ci95_paired_bootstrap" in (w.get("online_minus_frozen_ndcg@10") or {}) for w in scored):
        out: list[tuple[float, float, float] | None] = []
        for w, m in zip(windows, means, strict=True):
            if m is None:
                out.append(None)
                continue
            d = w["online_minus_frozen_ndcg@10"]
            lo, hi = d["ci95_paired_bootstrap"]
            out.append((float(d.get("mean", m)), float(lo), float(hi)))
        return out, EXACT
    ci = (overall or {}).get("ci95_paired_bootstrap")
    if ci and requests:
        sd = (ci[1] - ci[0]) / (2 * Z95) * math.sqrt(requests)
        out = []
        for w, m in zip(windows, means, strict=True):
            half = Z95 * sd / math.sqrt(w["requests"]) if m is not None else 0.0
            out.append(None if m is None else (m, m - half, m + half))
        return out, POOLED
    return [None if m is None else (m, m, m) for m in means], None


BAND_TEXT = {
    EXACT: "95 % paired bootstrap over each window's requests",
    POOLED: "95 % per window from the whole run's paired spread (the JSON keeps window means only)",
}


def prequential(windows: Sequence[Mapping[str, Any]], path: Path, *, title: str, subtitle: str = "",
                overall: Mapping[str, Any] | None = None, requests: int | None = None,
                retrain_every: int | None = None, command: str = "", note: str = "") -> Path:
    """Top: NDCG@10 per window of the replayed timeline, frozen vs online (vs retrained). Bottom: online − frozen
    per window with its 95 % band (`window_intervals`) and the whole run's paired interval."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.4), sharex=True, height_ratios=(3, 2))
    x = list(range(1, len(windows) + 1))
    curves = [("frozen_ndcg@10", "frozen"), ("online_ndcg@10", "online fine-tuned")]
    if windows and "retrain_ndcg@10" in windows[0]:
        curves.append(("retrain_ndcg@10", f"retrained from scratch every {retrain_every} waves"))
    for key, label in curves:
        top.plot(x, [math.nan if w.get(key) is None else w[key] for w in windows], marker="o", label=label)
    top.set_ylabel("NDCG@10 (next click)")
    top.set_title(_heading(title, subtitle), fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    intervals, kind = window_intervals(windows, overall, requests)
    mid = [math.nan if iv is None else iv[0] for iv in intervals]
    lo = [math.nan if iv is None else iv[1] for iv in intervals]
    hi = [math.nan if iv is None else iv[2] for iv in intervals]
    bottom.axhline(0.0, color="0.3", lw=0.8)
    if kind is not None:
        bottom.fill_between(x, lo, hi, color="tab:orange", alpha=0.25, lw=0, label=BAND_TEXT[kind])
    bottom.plot(x, mid, marker="o", color="tab:orange", label="online − frozen, window mean")
    ci = (overall or {}).get("ci95_paired_bootstrap")
    if ci and "mean" in (overall or {}):
        assert overall is not None
        bottom.axhspan(ci[0], ci[1], color="0.5", alpha=0.2, lw=0,
                       label=f"whole run: {overall['mean']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] (paired bootstrap)")
    bottom.set_ylabel("online − frozen NDCG@10")
    bottom.set_xlabel("window of the replayed last 30 % of events (time order; each window the same number "
                      "of events)")
    bottom.set_xticks(x)
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=7, loc="best")
    note = "; ".join(x for x in (f"band: {BAND_TEXT[kind]}" if kind else "", note) if x)
    return _save(fig, path, title=title, command=command, note=note, subtitle=subtitle)


def prequential_from_result(result: Mapping[str, Any], path: Path, *, command: str = "", note: str = "") -> Path:
    """`prequential` of one `genrec bench online` result (its JSON)."""
    subtitle = (f"{result.get('requests', 0):,} requests scored before any model learned from their click; "
                f"vocabulary {result.get('vocabulary', 'full')}")
    return prequential(result.get("windows", []), path,
                       title=f"{result.get('dataset', '?')}: prequential NDCG@10, frozen vs online",
                       subtitle=subtitle, overall=result.get("online_minus_frozen_ndcg@10"),
                       requests=result.get("requests"), retrain_every=result.get("retrain_every_waves"),
                       command=command, note=note)


def training_curves_from_metrics(metrics: Mapping[str, Any], path: Path, *, dataset: str, command: str = "",
                                 note: str = "") -> Path:
    """`training_curves` of a checkpoint's metrics.json (`genrec train` keeps `history` and `best_epoch` there)."""
    history = metrics.get("history") or []
    best = metrics.get("best_epoch")
    secs = metrics.get("train_seconds")
    n = len(history)
    title = (f"genrec train, {dataset}: {n} epoch{'' if n == 1 else 's'}" + (f", kept epoch {best}" if best else "")
             + (f", {secs:.0f} s training" if isinstance(secs, (int, float)) else ""))
    return training_curves(history, path, title=title, best_epoch=best, command=command, note=note)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genrec.ops.plots", description="Figures from saved results.")
    sub = ap.add_subparsers(dest="what", required=True)
    on = sub.add_parser("online", help="the prequential curve and its band from a `genrec bench online` JSON")
    on.add_argument("json", type=Path)
    on.add_argument("--out", type=Path, required=True)
    tr = sub.add_parser("train", help="training curves from a checkpoint folder's metrics.json")
    tr.add_argument("checkpoint", type=Path)
    tr.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    check_matplotlib(ap.prog)
    command = f"{ap.prog} " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.what == "online":
        result = json.loads(args.json.read_text())
        data_cmd = result.get("command") or (f"genrec bench online --dataset {result.get('dataset', '?')} "
                                             "--data-dir ../shared/data --json")
        note = (f"data: {args.json.as_posix()} (`{data_cmd}`, {result.get('seconds', '?')} s run, broker "
                f"{result.get('broker', 'tansu')})")
        prequential_from_result(result, args.out, command=command, note=note)
    else:
        metrics = json.loads((args.checkpoint / "metrics.json").read_text())
        config = json.loads((args.checkpoint / "config.json").read_text())
        training_curves_from_metrics(metrics, args.out, dataset=str(config.get("dataset", "?")), command=command,
                                     note=f"data: {args.checkpoint.as_posix()}/metrics.json")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
