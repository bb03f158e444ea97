"""`python -m genrec.ops.bench_summary`: BENCHMARKS.md's summary table, generated from docs/bench/*.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from genrec.ops.bench_summary import END, START, main

ROOT = Path(__file__).resolve().parents[2]


def _stat(*values: float) -> dict[str, object]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": round(mean, 5), "std": round(std, 5), "values": list(values)}


def _quality() -> dict[str, object]:
    """A two-seed `genrec bench quality --out` result, in the shape ops/bench_quality.py `aggregate` writes."""
    served = {"served_ndcg@10": _stat(0.0999, 0.0921), "served_hr@10": _stat(0.1877, 0.1750),
              "ndcg@10": _stat(0.0969, 0.0930), "incl_served_ndcg@10": _stat(0.0597, 0.0551)}
    return {
        "dataset": "ml-100k", "seeds": [42, 43],
        "rows": {
            "popular": {"served_ndcg@10": _stat(0.0449), "served_hr@10": _stat(0.0859), "ndcg@10": _stat(0.0449)},
            "retrieval_only": {"served_ndcg@10": _stat(0.0781, 0.0800), "served_hr@10": _stat(0.1697, 0.1700),
                               "ndcg@10": _stat(0.0781, 0.0800), "seeds": [42, 43]},
            "joint": {**served, "auc": _stat(0.7817, 0.7900), "gauc": _stat(0.6766, 0.6800), "seeds": [42, 43],
                      "serving_order": ["joint", "joint"]},
            "two_model": {"served_ndcg@10": _stat(0.0828, 0.0850), "served_hr@10": _stat(0.1739, 0.1700),
                          "ndcg@10": _stat(0.0781, 0.0800), "seeds": [42, 43]},
            "ranking_only": {"auc": _stat(0.7951, 0.8000), "gauc": _stat(0.6733, 0.6900), "seeds": [42, 43]},
        },
        "paired": {
            "joint-two_model": {"metric": "served_ndcg@10", "seeds": [42, 43], "mean_diff": 0.0121,
                                "ci95": [0.0023, 0.0219], "n": 2, "verdict": "higher"},
            "joint-two_model:gauc": {"metric": "gauc", "seeds": [42, 43], "mean_diff": 0.0017,
                                     "ci95": [-0.02, 0.0234], "n": 2, "verdict": "tie"},
            "joint-retrieval_only": {"metric": "served_ndcg@10", "seeds": [42, 43], "mean_diff": 0.017,
                                     "ci95": [-0.01, 0.044], "n": 2, "verdict": "tie"},
        },
        "config": {"model": {"n_layers": 2}, "train": {"eval_exclude_seen": True, "seed": 42}},
        "command": "genrec bench quality --dataset ml-100k --data-dir ../shared/data --seeds 2 --config "
                   "configs/ml-100k.json --out docs/bench/quality-ml-100k.json",
        "environment": {"torch": "2.13.0+cpu", "device": "cpu", "gpu": None, "cpus": 2},
        "protocol": "leave-one-out by time, full ranking over all items (each user's seen items left out of the "
                    "ranking), test split; incl_*: seen items ranked too",
    }


def _online() -> dict[str, object]:
    return {"dataset": "ml-100k", "requests": 704, "frozen_ndcg@10": 0.04906, "online_ndcg@10": 0.05184,
            "frozen_hr@10": 0.1179, "online_hr@10": 0.11648,
            "online_minus_frozen_ndcg@10": {"mean": 0.00278, "ci95_paired_bootstrap": [-0.0029, 0.0087]},
            "trainer": {"rows_per_s": 64.8}, "delay": {"event_to_publish_s_mean": 160.2}}


def _tree(tmp_path: Path, quality: bool = True) -> tuple[Path, Path]:
    bench = tmp_path / "docs" / "bench"
    bench.mkdir(parents=True)
    if quality:
        (bench / "quality-ml-100k.json").write_text(json.dumps(_quality()))
    (bench / "online-ml-100k.json").write_text(json.dumps(_online()))
    (bench / "order-ml-100k.json").write_text("{}")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nHow to reproduce.\n")
    return md, bench


def _block(md: Path) -> str:
    text = md.read_text()
    return text[text.index(START): text.index(END)]


def test_the_table_is_written_under_the_title_and_check_passes_only_when_current(tmp_path: Path) -> None:
    md, bench = _tree(tmp_path)
    args = ["--benchmarks", str(md), "--bench-dir", str(bench)]
    assert main([*args, "--check"]) == 1  # no block yet
    assert main(args) == 0
    text = md.read_text()
    assert text.startswith(f"# Benchmarks\n\n{START}\n") and text.rstrip().endswith("How to reproduce.")
    block = _block(md)
    lines = [ln for ln in block.splitlines() if ln.startswith("| ml-100k | `")]
    assert [ln.split(" | ")[1] for ln in lines] == ["`joint`", "`two_model`", "`retrieval_only`",
                                                   "`ranking_only`", "`popular`"]
    joint, two_model, retrieval_only, ranking_only, popular = lines
    assert "| `ml-100k` preset + `configs/ml-100k.json` | leave-one-out, full ranking, seen items left out; CPU |" \
        in joint
    assert "| 2 (42, 43) |" in joint
    assert "| none (offline) | 2 (42, 43) |" in joint  # quality runs use no broker
    assert "| 0.0960 ± 0.0055 | 0.1814 ± 0.0090 | 0.0950 ± 0.0028 | 0.0574 ± 0.0032 |" in joint
    assert "`genrec bench quality --dataset ml-100k" in joint and "same run" in two_model
    assert "[JSON](docs/bench/quality-ml-100k.json)" in popular
    assert "+0.0121 [+0.0023, +0.0219] joint higher; gauc: +0.0017 [-0.0200, +0.0234] tie" in two_model
    assert "+0.0170 [-0.0100, +0.0440] tie" in retrieval_only
    assert "| — | — | — | — | 0.7975 ± 0.0035 / 0.6816 ± 0.0118 |" in ranking_only
    assert "| 0.0449 | 0.0859 |" in popular  # one value: no ± 0
    assert "| ml-100k | tansu | 704 | 0.0491 / 0.1179 | 0.0518 / 0.1165 | +0.0028 [-0.0029, +0.0087] tie |" in block
    assert "[order-ml-100k.json](docs/bench/order-ml-100k.json)" in block
    assert main([*args, "--check"]) == 0
    main(args)  # a second run changes nothing
    assert md.read_text() == text
    md.write_text(text.replace("0.0960 ± 0.0055", "0.0999"))  # a hand edit inside the block
    assert main([*args, "--check"]) == 1
    main(args)
    assert md.read_text() == text


def test_without_quality_json_the_table_lists_what_exists(tmp_path: Path) -> None:
    md, bench = _tree(tmp_path, quality=False)
    assert main(["--benchmarks", str(md), "--bench-dir", str(bench)]) == 0
    block = _block(md)
    assert "No `docs/bench/quality-*.json` is committed yet" in block
    assert "| ml-100k | tansu | 704 |" in block


def test_the_committed_benchmarks_md_is_current_with_the_committed_json() -> None:
    assert main(["--check", "--benchmarks", str(ROOT / "BENCHMARKS.md"), "--bench-dir",
                 str(ROOT / "docs" / "bench")]) == 0, \
        "run `python -m genrec.ops.bench_summary` and commit BENCHMARKS.md"


def test_a_chaos_soak_gets_a_row_with_its_losses_and_recovery() -> None:
    from genrec.ops.bench_summary import chaos_line

    result = {"runs": 2, "kills": 4, "requests": 100, "events": 90, "lost_requests": 0, "lost_events": 1,
              "duplicated_events": 0, "settings": {"rate": 80.0, "broker": "kafka"},
              "first_answer_after_restart_s": {"p50": 2.5, "max": 4.0}, "request_latency_s": {"p99": None},
              "command": "genrec bench chaos --broker kafka --json"}
    cells = [c.strip() for c in chaos_line(result, "docs/bench/chaos-kafka.json").strip("|").split("|")]
    assert cells[:9] == ["kafka", "2", "4", "40", "0 / 100", "1 / 90", "0", "2.5 s / 4 s", "—"]
    assert cells[-1] == "[JSON](docs/bench/chaos-kafka.json)"


def test_every_figure_gets_a_line_from_its_own_caption(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from genrec.ops.plots import scale_throughput, today

    md, bench = _tree(tmp_path)
    scale_throughput([1, 2], [500.0, 700.0], bench / "scale-throughput.png", title="Replicas vs throughput",
                     command="genrec bench scale --plot docs/bench/scale-throughput.png", note="load average 1.5")
    (bench / "bare.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a figure without a caption: its name
    args = ["--benchmarks", str(md), "--bench-dir", str(bench)]
    assert main(args) == 0
    block = _block(md)
    assert "- [bare.png](docs/bench/bare.png)." in block
    assert (f"- [Replicas vs throughput](docs/bench/scale-throughput.png): `genrec bench scale --plot "
            f"docs/bench/scale-throughput.png`, {today()}; load average 1.5.") in block
    assert block.index("**Figures**") < block.index("**Quality**")
    assert main([*args, "--check"]) == 0
