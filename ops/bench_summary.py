"""BENCHMARKS.md's summary table, generated from the committed JSON under docs/bench/.

`python -m genrec.ops.bench_summary` rewrites the block between `<!-- summary -->` and `<!-- /summary -->` at the top of
BENCHMARKS.md; `--check` writes nothing and exits 1 when that block is not what the JSON gives.

Sources:
- `docs/bench/quality-<dataset>.json` (`genrec bench quality … --out`, ops/bench_quality.py): one line per
  (data set, row), mean ± std over seeds, and the paired difference joint − that row with its 95 % interval;
- `docs/bench/chaos-<broker>.json` (`genrec bench chaos --json`, ops/bench_chaos.py, with a `command` key added):
  one line per broker;
- `docs/bench/online-<dataset>.json` (`genrec bench online --json`, ops/bench_online.py): one line per data set;
- any other JSON there is listed as a link;
- `docs/bench/*.png`: one line per figure, what it shows, the command that drew it and its date, read from the
  caption the figure carries (ops/plots.py writes it as PNG text chunks; `png_text` reads them).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

START = "<!-- summary -->"
END = "<!-- /summary -->"
ROW_ORDER = ("joint", "two_model", "retrieval_only", "ranking_only")
NONE = "—"


def _stat(row: dict[str, Any], metric: str) -> str:
    s = row.get(metric)
    if not isinstance(s, dict) or "mean" not in s:
        return NONE
    std = s.get("std") or 0.0
    return f"{s['mean']:.4f}" + (f" ± {std:.4f}" if len(s.get("values", [])) > 1 else "")


def _seeds(row: dict[str, Any]) -> str:
    seeds = row.get("seeds")
    if isinstance(seeds, list) and seeds:
        return f"{len(seeds)} ({', '.join(str(s) for s in seeds)})" if len(seeds) <= 5 else str(len(seeds))
    return NONE  # a row that does not depend on a seed (popular)


def _interval(p: dict[str, Any]) -> str:
    lo, hi = p.get("ci95", [math.nan, math.nan])
    if any(not isinstance(x, (int, float)) or math.isnan(x) for x in (lo, hi)):
        return f"{p['mean_diff']:+.4f} (one seed: no interval)"
    return f"{p['mean_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _paired_cell(paired: dict[str, Any], row: str) -> str:
    """Every paired difference whose second term is `row`: 'a − row' on a metric, its interval and verdict."""
    parts = []
    for key, p in paired.items():
        first, _, other = key.split(":", 1)[0].partition("-")
        if other != row:
            continue
        who = "" if first == "joint" else f"{first} − this, "
        metric = "" if p.get("metric") == "served_ndcg@10" else f"{p.get('metric')}: "
        verdict = p.get("verdict")
        said = f"{first} {verdict}" if verdict in ("higher", "lower") else (verdict or "")
        parts.append(f"{who}{metric}{_interval(p)} {said}".rstrip())
    return "; ".join(parts) or NONE


def _preset(result: dict[str, Any]) -> str:
    args = shlex.split(str(result.get("command", "")))
    out = f"`{result.get('dataset', '?')}` preset"
    for flag in ("--config", "--epochs"):
        if flag in args[:-1]:
            value = args[args.index(flag) + 1]
            out += f" + `{value}`" if flag == "--config" else f", ≤ {value} epochs"
    return out


def _protocol(result: dict[str, Any]) -> str:
    train = (result.get("config") or {}).get("train") or {}
    seen = "seen items left out" if train.get("eval_exclude_seen", True) else "seen items ranked"
    env = result.get("environment") or {}
    device = env.get("gpu") or {"cpu": "CPU", "cuda": "GPU"}.get(str(env.get("device")), env.get("device"))
    return f"leave-one-out, full ranking, {seen}" + (f"; {device}" if device else "")


def _order(names: list[str]) -> list[str]:
    first = [n for n in ROW_ORDER if n in names]
    rest = sorted(n for n in names if n not in ROW_ORDER and n != "popular")
    return first + rest + (["popular"] if "popular" in names else [])


def quality_lines(result: dict[str, Any], link: str) -> list[str]:
    rows: dict[str, dict[str, Any]] = result.get("rows", {})
    paired: dict[str, Any] = result.get("paired", {})
    command = f"`{result['command']}`" if result.get("command") else NONE
    out = []
    for i, name in enumerate(_order(list(rows))):
        r = rows[name]
        auc = " / ".join(_stat(r, m) for m in ("auc", "gauc")) if "auc" in r or "gauc" in r else NONE
        # Offline: `genrec bench quality` trains and evaluates without any broker.
        cells = [result.get("dataset", "?"), f"`{name}`", _preset(result), _protocol(result), "none (offline)",
                 _seeds(r),
                 _stat(r, "served_ndcg@10"), _stat(r, "served_hr@10"), _stat(r, "ndcg@10"),
                 _stat(r, "incl_served_ndcg@10"), auc, _paired_cell(paired, name),
                 command if i == 0 else "same run", f"[JSON]({link})"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def online_line(result: dict[str, Any], link: str) -> str:
    diff = result.get("online_minus_frozen_ndcg@10") or {}
    ci = diff.get("ci95_paired_bootstrap")
    if ci and "mean" in diff:
        verdict = "online higher" if ci[0] > 0 else "online lower" if ci[1] < 0 else "tie"
        paired = f"{diff['mean']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] {verdict}"
    else:
        paired = NONE
    dataset = result.get("dataset", "?")
    command = result.get("command") or f"genrec bench online --dataset {dataset} --data-dir ../shared/data --json"
    trainer, delay = result.get("trainer") or {}, result.get("delay") or {}
    # Runs before the field was recorded all used the embedded broker (ops/bench_online.py starts Tansu).
    cells = [dataset, result.get("broker") or "tansu", f"{result.get('requests', 0):,}",
             f"{result['frozen_ndcg@10']:.4f} / {result['frozen_hr@10']:.4f}",
             f"{result['online_ndcg@10']:.4f} / {result['online_hr@10']:.4f}", paired,
             f"{trainer['rows_per_s']:g}" if "rows_per_s" in trainer else NONE,
             f"{delay['event_to_publish_s_mean']:g} s" if "event_to_publish_s_mean" in delay else NONE,
             f"`{command}`", f"[JSON]({link})"]
    return "| " + " | ".join(cells) + " |"


def chaos_line(result: dict[str, Any], link: str) -> str:
    settings = result.get("settings") or {}
    rec, lat = result.get("first_answer_after_restart_s") or {}, result.get("request_latency_s") or {}

    def sec(x: Any) -> str:
        return f"{x:g} s" if isinstance(x, (int, float)) else NONE

    cells = [result.get("broker") or settings.get("broker") or "tansu", str(result.get("runs", 0)),
             str(result.get("kills", 0)), f"{settings.get('rate', 0) / 2:g}",
             f"{result.get('lost_requests', 0)} / {result.get('requests', 0):,}",
             f"{result.get('lost_events', 0)} / {result.get('events', 0):,}", str(result.get("duplicated_events", 0)),
             f"{sec(rec.get('p50'))} / {sec(rec.get('max'))}", f"{sec(lat.get('p99'))}",
             f"`{result.get('command', 'genrec bench chaos --json')}`", f"[JSON]({link})"]
    return "| " + " | ".join(cells) + " |"


def figure_line(path: Path, link: str) -> str:
    """`- [what](link): `command`, date; note` from the figure's own caption (its name alone without one)."""
    from genrec.ops.plots import png_text

    meta = png_text(path)
    what = meta.get("Title") or path.name
    parts = [f"`{meta['Command']}`" if meta.get("Command") else "", meta.get("Creation Time", "")]
    said = ", ".join(x for x in parts if x)
    note = meta.get("Comment", "")
    return f"- [{what}]({link})" + (f": {said}" if said else "") + (f"; {note}" if note else "") + "."


