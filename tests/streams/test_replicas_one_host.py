"""Several replicas on one host (issue 20 items 9 and 5), with real `genrec worker` processes.

Two workers started with `--web-port 0` each get a free port, log it (`web port: N`), write it to
STATE_DIR/web-port and serve /health there; a third asked for a port already taken exits at once with one line
naming --web-port and no traceback. On the way, what the observability items promise is read from the live
workers: `GENREC_LOG_FORMAT=json` gives one JSON object a line, and /metrics carries Faust's sensors, the
worker's and its inference child's CPU and memory, and every metric the alert rules read.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from genrec.ops.bench_stream import genrec_command, http_get, scrape, start_worker, stop_process, wait_ready
from genrec.ops.chaos import FAST_GROUP_ENV, Topics
from genrec.streams.web_port import read_port_file

from tests.ops.test_alerts import family, metrics_in, rules

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _wait_port(state_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        port = read_port_file(state_dir)
        if port:
            return port
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"no {state_dir}/web-port after {timeout_s:.0f}s")


def test_replicas_with_web_port_0_share_a_host_and_a_taken_port_is_one_line(
    bootstrap: str, checkpoint: Path, tmp_path: Path
) -> None:
    env = {**FAST_GROUP_ENV, **Topics.unique().env()}
    app_id = f"genrec-test-{uuid.uuid4().hex[:8]}"
    dirs = [tmp_path / "a", tmp_path / "b"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        start_worker(bootstrap, checkpoint, dirs[0], 0, app_id=app_id, log_path=logs[0],
                     env={**env, "GENREC_LOG_FORMAT": "json", "GENREC_WORKER_ID": "replica-a"}),
        start_worker(bootstrap, checkpoint, dirs[1], 0, app_id=app_id, log_path=logs[1], env=env,
                     extra_args=["--web-port", "auto"]),  # the later flag wins: `auto` is 0 too
    ]
    try:
        ports = [_wait_port(d, p) for d, p in zip(dirs, procs, strict=True)]
        assert len(set(ports)) == 2 and 0 not in ports and 6066 not in ports
        for port, log, proc in zip(ports, logs, procs, strict=True):
            wait_ready(port, proc, timeout_s=180)
            status, body = http_get(port, "/health")
            assert status == 200 and json.loads(body)["status"] == "ok"
            assert f"web port: {port}" in log.read_text(errors="replace")

        # A third replica asked for a port the first one holds: one line on stderr, exit 2, nothing started.
        taken = subprocess.run(
            [*genrec_command(), "worker", "--bootstrap", bootstrap, "--checkpoint", str(checkpoint),
             "--state-dir", str(tmp_path / "c"), "--web-port", str(ports[0]), "--app-id", app_id],
            capture_output=True, text=True, timeout=120, env={**os.environ, **env},
        )
        assert taken.returncode == 2, taken.stderr
        lines = taken.stderr.strip().splitlines()
        assert len(lines) == 1 and "--web-port" in lines[0] and str(ports[0]) in lines[0], taken.stderr
        assert "Traceback" not in taken.stderr + taken.stdout

        # Observability on the live worker.
        live = scrape(ports[0])
        names = {k.split("{", 1)[0] for k in live}
        for wanted in ("faust_messages_received_total", "process_cpu_seconds_total",
                       "process_resident_memory_bytes", "genrec_inference_process_cpu_seconds_total",
                       "genrec_inference_process_resident_memory_bytes", "genrec_model_loaded_timestamp_seconds"):
            assert wanted in names, wanted
        assert live["genrec_inference_process_resident_memory_bytes"] > 10 * 2**20  # the model's process, not 0
        # Families as declared on the page (# TYPE), so that a labelled counter with no sample yet counts.
        _, page = http_get(ports[0], "/metrics")
        declared = {family(line.split()[2]) for line in page.decode().splitlines() if line.startswith("# TYPE ")}
        for r in rules():
            for metric in metrics_in(r["expr"]):
                assert family(metric) in declared, (r["alert"], metric)
    finally:
        for p in procs:
            stop_process(p)

    # JSON logs: every line of replica a's log is one object with the promised fields.
    records = [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message", "process"} <= r.keys() for r in records)
    assert {r["worker_id"] for r in records} == {"replica-a"}
    assert any(r["logger"].startswith("faust") or r["logger"].startswith("mode") for r in records), \
        "Faust's own records go through the JSON formatter too"
