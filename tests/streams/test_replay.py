"""Replay: global time order, shifted timestamps that pass the schemas, requests interleaved, pacing."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from genrec.model.data import load_dataset, synthetic_dataset
from genrec.ops.replay import RateLimiter, dataset_events, replay_items
from genrec.schemas.messages import Event, RecRequest, decode


def test_events_in_global_time_order_with_relative_times_kept():
    ds = synthetic_dataset(n_users=30, n_items=50, events_per_user=10)
    now = 1_800_000_000_000
    evs = list(dataset_events(ds, now_ms=now))
    assert len(evs) == ds.num_events
    ts = [e.ts for e in evs]
    assert ts == sorted(ts) and ts[-1] == now
    # The shift is one constant: each user's gaps are the data set's gaps.
    u = ds.user_ids[0]
    mine = [e for e in evs if e.user_id == u]
    assert np.diff([e.ts for e in mine]).tolist() == (np.diff(ds.ts[0]) * 1000).tolist()
    assert [e.item_id for e in mine] == [ds.item_ids[i - 1] for i in ds.items[0]]
    assert len({e.event_id for e in evs}) == len(evs)


def test_ml100k_slice_is_schema_valid(data_dir):
    ds = load_dataset("ml-100k", data_dir)
    evs = list(dataset_events(ds, limit=500))
    assert len(evs) == 500
    for e in evs:
        Event.model_validate(e.model_dump())
        assert e.type.value in ("click", "impression")


def test_ml100k_backfill_with_its_real_1997_times_is_schema_valid(data_dir):
    ds = load_dataset("ml-100k", data_dir)
    evs = list(dataset_events(ds, limit=500, real_times=True))
    assert [e.ts for e in evs][:3] == sorted(int(t) * 1000 for u in range(len(ds.user_ids)) for t in ds.ts[u])[:3]
    for e in evs:
        assert decode(Event, e.model_dump_json()) == e
        assert 1997 <= time.gmtime(e.ts / 1000).tm_year <= 1998


def test_requests_every_m_events():
    ds = synthetic_dataset(n_users=5, n_items=20, events_per_user=10)
    items = list(replay_items(dataset_events(ds, limit=25), requests_every=10, k=7))
    kinds = [i.topic_kind for i in items]
    assert kinds.count("event") == 25 and kinds.count("request") == 2
    assert kinds[10] == "request" and kinds[21] == "request"
    req = decode(RecRequest, items[10].value)
    ev = decode(Event, items[9].value)
    assert req.user_id == ev.user_id and req.k == 7 and items[10].key == ev.user_id.encode()


async def test_rate_limiter_paces():
    lim = RateLimiter(200.0)
    t0 = time.perf_counter()
    for _ in range(40):
        await lim.wait()
    assert 0.15 <= time.perf_counter() - t0 < 1.0
    fast = RateLimiter(0)
    t0 = time.perf_counter()
    for _ in range(1000):
        await fast.wait()
    assert time.perf_counter() - t0 < 0.5
    await asyncio.sleep(0)