def render(bench_dir: Path, root: Path) -> str:
    """The whole block, markers included; links are relative to `root` (the folder of BENCHMARKS.md)."""

    def link(p: Path) -> str:
        return p.resolve().relative_to(root.resolve()).as_posix()

    files = sorted(bench_dir.glob("*.json"))
    quality = [f for f in files if f.name.startswith("quality-")]
    online = [f for f in files if f.name.startswith("online-")]
    chaos = [f for f in files if f.name.startswith("chaos-")]
    other = [f for f in files if f not in quality and f not in online and f not in chaos]
    figures = sorted(bench_dir.glob("*.png"))
    lines = [START,
             "<!-- generated by `python -m genrec.ops.bench_summary` from docs/bench/*.json and *.png; do not edit by "
             "hand -->", ""]
    if figures:
        lines += ["**Figures**: what each shows, the command that drew it, its date, and the machine or data it "
                  "came from (the caption each PNG carries).", ""]
        lines += [figure_line(f, link(f)) for f in figures]
        lines.append("")
    lines += ["**Quality**: test split, served order (the retrieval top-K′ re-ordered by the serving key, as the "
             "worker serves it) and the retrieval head alone; mean ± std over seeds; paired differences over the "
             "same seeds, Student-t 95 % interval, a verdict only where it excludes 0.", ""]
    if quality:
        lines += ["| data set | row | preset | protocol | broker | seeds | served NDCG@10 | served HR@10 | "
                  "retrieval-head NDCG@10 | served NDCG@10, seen ranked | AUC / GAUC | "
                  "joint − this row (served NDCG@10 unless named), 95 % CI | command | JSON |",
                  "|---" * 14 + "|"]
        for f in quality:
            lines += quality_lines(json.loads(f.read_text()), link(f))
    else:
        lines.append(f"No `{link(bench_dir)}/quality-*.json` is committed yet (`genrec bench quality … --out "
                     f"{link(bench_dir)}/quality-<dataset>.json`).")
    if online:
        lines += ["", "**Online learning** (`genrec bench online`): the last 30 % of events replayed in waves; each "
                  "request scored against its click before any model learned from it; paired bootstrap over "
                  "requests.", "",
                  "| data set | broker | requests | frozen NDCG@10 / HR@10 | online NDCG@10 / HR@10 | "
                  "online − frozen NDCG@10, 95 % CI | trainer rows/s | event → published model | command | JSON |",
                  "|---" * 10 + "|"]
        lines += [online_line(json.loads(f.read_text()), link(f)) for f in online]
    if chaos:
        lines += ["", "**Kill and restart** (`genrec bench chaos`, RELIABILITY.md): seeded runs on fresh brokers, each "
                  "worker SIGKILLed and restarted at once on its state folder (the first kill before its first "
                  "commit); requests/s is half the records/s offered.", "",
                  "| broker | runs | kills | requests/s | lost requests | lost events | duplicated events | "
                  "kill → first answer p50 / max | request latency p99 | command | JSON |",
                  "|---" * 11 + "|"]
        lines += [chaos_line(json.loads(f.read_text()), link(f)) for f in chaos]
    if other:
        lines += ["", "Other JSON: " + ", ".join(f"[{f.name}]({link(f)})" for f in other) + "."]
    return "\n".join([*lines, END])


def replace_block(text: str, block: str) -> str:
    """`text` with its summary block replaced by `block`; without one, `block` goes after the first heading."""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        return head + block + rest.split(END, 1)[1]
    first, _, rest = text.partition("\n")
    if first.startswith("#"):
        return f"{first}\n\n{block}\n\n{rest.lstrip(chr(10))}"
    return f"{block}\n\n{text}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genrec.ops.bench_summary", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if BENCHMARKS.md is not current")
    ap.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--bench-dir", type=Path, default=Path("docs/bench"))
    args = ap.parse_args(argv)
    text = args.benchmarks.read_text()
    new = replace_block(text, render(args.bench_dir, args.benchmarks.parent))
    if args.check:
        if new != text:
            print(f"{args.benchmarks}: the summary is not current; run `python -m genrec.ops.bench_summary`",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.benchmarks.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
