"""The whole bad-input matrix and a hypothesis-generated fuzz batch against one running worker.

Every bad message is interleaved with a good one. Checked: each rejected message has exactly one dead
letter carrying its real source position (read back from the source topic) and its reason; every good
request is answered; cold items, cold users, duplicates and late events behave as README documents;
the reject counters add up; the web port answers nothing but health, ready and metrics.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from genrec.ops.bench_stream import http_get
from genrec.schemas.messages import (
    MAX_MESSAGE_BYTES,
    DeadLetter,
    Event,
    RecRequest,
    RecResult,
    check_not_ahead,
    decode,
    encode,
    rejection,
    truncate_raw,
)
from genrec.streams import history_codec
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import both_brokers_full
from tests.schemas.bad_inputs import BAD_EVENTS, BAD_REQUESTS, good_event, good_request
from tests.streams.conftest import WorkerHandle, produce, read_until, values

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

NOW = int(time.time() * 1000)
MAX_AHEAD_MS = 86_400_000  # the worker's default max_ahead_s
MONTH_MS = 30 * MAX_AHEAD_MS
ITEMS = [str(i) for i in range(1, 301)]  # the synthetic data set's vocabulary

Record = tuple[str, bytes | None, bytes | None]


def _ev(user: str, item: str, ts: int, eid: str | None = None, **kw: Any) -> bytes:
    return encode(
        Event(event_id=eid or f"{user}-{uuid.uuid4().hex[:8]}", user_id=user, ts=ts, type="click", item_id=item, **kw)
    )


def _req(user: str, rid: str, k: int = 5, query: str | None = None) -> bytes:
    return encode(RecRequest(request_id=rid, user_id=user, ts=NOW + 60_000, k=k, query=query))


def _check(model: type, raw: bytes | None) -> Any:
    """What the worker does to a value: decode, then refuse timestamps far ahead of the clock."""
    msg = decode(model, raw)
    check_not_ahead(msg.ts, MAX_AHEAD_MS)
    return msg


def _fuzz_batch(n: int) -> list[tuple[str, bytes]]:
    """(kind, raw) drawn by hypothesis: random bytes and near-valid JSON of both message kinds."""
    out: list[tuple[str, bytes]] = []
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    ev_fields = ["event_id", "user_id", "ts", "item_id", "value", "schema_version", "extra"]  # never "type":
    rq_fields = ["request_id", "user_id", "ts", "k", "query", "exclude_seen", "extra"]  # no query events

    def near(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[bytes]:
        return st.builds(
            lambda ch, drop: json.dumps(
                {k: v for k, v in {**base, **ch}.items() if k not in drop}, allow_nan=True
            ).encode(),
            st.dictionaries(st.sampled_from(fields), scalars, max_size=3),
            st.sets(st.sampled_from(fields), max_size=1),
        )

    strategy = st.one_of(
        st.tuples(st.sampled_from(["event", "request"]), st.binary(max_size=300)),
        st.tuples(st.just("event"), near(good_event(user_id="fz", item_id="7", ts=NOW), ev_fields)),
        st.tuples(st.just("request"), near(good_request(user_id="fz", ts=NOW), rq_fields)),
    )

    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def collect(x: tuple[str, bytes]) -> None:
        out.append(x)

    collect()
    return out


@both_brokers_full
def test_bad_input_matrix_and_fuzz_against_the_worker(worker_factory) -> None:
    w: WorkerHandle = worker_factory()
    w.start()
    t = w.topics
    records: list[Record] = []
    good_request_ids: list[str] = []
    good_item_events = 0

    # The matrix, each bad message followed by a good one that must be served.
    for i, (_, raw, _) in enumerate(BAD_EVENTS):
        records.append((t.events, b"bad-user", raw))
        records.append((t.events, f"after-{i}".encode(), _ev(f"after-{i}", ITEMS[i], NOW + i)))
        good_item_events += 1
    for i, (_, raw, _) in enumerate(BAD_REQUESTS):
        records.append((t.requests, b"bad-user", raw))
        rid = f"good-after-bad-{i}"
        records.append((t.requests, b"after-0", _req("after-0", rid)))
        good_request_ids.append(rid)

    # Within the schema's static bounds but a month ahead of the clock: would pin the user's newest event.
    ahead = encode(Event(event_id="ahead", user_id="ahead", ts=NOW + MONTH_MS, type="click", item_id="3"))
    records.append((t.events, b"ahead", ahead))
    records.append((t.requests, b"ahead", encode(RecRequest(request_id="ahead", user_id="ahead", ts=NOW + MONTH_MS))))
    # Cold item: an id the model does not know is kept in the history, ignored by the model.
    records.append((t.events, b"cold-items", _ev("cold-items", "not-in-vocabulary", NOW)))
    records.append((t.events, b"cold-items", _ev("cold-items", "also-unknown", NOW + 1)))
    good_item_events += 2
    # Out-of-order timestamps: kept in time order. Duplicate event ids: appended once.
    for j, ts in enumerate((NOW + 30, NOW + 10, NOW + 20)):
        records.append((t.events, b"late", _ev("late", ITEMS[j], ts)))
    good_item_events += 3
    dup = _ev("dup", "5", NOW, eid="the-same-event")
    records += [(t.events, b"dup", dup), (t.events, b"dup", dup)]
    good_item_events += 1
    # A wrong key is not an error: the event is re-published under its user and served there.
    records.append((t.events, b"wrong-key", _ev("rekeyed", "9", NOW)))
    good_item_events += 1
    produce(w.bootstrap, records)
    w.wait_counter("genrec_events_total", good_item_events, outcome="appended", timeout_s=60)
    assert w.wait_counter("genrec_events_total", 1, outcome="duplicate") == 1

    # Requests for them: cold users (never seen: popular; with a query: search), cold items, and a duplicate.
    more: list[Record] = []
    for user, rid, query in [
        ("ghost", "cold-user", None),
        ("ghost2", "cold-user-query", "adventure genre2"),
        ("cold-items", "cold-items-user", None),
        ("late", "late-user", None),
        ("dup", "dup-req", None),
        ("dup", "dup-req", None),  # the same request_id twice: each delivery is answered
    ]:
        more.append((t.requests, user.encode(), _req(user, rid, k=7, query=query)))
        good_request_ids.append(rid)

    # The fuzz batch: predicted locally by the same decoder; each bad one is dead-lettered, each valid
    # request answered.
    fuzz = _fuzz_batch(120)
    for kind, raw in fuzz:
        topic = t.events if kind == "event" else t.requests
        more.append((topic, b"fz", raw))
        try:
            msg = _check(Event if kind == "event" else RecRequest, raw)
        except ValueError:
            continue
        if isinstance(msg, RecRequest):
            good_request_ids.append(msg.request_id)
    # The next good request after the fuzz is still served.
    more.append((t.requests, b"after-0", _req("after-0", "after-fuzz")))
    good_request_ids.append("after-fuzz")
    produce(w.bootstrap, more)

    # Every good request answered exactly once per delivery.
    want = Counter(good_request_ids)
    recs = read_until(w.bootstrap, t.results, lambda r: len(r) >= len(good_request_ids), timeout_s=90)
    time.sleep(1.0)
    recs = read_until(w.bootstrap, t.results, lambda r: len(r) > len(good_request_ids), timeout_s=2)
    results = [RecResult.model_validate(v) for v in values(recs)]
    got = Counter(r.request_id for r in results)
    assert got == want, f"missing {want - got}, unexpected {got - want}\n{w.log_tail()}"
    by_id: dict[str, list[RecResult]] = {}
    for r in results:
        by_id.setdefault(r.request_id, []).append(r)
    for rid in ("cold-user", "cold-user-query", "cold-items-user", "late-user", "dup-req"):
        assert all(len(r.items) == 7 for r in by_id[rid]), rid
    # Same request, same history, same model: the duplicate's list is the same list.
    a, b = by_id["dup-req"]
    assert [i.item_id for i in a.items] == [i.item_id for i in b.items]
    # A user whose only items are unknown to the model is a cold user: the popular list.
    assert [i.item_id for i in by_id["cold-items-user"][0].items] == [i.item_id for i in by_id["cold-user"][0].items]

    # Dead letters: one per rejected message, each pointing at its real source record, with its reason.
    expected_dl: Counter[tuple[str, str, str]] = Counter()
    for topic, _, raw in records + more:
        model = Event if topic == t.events else RecRequest
        try:
            _check(model, raw)
        except ValueError as exc:
            expected_dl[(topic, truncate_raw(raw), rejection(exc, raw)[0])] += 1
    n_dl = sum(expected_dl.values())
    assert n_dl >= len(BAD_EVENTS) + len(BAD_REQUESTS)
    dls = [
        DeadLetter.model_validate(v) for v in values(read_until(w.bootstrap, t.deadletter, lambda r: len(r) >= n_dl))
    ]
    got_dl = Counter((d.source_topic, d.raw, d.error.split(":", 1)[0]) for d in dls)
    assert got_dl == expected_dl, f"missing {expected_dl - got_dl}, unexpected {got_dl - expected_dl}"
    sources = (t.events, t.requests)
    src: dict[tuple[str, int, int], Any] = {}
    for topic in sources:
        # Everything was produced long ago: a few quiet seconds read the whole topic.
        for r in read_until(w.bootstrap, topic, lambda r: False, timeout_s=4):
            src[(topic, r.partition, r.offset)] = r
    redrivable = 0
    for d in dls:
        assert (d.source_topic, d.partition, d.offset) in src, d
        rec = src[(d.source_topic, d.partition, d.offset)]
        assert truncate_raw(rec.value) == d.raw
        # The record whole, as it came (issue 19 item 9): what `genrec deadletters redrive` sends again.
        assert d.reason == d.reason_name == d.error.split(":", 1)[0]
        assert d.timestamp_ms == rec.timestamp
        if rec.value is None or len(rec.value) > MAX_MESSAGE_BYTES:
            assert d.truncated and not d.redrivable
            continue
        key, value, headers = d.record()
        assert (key, value) == (rec.key, rec.value)
        assert headers == [(k, v) for k, v in (rec.headers or [])] and d.redrives == 0
        redrivable += 1
    assert redrivable >= len(BAD_EVENTS) + len(BAD_REQUESTS) - 6

    # The state: cold items kept, late events in time order, the duplicate once, the rekeyed event kept.
    changelog = f"{w.app_id}-user_history-changelog"
    latest: dict[bytes, bytes] = {}
    for r in read_until(w.bootstrap, changelog, lambda r: False, timeout_s=4):
        latest[r.key] = r.value
    hist = {k.decode(): history_codec.decode(v) for k, v in latest.items()}  # every value decodes
    assert hist["cold-items"].item_ids == ["not-in-vocabulary", "also-unknown"]
    assert hist["late"].ts_ms.tolist() == [NOW + 10, NOW + 20, NOW + 30]
    assert hist["late"].item_ids == [ITEMS[1], ITEMS[2], ITEMS[0]]
    assert hist["dup"].item_ids == ["5"]
    assert hist["rekeyed"].item_ids == ["9"]
    assert "bad-user" not in hist and "ahead" not in hist

    # Counters: dead letters by topic and by reason add up to what was sent.
    m = w.metrics()
    by_reason = Counter()
    for (topic, _, reason), n in expected_dl.items():
        by_reason[(topic, reason)] += n
    for (topic, reason), n in by_reason.items():
        assert m.get(f'genrec_rejected_total{{reason="{reason}",source_topic="{topic}"}}') == n, (topic, reason)
    for topic in sources:
        n = sum(c for (tp, _), c in by_reason.items() if tp == topic)
        assert m.get(f'genrec_dead_letters_total{{source_topic="{topic}"}}') == n

    # Nothing but health, ready and metrics on the web port.
    for path in ("/health", "/ready", "/metrics"):
        assert http_get(w.port, path)[0] == 200
    for path in ("/", "/router/", "/table/user_history/", f"/table/user_history/{'dup'}/", "/graph/", "/stats/"):
        assert http_get(w.port, path)[0] == 404, path
    assert w.proc.poll() is None, "the worker must still be running"
    print(
        f"bad input: {len(records) + len(more)} messages ({len(BAD_EVENTS) + len(BAD_REQUESTS)} matrix cases, "
        f"{len(fuzz)} fuzz), {n_dl} dead letters, {len(results)} results for {len(good_request_ids)} good requests"
    )


def test_a_worker_refuses_a_damaged_checkpoint_with_a_clear_error(worker_factory, checkpoint, tmp_path) -> None:
    import shutil

    bad = tmp_path / "bad-ckpt"
    shutil.copytree(checkpoint, bad)
    weights = bad / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    weights.write_bytes(bytes(raw))
    w: WorkerHandle = worker_factory()
    w.checkpoint = bad
    with pytest.raises(AssertionError, match="exited with status"):
        w.start(ready_timeout_s=90)
    assert w.proc.returncode != 0
    log = w.log_path.read_text(errors="replace")
    assert "CheckpointError" in log and "sha256" in log
