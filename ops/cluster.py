"""A group of `genrec worker` replicas on one machine: start, kill, terminate, and read who owns what.

Used by `genrec bench scale` and by the scale-out tests. Each replica is a real child process with its own
`--state-dir` and web port, all in one consumer group (one `--app-id`). Ownership comes from each replica's
`/ready` answer (`active`/`standby` partitions by topic), never from guessing the assignor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.ops.bench_stream import http_get, start_worker, stop_process

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int, descendants: bool = True) -> float | None:
    """User + system CPU time of a live process and (by default) of its live descendants (a worker's
    inference child), from /proc (None once the process is gone)."""
    own = _stat(pid)
    if own is None:
        return None
    # After the command name: state is field 3, ppid 4, utime 14 and stime 15 (1-based, man proc).
    if not descendants:
        return (int(own[11]) + int(own[12])) / _CLK_TCK
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    stats[pid] = own
    tree, grew = {pid}, True
    while grew:
        kids = {p for p, st in stats.items() if int(st[1]) in tree} - tree
        grew = bool(kids)
        tree |= kids
    return sum(int(stats[p][11]) + int(stats[p][12]) for p in tree) / _CLK_TCK


@dataclass
class Replica:
    name: str
    port: int
    state_dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready_state(self, timeout_s: float = 2.0) -> tuple[int, dict[str, Any]] | None:
        """(HTTP status, /ready JSON), or None when the web port does not answer (starting, dead)."""
        try:
            status, body = http_get(self.port, "/ready", timeout_s=timeout_s)
            return status, json.loads(body)
        except (OSError, ValueError):
            return None


@dataclass
class LocalCluster:
    bootstrap: str
    checkpoint: Path
    base: Path
    app_id: str
    env: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.base / "workers.log"

    def start(self, name: str, state_dir: Path | None = None) -> Replica:
        """Start a replica (does not wait for it); its results carry `name` as their `worker`."""
        from genrec.ops.broker import free_port

        self.base.mkdir(parents=True, exist_ok=True)
        port = free_port()
        state_dir = state_dir or self.base / f"state-{name}"
        proc = start_worker(
            self.bootstrap,
            self.checkpoint,
            state_dir,
            port,
            app_id=self.app_id,
            log_path=self.log_path,
            env={**self.env, "GENREC_WORKER_ID": name},
        )
        rep = self.replicas[name] = Replica(name, port, state_dir, proc)
        return rep

    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.alive]

    def kill(self, name: str) -> None:
        """SIGKILL: no commit, no leave-group; the group notices after the session timeout."""
        rep = self.replicas[name]
        rep.proc.send_signal(signal.SIGKILL)
        rep.proc.wait(30)

    def terminate(self, name: str, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait: the graceful path (in-flight batch, commit, leave the group)."""
        rep = self.replicas[name]
        rep.proc.send_signal(signal.SIGTERM)
        return int(rep.proc.wait(timeout_s))

    def owners(self, topic: str, kind: str = "active") -> dict[int, list[str]]:
        """partition → names of live replicas that report it (`active` or `standby`) right now."""
        out: dict[int, list[str]] = {}
        for rep in self.live():
            got = rep.ready_state()
            if got is None:
                continue
            for p in got[1].get(kind, {}).get(topic, []):
                out.setdefault(int(p), []).append(rep.name)
        return out

    def wait_spread(
        self, topic: str, partitions: int, names: Iterable[str] | None = None, timeout_s: float = 180.0
    ) -> dict[int, str]:
        """Wait until every given replica is ready and owns ≥ 1 partition of `topic`, each partition has
        exactly one owner among them, and together they own all `partitions`. Returns partition → owner."""
        wanted = list(names) if names is not None else [r.name for r in self.live()]
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            states = {}
            for name in wanted:
                rep = self.replicas[name]
                if not rep.alive:
                    raise RuntimeError(f"replica {name} exited with status {rep.proc.returncode}")
                states[name] = rep.ready_state()
            last = {n: (s[0], s[1].get("active", {}).get(topic)) if s else None for n, s in states.items()}
            if all(s is not None and s[0] == 200 for s in states.values()):
                owner: dict[int, str] = {}
                clash = False
                for name, s in states.items():
                    assert s is not None
                    for p in s[1].get("active", {}).get(topic, []):
                        clash |= p in owner
                        owner[int(p)] = name
                each = all(s is not None and s[1].get("active", {}).get(topic) for s in states.values())
                if not clash and each and sorted(owner) == list(range(partitions)):
                    return owner
            time.sleep(0.25)
        raise TimeoutError(f"partitions of {topic} not spread over {wanted} in {timeout_s:.0f}s: {last}")

    def log_tail(self, n: int = 80, notable: int = 60) -> str:
        """The last `n` lines of the replicas' shared log, after the last `notable` lines that say why a
        replica stalls (warnings, errors, rebalances, recovery, re-reads): a tail alone is mostly the
        healthy replicas' chatter by the time a test gives up."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        marks = ("WARNING", "ERROR", "Traceback", "wait_empty", "again from", "Recovery]: ", "assigned",
                 "Revoking", "joining group", "crash", "Signal received")
        picked = [line for line in lines if any(m in line for m in marks)][-notable:]
        return "\n".join(["-- notable lines --", *picked, f"-- last {n} lines --", *lines[-n:]])

    def stop_all(self, timeout_s: float = 30.0) -> None:
        for rep in self.replicas.values():
            stop_process(rep.proc, timeout_s=timeout_s)
