"""The Kafka Streams peer of genrec's ingest (issue 21 item 6), built and run for `genrec bench stream`.

`ops/kafka/streams-peer/` holds a few dozen lines of Java (HistoryPeer.java): each event's item id appended
to its user's list in a persistent (RocksDB, changelogged) Kafka Streams store, bounded to the same history
length as genrec. Its Maven descriptor's parent is the broker's (`ops/kafka/pom.xml`), so both pin one Kafka
version. Maven builds it once into `.cache/kafka/streams-peer-<version>/` (next to the broker's jars, same
cache rules: `GENREC_KAFKA_CACHE`), keyed by a digest of the two descriptors and the source.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from genrec.ops.kafka_broker import (
    KAFKA_DIR,
    POM,
    KafkaUnavailableError,
    cache_root,
    find_java,
    kafka_version,
    run_maven,
)

PEER_DIR = KAFKA_DIR / "streams-peer"
PEER_POM = PEER_DIR / "pom.xml"
MAIN_CLASS = "genrec.peer.HistoryPeer"
BUILD_TIMEOUT_S = 900.0
_COMPLETE = ".complete"


def _digest() -> str:
    h = hashlib.sha256()
    for path in [POM, PEER_POM, *sorted((PEER_DIR / "src").rglob("*.java"))]:
        h.update(str(path.relative_to(KAFKA_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def peer_classpath(build: bool = True) -> str:
    """The peer's classpath (its jar and its dependencies), built by Maven first when missing or stale."""
    out = cache_root() / f"streams-peer-{kafka_version()}"
    digest = _digest()
    if _read(out / _COMPLETE) != digest:
        if not build:
            raise KafkaUnavailableError(f"the Kafka Streams peer is not built yet into {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        # One build at a time across processes; whoever waited finds the marker written.
        with open(out.parent / f"{out.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _read(out / _COMPLETE) != digest:
                _build(out)
                (out / _COMPLETE).write_text(digest)
    return os.pathsep.join(str(p) for p in sorted(out.glob("*.jar")))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _build(out: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    started = time.monotonic()
    print(f"genrec: building the Kafka Streams peer with Maven into {out} ...", file=sys.stderr)
    try:
        run_maven(["-f", str(PEER_POM), "package", "dependency:copy-dependencies",
                   f"-Dpeer.build.directory={staging / 'build'}", f"-DoutputDirectory={staging}",
                   "-DincludeScope=runtime"], what="building the Kafka Streams peer", timeout_s=BUILD_TIMEOUT_S)
        jars = list((staging / "build").glob("genrec-streams-peer-*.jar"))
        if not jars:
            raise KafkaUnavailableError(f"building the Kafka Streams peer left no jar in {staging / 'build'}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for jar in jars:
        jar.rename(staging / jar.name)
    shutil.rmtree(staging / "build")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    print(f"genrec: Kafka Streams peer built in {time.monotonic() - started:.1f}s", file=sys.stderr)


def measure_peer(
    bootstrap: str, topic: str, n: int, *, history_len: int = 200, threads: int = 1, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Events/s of the peer over `n` events already on `topic`: n / (n-th processed − first processed), as
    the Faust ceilings of ops/bench_stream.py count them. A fresh application id: it reads from the start."""
    classpath = peer_classpath()
    java = find_java()
    with tempfile.TemporaryDirectory(prefix="genrec-streams-peer-") as d:
        result = Path(d, "result.json")
        app_id = f"peer-{os.getpid()}-{time.time_ns()}"
        command = [
            str(java), "-Xmx512m", f"-Dpeer.timeout.s={int(timeout_s)}", "-cp", classpath, MAIN_CLASS,
            bootstrap, topic, app_id, str(Path(d, "state")), str(n), str(history_len), str(result), str(threads),
        ]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 60, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"the Kafka Streams peer did not finish in {timeout_s + 60:.0f}s") from exc
        if not result.exists():
            raise RuntimeError(
                f"the Kafka Streams peer failed (status {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        r = json.loads(result.read_text())
    return {"events": r["events"], "seconds": round(r["seconds"], 3), "eps": round(r["events"] / r["seconds"], 1),
            "threads": threads}
