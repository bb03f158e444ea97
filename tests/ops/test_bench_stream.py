"""`genrec bench stream`: the BENCHMARKS.md section it writes (the measurement itself runs the real stack)."""

from __future__ import annotations

from pathlib import Path

from genrec.ops.bench_stream import (
    KAFKA_SECTION_END,
    KAFKA_SECTION_START,
    SECTION_END,
    SECTION_START,
    best_sustained_rate,
    write_benchmarks_section,
)


def _result(p99_300: float | None) -> dict:
    steps = [
        {"rate": 100.0, "sent": 1000, "received": 1000, "throughput_rps": 99.9, "p50_ms": 20.0, "p99_ms": 40.0,
         "p999_ms": 50.0},
        {"rate": 300.0, "sent": 3000, "received": 3000 if p99_300 else 10, "throughput_rps": 298.0,
         "p50_ms": 60.0, "p99_ms": p99_300, "p999_ms": None},
    ]
    return {
        "machine": {"cpus": 2, "python": "3.11.7", "torch": "2.13.0"}, "seconds": 10.0, "model_version": "v1",
        "users": 200, "events_per_user": 100.0, "steps": steps, "best_sustained_rps_p99_le_250ms": 298.0,
        "mean_batch_size": 11.2, "mean_inference_ms_per_batch": 20.5,
        "ceilings": {"passthrough": {"eps": 9000.0}, "stateful": {"eps": 2000.0}, "genrec_ingest": {"eps": 1900.0},
                     "rounds": [{"passthrough": {"eps": 9000.0}, "stateful": {"eps": 2000.0},
                                 "genrec_ingest": {"eps": 1700.0}},
                                {"passthrough": {"eps": 8500.0}, "stateful": {"eps": 1800.0},
                                 "genrec_ingest": {"eps": 1900.0}}]},
        "ratio_ingest_to_stateful": 0.95, "ratio_ingest_to_passthrough": 0.21,
        "ratio_ingest_to_passthrough_rounds": [0.189, 0.224],
    }


def test_the_section_names_its_command_and_replaces_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nbefore\n\n{SECTION_START}\nold numbers\n{SECTION_END}\n\nafter\n")
    write_benchmarks_section(_result(120.0), path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n") and text.rstrip().endswith("after")
    assert "old numbers" not in text and text.count(SECTION_START) == 1
    assert "`genrec bench stream --json --update-benchmarks`" in text and "torch 2.13.0" in text
    assert "| 300 | 3000 | 3000 | 298 | 60 | 120 | — |" in text  # a missing percentile prints as a dash
    assert "**0.21**" in text and "stateful ceiling =\n0.95" in text  # ingest / pass-through, then / stateful
    assert "9000 / 2000 / 1700, 8500 / 1800 / 1900 events/s per round (ingest / pass-through 0.19, 0.22)" in text
    write_benchmarks_section(_result(None), path)
    again = path.read_text()
    assert again.count(SECTION_START) == 1 and "| 300 | 3000 | 10 |" in again


def test_the_kafka_run_gets_its_own_section_after_the_tansu_one_with_the_peer(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\n{SECTION_START}\ntansu numbers\n{SECTION_END}\n\nafter\n")
    result = _result(120.0)
    result["broker_kind"] = "kafka"
    result["ceilings"]["kafka_streams"] = {"eps": 6000.0}
    result["ceilings"]["genrec_ingest_tansu_settings"] = {"eps": 800.0}
    result["machine"]["load_avg_1m"] = [3.5, 4.25]
    result.update(ratio_kafka_streams_to_passthrough=0.667, ratio_ingest_to_kafka_streams=0.317)
    write_benchmarks_section(result, path)
    write_benchmarks_section(result, path)  # replaces itself
    text = path.read_text()
    assert "tansu numbers" in text and text.count(KAFKA_SECTION_START) == 1
    assert text.index(SECTION_END) < text.index(KAFKA_SECTION_START) < text.index(KAFKA_SECTION_END) < text.index(
        "after")
    assert "`genrec bench stream --broker kafka --json --update-benchmarks`" in text
    assert "| 6000 |" in text and "**0.32**" in text
    assert "Tansu's producer settings" in text and "| 800 |" in text and "load average was 3.5" in text


def test_a_new_file_gets_the_section_appended(tmp_path: Path) -> None:
    path = tmp_path / "B.md"
    write_benchmarks_section(_result(100.0), path)
    assert path.read_text().startswith("# Benchmarks\n") and SECTION_END in path.read_text()


def test_the_best_sustained_rate_is_the_offered_rate_of_a_fully_answered_step_within_the_p99_bound() -> None:
    def step(rate: float, received: int, p99: float | None) -> dict:
        return {"rate": rate, "sent": int(rate * 10), "received": received, "throughput_rps": rate * 0.99,
                "p99_ms": p99}

    assert best_sustained_rate([step(100, 1000, 40), step(300, 3000, 177.7), step(400, 4000, 301.6)]) == 300.0
    assert best_sustained_rate([step(100, 1000, 40), step(300, 2999, 90.0)]) == 100.0  # one result missing
    assert best_sustained_rate([step(100, 0, None)]) == 0.0
    assert best_sustained_rate([step(300, 3000, 250.0)]) == 300.0  # the bound is inclusive
