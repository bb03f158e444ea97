"""`genrec bench scale`: requests/s with 1, 2 and 3 worker replicas on one fresh embedded broker, the CPU
each process used, and (with the 3 replicas) a SIGKILL failover under paced load.

Per replica count, on fresh topics and a fresh consumer group: users get histories, N replicas start and
split the partitions (checked through `/ready`), then a backlog of requests is sent at once and
throughput = requests answered / (last answer − first send). CPU is read from /proc for every worker, the
broker and this process over that window, and for the whole machine from /proc/stat: on a 2-core machine
shared with other jobs the sum tells whether more replicas can help at all.

Failover: 3 replicas serve a paced load; one is SIGKILLed; the run reports requests lost (distinct
`request_id`s never answered; the target is 0), duplicates, and recovery = first answer from a new owner
of a killed replica's partition, counted from the kill (target ≤ 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from genrec.ops.bench_stream import scrape
from genrec.ops.cluster import LocalCluster, cpu_seconds
from genrec.ops.load import LoadRun, run_load

SECTION_START = "<!-- bench:scale -->"
SECTION_END = "<!-- /bench:scale -->"
TARGET_RECOVERY_S = 30.0
# Group timings for the benchmark's workers (the defaults are for production: 10 s session timeout).
BENCH_ENV = {
    "GENREC_SESSION_TIMEOUT_S": "6",
    "GENREC_HEARTBEAT_INTERVAL_S": "1",
    "GENREC_REBALANCE_TIMEOUT_S": "10",
    "GENREC_COMMIT_INTERVAL_S": "1",
    "GENREC_TORCH_THREADS": "1",
}


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / tck, sum(fields) / tck


class CpuWindow:
    """CPU seconds used by named processes (and the machine) between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int], own_only: frozenset[str] = frozenset({"load_generator"})) -> None:
        self.pids = pids
        # This process is the parent of the broker and the workers: count it alone, them with their children.
        self.own_only = own_only

    def _cpu(self, name: str, pid: int) -> float | None:
        return cpu_seconds(pid, descendants=name not in self.own_only)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = {n: self._cpu(n, p) for n, p in self.pids.items()}
        self.m0 = machine_busy_seconds()

    def stop(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.t0, 1e-9)
        out: dict[str, float] = {}
        for n, p in self.pids.items():
            c1, c0 = self._cpu(n, p), self.c0.get(n)
            if c1 is not None and c0 is not None:
                out[n] = round((c1 - c0) / wall, 3)
        m1 = machine_busy_seconds()
        machine = (m1[0] - self.m0[0]) / wall
        ours = sum(out.values())
        return {
            "wall_s": round(wall, 2),
            "cores_busy_by_process": out,
            "cores_busy_ours": round(ours, 2),
            "cores_busy_machine": round(machine, 2),
            # Other jobs on the same machine (the benchmark cannot pause them): machine − ours.
            "cores_busy_others": round(max(0.0, machine - ours), 2),
        }


def _produce_histories(bootstrap: str, topic: str, users: list[str], per_user: int, item_ids: list[str]) -> int:
    from genrec.ops.bench_stream import produce_all
    from genrec.schemas.messages import Event, encode

    now = int(time.time() * 1000) - 3_600_000

    def records() -> Any:
        for i in range(per_user):
            for j, u in enumerate(users):
                item = item_ids[(7 * j + 13 * i) % len(item_ids)]
                ev = Event(event_id=f"{u}-h{i}", user_id=u, ts=now + 1000 * i, type="click", item_id=item)
                yield u.encode(), encode(ev)

    return asyncio.run(produce_all(bootstrap, topic, records()))


def _wait_ingested(cluster: LocalCluster, n: int, timeout_s: float = 300.0) -> None:
    t_end = time.monotonic() + timeout_s
    got = 0.0
    while time.monotonic() < t_end:
        got = sum(scrape(r.port).get('genrec_events_total{outcome="appended"}', 0.0) for r in cluster.live())
        if got >= n:
            return
        time.sleep(0.5)
    raise TimeoutError(f"replicas ingested {got:.0f} of {n} events in {timeout_s:.0f}s\n{cluster.log_tail()}")


