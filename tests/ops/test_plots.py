"""ops/plots.py (issue 20 item 8): the figures from tiny fake data, the caption each PNG carries, the prequential
band, and the `--plot` flags of `genrec train`, `genrec bench stream`, `genrec bench scale` and `genrec bench online`
(without matplotlib they stop before any work, naming the extra)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from genrec.ops import plots
from typer.testing import CliRunner

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000
    return data


@pytest.fixture
def mpl() -> Any:
    return pytest.importorskip("matplotlib")


def _windows(exact: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, (f, o, n) in enumerate([(0.05, 0.05, 70), (0.04, 0.06, 80), (0.05, 0.08, 0)]):
        w: dict[str, Any] = {"events": [100 * i, 100 * i + 100], "requests": n,
                             "frozen_ndcg@10": f if n else None, "online_ndcg@10": o if n else None}
        if exact and n:
            w["online_minus_frozen_ndcg@10"] = {"mean": o - f, "ci95_paired_bootstrap": [o - f - 0.01, o - f + 0.02]}
        out.append(w)
    return out


def _online_result(exact: bool = False) -> dict[str, Any]:
    return {"dataset": "ml-100k", "requests": 150, "windows": _windows(exact), "seconds": 12.5,
            "online_minus_frozen_ndcg@10": {"mean": 0.011, "ci95_paired_bootstrap": [-0.002, 0.024]}}


# ------------------------------------------------------------------------ the figures


def test_each_figure_is_a_png_with_its_caption(tmp_path: Path, mpl: Any) -> None:
    cdf = plots.latency_cdf({100.0: [12.0, 15.0, 40.0], 200.0: [20.0, 22.0, 300.0, 25.0], 300.0: []},
                            tmp_path / "cdf.png", title="latency", subtitle="model m, 2 cores", target_ms=250.0,
                            command="genrec bench stream --plot cdf.png", note="load average 1.5 → 2")
    scale = plots.scale_throughput([1, 2, 3], [700.0, 900.0, 1000.0], tmp_path / "scale.png", title="scale",
                                   p99_ms=[3000.0, None, 2500.0])
    history = [{"epoch": e, "lr": 0.001, "loss": 10.0 - e, "loss_ret": 9.0 - e, "loss_rank": 1.0,
                "valid_ndcg@10": 0.01 * e, "valid_served_ndcg@10": 0.012 * e, "valid_hr@10": 0.02 * e,
                "valid_auc": 0.6 + 0.01 * e} for e in (1, 2, 3)]
    train = plots.training_curves(history, tmp_path / "train.png", title="train", best_epoch=2)
    refit = plots.training_curves([{"epoch": 1, "lr": 0.001, "loss": 3.0}], tmp_path / "refit.png", title="refit")
    online = plots.prequential_from_result(_online_result(), tmp_path / "sub" / "online.png", command="c")
    for path in (cdf, scale, train, refit, online):
        _png(path)
    meta = plots.png_text(cdf)
    assert meta["Title"] == "latency" and meta["Command"] == "genrec bench stream --plot cdf.png"
    assert meta["Comment"] == "model m, 2 cores; load average 1.5 → 2"  # not latin-1: iTXt, read back as UTF-8
    assert meta["Creation Time"] == plots.today()
    assert "Command" not in plots.png_text(scale)  # no command given, no empty chunk
    assert plots.png_text(online)["Title"] == "ml-100k: prequential NDCG@10, frozen vs online"


def test_png_text_of_a_file_that_is_not_a_png(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"not a png")
    assert plots.png_text(tmp_path / "x.png") == {}


# ------------------------------------------------------------------------ the prequential band


def test_the_band_is_the_windows_own_paired_interval_when_the_json_has_it() -> None:
    intervals, kind = plots.window_intervals(_windows(exact=True), _online_result()["online_minus_frozen_ndcg@10"],
                                             150)
    assert kind == plots.EXACT and intervals[2] is None  # an empty window has no point
    assert intervals[1] == pytest.approx((0.02, 0.01, 0.04))


def test_older_json_gets_the_whole_runs_paired_spread_per_window() -> None:
    overall = {"mean": 0.011, "ci95_paired_bootstrap": [-0.002, 0.024]}
    intervals, kind = plots.window_intervals(_windows(), overall, 150)
    assert kind == plots.POOLED and intervals[2] is None
    sd = 0.026 / (2 * plots.Z95) * math.sqrt(150)
    mean, lo, hi = intervals[0]
    assert mean == pytest.approx(0.0) and hi == pytest.approx(plots.Z95 * sd / math.sqrt(70))
    assert lo == pytest.approx(-hi)
    # Fewer requests in a window, a wider band; the whole run's own half-width at all 150 requests.
    assert intervals[1][2] - intervals[1][0] < hi and plots.Z95 * sd / math.sqrt(150) == pytest.approx(0.013)
    _, none = plots.window_intervals(_windows(), None, None)
    assert none is None


def test_the_online_bench_records_each_windows_paired_interval_for_the_band() -> None:
    from genrec.ops.bench_online import summarize

    rows = [{"event": 100 + i, "frozen_ndcg": 0.0, "frozen_hr": 0.0, "online_ndcg": 1.0 if i % 2 else 0.0,
             "online_hr": 1.0, "version": None} for i in range(10)]
    s = summarize(rows, 100, 20, [1.0], n_windows=2)
    assert s["windows"][0]["online_minus_frozen_ndcg@10"]["requests"] == 10
    assert "online_minus_frozen_ndcg@10" not in s["windows"][1]  # no requests there
    intervals, kind = plots.window_intervals(s["windows"], s["online_minus_frozen_ndcg@10"], s["requests"])
    assert kind == plots.EXACT and intervals[0][0] == pytest.approx(0.5) and intervals[1] is None


# ------------------------------------------------------------------------ redrawing from saved results


def test_python_m_plots_redraws_from_a_json_and_from_a_checkpoint(tmp_path: Path, mpl: Any) -> None:
    src = tmp_path / "online-ml-100k.json"
    src.write_text(json.dumps(_online_result()))
    assert plots.main(["online", str(src), "--out", str(tmp_path / "online.png")]) == 0
    meta = plots.png_text(tmp_path / "online.png")
    assert meta["Command"].startswith("python -m genrec.ops.plots online ") and "online-ml-100k.json" in meta["Comment"]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"dataset": "ml-100k"}))
    (ckpt / "metrics.json").write_text(json.dumps({"best_epoch": 1, "train_seconds": 3.0, "history": [
        {"epoch": 1, "lr": 0.001, "loss": 2.0, "valid_ndcg@10": 0.1}, {"epoch": 2, "lr": 0.001, "loss": 1.5,
                                                                          "valid_ndcg@10": 0.09}]}))
    assert plots.main(["train", str(ckpt), "--out", str(tmp_path / "train.png")]) == 0
    title = plots.png_text(tmp_path / "train.png")["Title"]
    assert title == "genrec train, ml-100k: 2 epochs, kept epoch 1, 3 s training"


# ------------------------------------------------------------------------ the --plot flags


def _app() -> typer.Typer:
    from genrec.ops import bench_online, cli_model, cli_ops, cli_stream

    app, bench_app = typer.Typer(), typer.Typer()
    app.add_typer(bench_app, name="bench")
    for module in (cli_model, cli_ops, cli_stream, bench_online):
        module.register(app, bench_app)
    return app


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the command did its work before it checked for matplotlib")


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "synthetic", "--out", "{tmp}/ckpt", "--plot", "{tmp}/t.png"],
    ["bench", "stream", "--plot", "{tmp}/s.png"],
    ["bench", "scale", "--plot", "{tmp}/s.png"],
    ["bench", "online", "--dataset", "synthetic", "--plot", "{tmp}/o.png"],
])
def test_without_matplotlib_a_plot_flag_stops_before_the_work(argv: list[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import genrec.ops.bench_online
    import genrec.ops.bench_scale
    import genrec.ops.bench_stream
    import genrec.ops.cli_model

    for module, name in ((genrec.ops.bench_stream, "run_bench_stream"), (genrec.ops.bench_scale, "run_bench_scale"),
                         (genrec.ops.bench_online, "run_bench_online"), (genrec.ops.cli_model, "load_data")):
        monkeypatch.setattr(module, name, _never)
    app = _app()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = CliRunner().invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert result.exit_code == 1, result.output
    assert "pip install 'genrec[bench]'" in result.output
    assert not any(tmp_path.iterdir())  # no checkpoint, no figure


def test_bench_stream_passes_its_plot_path_to_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import genrec.ops.bench_stream

    seen: dict[str, Any] = {}

    def fake(**kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {"bench": "stream", "plot": str(kwargs["plot"])}

    monkeypatch.setattr(genrec.ops.bench_stream, "run_bench_stream", fake)
    result = CliRunner().invoke(_app(), ["bench", "stream", "--rates", "50", "--json", "--plot",
                                         str(tmp_path / "cdf.png")])
    assert result.exit_code == 0, result.output
    assert seen["plot"] == tmp_path / "cdf.png" and seen["rates"] == [50.0]
    assert json.loads(result.stdout.strip().splitlines()[-1])["plot"] == str(tmp_path / "cdf.png")


def test_bench_stream_draws_the_cdf_from_every_requests_latency(tmp_path: Path, mpl: Any) -> None:
    from genrec.ops.bench_stream import plot_latency_cdf

    result = {"broker": "tansu (embedded, memory)", "model_version": "m1", "users": 20, "seconds": 2.0,
              "machine": {"cpus": 2, "torch": "2.13.0", "load_avg_1m": [1.25, 2.5]},
              "best_sustained_rps_p99_le_250ms": 100.0}
    path = plot_latency_cdf(result, {100.0: [5.0, 8.0, 30.0], 200.0: [9.0, 12.0]}, tmp_path / "cdf.png")
    _png(path)
    assert plots.png_text(path)["Title"] == "genrec bench stream: end-to-end latency, tansu (embedded, memory)"


def test_bench_scale_draws_replicas_against_throughput(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       mpl: Any) -> None:
    import genrec.ops.bench_scale

    steps = [{"replicas": n, "requests": 100, "answered": 100, "requests_per_s": rps, "p50_ms": 10.0,
              "p99_ms": p99, "cpu": {"cores_busy_others": 0.25}} for n, rps, p99 in ((1, 500.0, 900.0),
                                                                                   (2, 650.0, 700.0))]
    fake = {"bench": "scale", "broker": "tansu (embedded, memory)", "partitions": 6, "requests_per_step": 100,
            "machine": {"cpus": 2, "load_avg_1m": [1.0, 1.5]}, "steps": steps, "limit": "1.9 of 2 cores busy"}
    seen: dict[str, Any] = {}

    def run(**kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return dict(fake)

    monkeypatch.setattr(genrec.ops.bench_scale, "run_bench_scale", run)
    out = tmp_path / "scale.png"
    result = CliRunner().invoke(_app(), ["bench", "scale", "--replicas", "1,2", "--no-failover", "--json",
                                         "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert seen["replicas"] == [1, 2] and json.loads(result.stdout.strip().splitlines()[-1])["plot"] == str(out)
    _png(out)
    assert plots.png_text(out)["Title"] == "genrec bench scale: replicas vs throughput, tansu (embedded, memory)"


@pytest.mark.slow
def test_train_plot_draws_the_history_it_keeps_in_the_checkpoint(tmp_path: Path, mpl: Any) -> None:
    out, png = tmp_path / "ckpt", tmp_path / "train.png"
    result = CliRunner().invoke(_app(), ["train", "--dataset", "synthetic", "--out", str(out), "--epochs", "1",
                                         "--no-progress", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["plot"] == str(png)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1] and "loss" in history[0] and "valid_ndcg@10" in history[0]
    _png(png)
    assert plots.png_text(png)["Title"].startswith("genrec train, synthetic: 1 epoch, kept epoch 1")
