"""Fault injection for `genrec worker` child processes of the tests; never on a production path.

A test puts this directory on the child's PYTHONPATH, so Python imports it at start-up. With
GENREC_TEST_LOSE_RESTORE="partition:first:count" set, the worker's Kafka client takes changelog records
at offsets first .. first+count-1 of that partition from the broker (its position moves past them) but they never reach
Faust's recovery, once each: the state the scale-out test's hang showed (RELIABILITY.md), made on purpose.
Without a remedy the recovery then waits for them forever.
"""

from __future__ import annotations

import os

_SPEC = os.environ.get("GENREC_TEST_LOSE_RESTORE")

if _SPEC:
    import sys

    from genrec.streams import transport

    _partition, _first, _count = (int(x) for x in _SPEC.split(":"))
    _lost: set[tuple[str, int]] = set()

    def _lose(value: object) -> bool:
        message = getattr(value, "message", None)
        if message is None or not message.topic.endswith("-changelog") or message.partition != _partition:
            return False
        key = (message.topic, message.offset)
        if not _first <= message.offset < _first + _count or key in _lost:
            return False
        _lost.add(key)
        print(
            f"inject: lost changelog record {message.topic}[{message.partition}]@{message.offset}",
            file=sys.stderr,
            flush=True,
        )
        return True

    # Faust's conductor hands a record to a buffer with put_nowait_enhanced, or with put when it is full.
    _put = transport._GenrecQueue.put
    _put_nowait_enhanced = transport._GenrecQueue.put_nowait_enhanced

    async def _lossy_put(self, value, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not _lose(value):
            await _put(self, value, *args, **kwargs)

    def _lossy_put_nowait_enhanced(self, value, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not _lose(value):
            _put_nowait_enhanced(self, value, *args, **kwargs)

    transport._GenrecQueue.put = _lossy_put  # type: ignore[method-assign]
    transport._GenrecQueue.put_nowait_enhanced = _lossy_put_nowait_enhanced  # type: ignore[method-assign]


# With GENREC_TEST_FAIL_CHANGELOG="key:n:marker[,key:n:marker…]", the worker's first changelog record for that
# table key whose history holds n events or more (the write that carries the user's n-th event, coalesced with
# others or not) is never sent: its send fails 3 s later, as a record the broker did not confirm within the
# request timeout would (meanwhile Faust's periodic commits go on). Once per marker file (created when it fires),
# so that a restarted worker runs clean.
_FAIL = os.environ.get("GENREC_TEST_FAIL_CHANGELOG")

if _FAIL:
    import asyncio
    import sys
    from pathlib import Path

    from aiokafka.errors import KafkaTimeoutError
    from faust.transport.drivers import aiokafka as _faust_aiokafka
    from genrec.streams import history_codec as _history_codec

    _rules = [(k.encode(), int(n), Path(m)) for k, n, m in (spec.split(":", 2) for spec in _FAIL.split(","))]
    _send = _faust_aiokafka.Producer.send

    async def _failing_send(self, topic, key, value, *args, **kwargs):  # type: ignore[no-untyped-def]
        if topic.endswith("-changelog") and key is not None:
            for k, n, marker in _rules:
                if key == k and len(_history_codec.decode(value)) >= n and not marker.exists():
                    marker.write_text(topic)
                    print(f"inject: changelog send {topic} key={k.decode()} (event {n}) refused", file=sys.stderr,
                          flush=True)
                    loop = asyncio.get_running_loop()
                    fut = loop.create_future()
                    error = KafkaTimeoutError("injected: the broker did not confirm the record")
                    loop.call_later(3.0, fut.set_exception, error)
                    return fut
        return await _send(self, topic, key, value, *args, **kwargs)

    _faust_aiokafka.Producer.send = _failing_send  # type: ignore[method-assign]


# With GENREC_TEST_POISON=crash|hang, the inference child dies (crash) or never answers (hang) on any batch
# holding a request with k == POISON_K: a request that poisons the model, on purpose.
_POISON = os.environ.get("GENREC_TEST_POISON")
POISON_K = 977

if _POISON:
    import multiprocessing
    import sys
    import time

    from genrec.streams import serving as _serving

    _serve_batch = _serving.serve_batch

    def _poisoned_serve_batch(rec, items):  # type: ignore[no-untyped-def]
        if any(x.k == POISON_K for x in items) and multiprocessing.current_process().name == "genrec-infer":
            print(f"inject: poison request in a batch of {len(items)}: {_POISON}", file=sys.stderr, flush=True)
            if _POISON == "crash":
                os._exit(3)
            time.sleep(3600)
        return _serve_batch(rec, items)

    _serving.serve_batch = _poisoned_serve_batch