def _step(
    bs: str,
    broker_pid: int | None,
    checkpoint: Path,
    work: Path,
    n: int,
    *,
    partitions: int,
    users: list[str],
    per_user: int,
    item_ids: list[str],
    requests: int,
    failover: dict[str, Any] | None,
    say: Any,
    worker_env: dict[str, str],
) -> dict[str, Any]:
    from genrec.ops.topics import TopicSpec, create_topics

    tag = uuid.uuid4().hex[:6]
    names = {k: f"scale{tag}.{k}" for k in ("events", "requests", "results", "deadletter")}
    asyncio.run(create_topics(bs, [TopicSpec(t, partitions) for t in names.values()]))
    env = {
        **BENCH_ENV,
        **worker_env,
        "GENREC_PARTITIONS": str(partitions),
        "GENREC_EVENTS_TOPIC": names["events"],
        "GENREC_REQUESTS_TOPIC": names["requests"],
        "GENREC_RESULTS_TOPIC": names["results"],
        "GENREC_DEADLETTER_TOPIC": names["deadletter"],
    }
    n_events = _produce_histories(bs, names["events"], users, per_user, item_ids)
    cluster = LocalCluster(bs, checkpoint, work / f"r{n}", f"genrec-scale-{tag}", env)
    try:
        t0 = time.monotonic()
        for i in range(n):
            cluster.start(f"r{n}w{i + 1}")
        owner = cluster.wait_spread(names["requests"], partitions, timeout_s=300)
        say(f"{n} replica(s) ready in {time.monotonic() - t0:.1f}s, partitions {owner}")
        _wait_ingested(cluster, n_events)
        pids = {name: rep.proc.pid for name, rep in cluster.replicas.items()}
        if broker_pid is not None:
            pids["broker"] = broker_pid
        pids["load_generator"] = os.getpid()
        cpu = CpuWindow(pids)
        cpu.start()
        run = asyncio.run(
            run_load(
                bs,
                rate=5000.0,  # a backlog: the replicas, not the sender, set the pace
                duration_s=requests / 5000.0,
                users=users,
                requests_topic=names["requests"],
                results_topic=names["results"],
                events_topic=names["events"],
                drain_s=600.0,
            )
        )
        usage = cpu.stop()
        rep = run.report()
        span = max(run.finished - run.started, 1e-9)
        step = {
            "replicas": n,
            "requests": rep["sent"],
            "answered": rep["answered"],
            "lost": rep["lost"],
            "requests_per_s": round(rep["answered"] / span, 1),
            "p50_ms": rep["p50_ms"],
            "p99_ms": rep["p99_ms"],
            "by_worker": rep["by_worker"],
            "cpu": usage,
        }
        worker_cores = sum(v for k, v in usage["cores_busy_by_process"].items() if k in cluster.replicas)
        # Throughput per core the workers actually got: flat across replica counts = linear in cores.
        step["requests_per_worker_core_s"] = round(step["requests_per_s"] / worker_cores, 1) if worker_cores else None
        say(f"  {step}")
        if failover is not None:
            step["failover"] = _failover(cluster, names, owner, users, say=say, **failover)
        return step
    finally:
        cluster.stop_all()


def _failover(
    cluster: LocalCluster,
    names: dict[str, str],
    owner: dict[int, str],
    users: list[str],
    *,
    rate: float,
    seconds: float,
    kill_after: float,
    say: Any,
    restart: bool = False,
) -> dict[str, Any]:
    victim = sorted(set(owner.values()))[0]
    victim_parts = sorted(p for p, n in owner.items() if n == victim)
    run = LoadRun()
    kill_at = [0.0]

    async def main() -> None:
        load = asyncio.create_task(
            run_load(
                cluster.bootstrap,
                rate=rate,
                duration_s=seconds,
                users=users,
                requests_topic=names["requests"],
                results_topic=names["results"],
                events_topic=names["events"],
                drain_s=180.0,
                run=run,
                seed=7,
            )
        )
        await asyncio.sleep(kill_after)
        await asyncio.to_thread(cluster.kill, victim)
        kill_at[0] = time.monotonic()
        if restart:
            # A supervisor's restart at once on the same state folder, under a new name so that its answers count
            # as a new owner's: it takes the killed member out of the group first (streams/group_handoff.py).
            cluster.start(f"{victim}-restarted", state_dir=cluster.replicas[victim].state_dir)
        await load

    say(f"failover: {rate:g} req/s for {seconds:g}s, SIGKILL {victim} (partitions {victim_parts}) at {kill_after:g}s"
        + (", restarted at once" if restart else ""))
    asyncio.run(main())
    rep = run.report()
    taken = sorted(
        r.at - kill_at[0]
        for r in run.first.values()
        if run.sent[r.request_id].partition in victim_parts and r.worker != victim and r.at > kill_at[0]
    )
    # Requests to the victim's partitions sent after the kill: how long they waited for a new owner.
    orphan_ids = [
        rid for rid, s in run.sent.items() if s.partition in victim_parts and s.sent_at > kill_at[0]
    ]
    orphan_lat = run.latencies_ms(orphan_ids)
    out = {
        "replicas": len(cluster.replicas),
        "killed": victim,
        "killed_partitions": victim_parts,
        "rate": rate,
        "seconds": seconds,
        "kill_after_s": kill_after,
        "restarted": restart,
        "sent": rep["sent"],
        "answered": rep["answered"],
        "lost": rep["lost"],
        "duplicates": rep["duplicates"],
        "recovery_s": round(taken[0], 2) if taken else None,
        "orphaned_requests": len(orphan_ids),
        "orphaned_max_wait_ms": round(float(orphan_lat.max()), 1) if len(orphan_lat) else None,
        "p99_ms": rep["p99_ms"],
        "by_worker": rep["by_worker"],
    }
    out["targets"] = {
        "zero_lost": out["lost"] == 0,
        "recovery_le_30s": out["recovery_s"] is not None and out["recovery_s"] <= TARGET_RECOVERY_S,
    }
    say(f"  {out}")
    return out


def run_bench_scale(
    *,
    checkpoint: Path | None,
    replicas: list[int],
    requests: int,
    users: int,
    events_per_user: int = 5,
    partitions: int = 6,
    failover: bool = True,
    failover_rate: float = 30.0,
    failover_seconds: float = 40.0,
    kill_after: float = 10.0,
    failover_restart: bool = False,
    worker_env: dict[str, str] | None = None,
    broker_kind: str = "tansu",
    log: Any = None,
) -> dict[str, Any]:
    import json

    from genrec.ops.bench_stream import _train_tiny
    from genrec.ops.broker import new_broker

    def say(msg: str) -> None:
        print(f"[bench scale] {msg}", file=log or sys.stderr, flush=True)

    load_start = round(os.getloadavg()[0], 2)  # how busy the shared machine was, as `bench stream` records it
    work = Path(tempfile.mkdtemp(prefix="genrec-bench-scale-"))
    try:
        if checkpoint is None:
            checkpoint = work / "ckpt"
            say("training a tiny checkpoint on synthetic data")
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries the one JSON object
                _train_tiny(checkpoint)
        items = json.loads((checkpoint / "items.json").read_text())
        item_ids = [str(x) for x in (items if isinstance(items, list) else list(items.get("item_ids", items)))]
        user_ids = [str(u) for u in range(1, users + 1)]
        steps = []
        with new_broker(broker_kind) as broker:
            say(f"fresh {broker_kind} broker at {broker.bootstrap}")
            for n in replicas:
                fo = None
                if failover and n == max(replicas) and n >= 2:
                    fo = {"rate": failover_rate, "seconds": failover_seconds, "kill_after": kill_after,
                          "restart": failover_restart}
                steps.append(
                    _step(
                        broker.bootstrap,
                        broker.pid,
                        checkpoint,
                        work,
                        n,
                        partitions=partitions,
                        users=user_ids,
                        per_user=events_per_user,
                        item_ids=item_ids,
                        requests=requests,
                        failover=fo,
                        say=say,
                        worker_env=worker_env or {},
                    )
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = steps[0]["requests_per_s"] or 1e-9
    cores = os.cpu_count() or 1
    last = steps[-1]["cpu"]
    result: dict[str, Any] = {
        "bench": "scale",
        "broker": "tansu (embedded, memory)" if broker_kind == "tansu" else "kafka (Apache Kafka, one KRaft node)",
        "worker_env": {**BENCH_ENV, **(worker_env or {})},
        "machine": {"cpus": cores, "python": platform.python_version(),
                    "load_avg_1m": [load_start, round(os.getloadavg()[0], 2)]},
        "partitions": partitions,
        "users": users,
        "requests_per_step": requests,
        "steps": [{k: v for k, v in s.items() if k != "failover"} for s in steps],
        "requests_per_s": {str(s["replicas"]): s["requests_per_s"] for s in steps},
        "ratios": {str(s["replicas"]): round(s["requests_per_s"] / base, 2) for s in steps},
        "limit": (
            f"{last['cores_busy_machine']:.2f} of {cores} cores busy with {steps[-1]['replicas']} replicas "
            f"(this benchmark {last['cores_busy_ours']:.2f}, other jobs {last['cores_busy_others']:.2f})"
        ),
    }
    fo_steps = [s["failover"] for s in steps if "failover" in s]
    if fo_steps:
        result["failover"] = fo_steps[0]
    return result


def plot_scale(result: dict[str, Any], path: Path) -> Path:
    """Replicas against requests/s, p99 of the backlog on a second axis (ops/plots.py `scale_throughput`)."""
    from genrec.ops.plots import invoked_command, scale_throughput

    steps, m = result["steps"], result["machine"]
    load = m.get("load_avg_1m") or []
    load_text = f", 1-minute load average {load[0]:g} → {load[-1]:g}" if load else ""
    others = [s["cpu"]["cores_busy_others"] for s in steps if "cpu" in s]
    others_text = f"; other jobs {min(others):.2f}–{max(others):.2f} cores" if others else ""
    return scale_throughput(
        [s["replicas"] for s in steps], [s["requests_per_s"] for s in steps], path,
        p99_ms=[s.get("p99_ms") for s in steps],
        title=f"genrec bench scale: replicas vs throughput, {result['broker']}",
        subtitle=(f"{result['partitions']} partitions, a backlog of {result['requests_per_step']} requests per "
                  f"replica count, {m['cpus']} cores shared with other jobs{load_text}{others_text}"),
        command=invoked_command(),
        note="one torch thread per worker; answered/sent: " + ", ".join(
            f"{s['replicas']}: {s['answered']}/{s['requests']}" for s in steps) + f"; limit: {result.get('limit')}",
    )


TABLE_HEAD = (
    "| broker | replicas | answered | req/s | ratio | p50 ms | workers | req/s per worker core | broker cores "
    "| load gen | others | total |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def write_benchmarks_section(result: dict[str, Any], path: Path, command: str) -> None:
    # Which broker the run used ("tansu (embedded, memory)" -> "tansu"): the BENCHMARKS.md tables name it per row.
    broker_text = str(result.get("broker") or "tansu (embedded, memory)")  # `--broker kafka` runs name Kafka
    broker = broker_text.split(" ", 1)[0]
    rows = []
    for s in result["steps"]:
        cpu = s["cpu"]
        workers = sum(v for k, v in cpu["cores_busy_by_process"].items() if k not in ("broker", "load_generator"))
        rows.append(
            f"| {broker} | {s['replicas']} | {s['answered']}/{s['requests']} | {s['requests_per_s']:g} | "
            f"{result['ratios'][str(s['replicas'])]:.2f} | {s['p50_ms']} | {workers:.2f} | "
            f"{s['requests_per_s'] / workers if workers else 0:.0f} | "
            f"{cpu['cores_busy_by_process'].get('broker', 0):.2f} | "
            f"{cpu['cores_busy_by_process'].get('load_generator', 0):.2f} | {cpu['cores_busy_others']:.2f} | "
            f"{cpu['cores_busy_machine']:.2f} |"
        )
    first, last = result["steps"][0], result["steps"][-1]

    def workers_busy(step: dict[str, Any]) -> float:
        busy = step["cpu"]["cores_busy_by_process"]
        return sum(v for k, v in busy.items() if k not in ("broker", "load_generator"))

    others = sorted(s["cpu"]["cores_busy_others"] for s in result["steps"])

    def per_core(step: dict[str, Any]) -> float:
        busy = workers_busy(step)
        return step["requests_per_s"] / busy if busy else 0.0

    def broker_busy(step: dict[str, Any]) -> float:
        return float(step["cpu"]["cores_busy_by_process"].get("broker", 0.0))

    machine = [s["cpu"]["cores_busy_machine"] for s in result["steps"]]
    where = (
        f"The machine was {min(machine):.2f}–{max(machine):.2f} of {result['machine']['cpus']} cores busy in every "
        f"step, {others[0]:.2f}–{others[-1]:.2f} of them other jobs on this shared machine; the workers get what "
        f"those jobs leave ({workers_busy(first):.2f} cores with {first['replicas']} replica, "
        f"{workers_busy(last):.2f} with {last['replicas']}). Requests per worker core went from "
        f"{per_core(first):.0f} to {per_core(last):.0f}: each replica adds fixed work (its fetch loop, heartbeats, "
        f"and broker work: {broker_busy(first):.2f} → {broker_busy(last):.2f} cores) but no core, so here the "
        f"ceiling is the CPU, not the {result['partitions']} partitions."
    )
    fo = result.get("failover")
    fo_text = ""
    if fo:
        fo_text = (
            f"\n**Failover** ({fo['replicas']} replicas, {fo['rate']:g} req/s for {fo['seconds']:g} s, "
            f"`{fo['killed']}` SIGKILLed at {fo['kill_after_s']:g} s, owning partitions {fo['killed_partitions']}): "
            f"{fo['sent']} sent, **{fo['lost']} lost**, {fo['duplicates']} duplicates; first answer from a new "
            f"owner of a killed partition **{fo['recovery_s']} s** after the kill (target ≤ 30 s); requests sent to "
            f"those partitions after the kill waited at most {fo['orphaned_max_wait_ms']} ms.\n"
        )
    body = f"""{SECTION_START}
## Scale-out (issue 6)

`{command}` — {broker_text}, {result['partitions']} partitions, {result['users']} users,
a backlog of {result['requests_per_step']} requests per replica count, one torch thread per worker,
{result['machine']['cpus']} cores. req/s = answered / (last answer − first send); p50 is of a backlog, so it measures
the drain, not serving latency (see `genrec bench stream`). CPU columns are cores busy (1.00 = one core) over
the measured window, from /proc.

{TABLE_HEAD}
{chr(10).join(rows)}

Limit: {result['limit']}. {where}
{fo_text}{SECTION_END}"""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        _, tail = rest.split(SECTION_END, 1)
        text = head + body + tail
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)
