"""Your own data end to end (issue 20 item 1): `genrec train` / `genrec eval` on `--dataset interactions`, and
`genrec export-events` turning the events topic into a file that loader reads back, on the real embedded broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from genrec.model.data import synthetic_dataset
from genrec.model.interactions import load_interactions, write_interactions_csv
from genrec.model.tokens import Action
from genrec.ops.cli import _register, app
from genrec.schemas.messages import Event, EventType, encode
from typer.testing import CliRunner

from tests.conftest import both_brokers

_register()

# Action token → the event type a user's file would carry (the inverse of model.tokens.action_from_event).
_TYPES = {Action.POSITIVE: "click", Action.NEGATIVE: "impression", Action.PURCHASE: "purchase", Action.INTERACT: ""}


def _own_file(out: Path, users: int = 40) -> list[tuple[str, str, int, str, float | None]]:
    """A few hundred events of the generated data set as a user would export them: string ids, milliseconds."""
    ds = synthetic_dataset(n_users=users, n_items=50, events_per_user=8, seed=3)
    rows = [(f"customer {ds.user_ids[u]}", f"sku-{ds.item_ids[i - 1]}", int(t) * 1000, _TYPES[Action(int(a))], None)
            for u in range(ds.num_users) for i, a, t in zip(ds.items[u], ds.actions[u], ds.ts[u], strict=True)]
    write_interactions_csv(out / "interactions.csv", rows)
    (out / "items.csv").write_text("item_id,title,text,categories\n" + "".join(
        f"sku-{k},Product {k},,Group {k % 5}\n" for k in range(1, 51)))
    return rows


@pytest.mark.slow
def test_train_and_eval_on_your_own_file_report_the_popular_floor(tmp_path: Path) -> None:
    from genrec.model.baselines import evaluate_popularity

    rows = _own_file(tmp_path)
    assert 200 <= len(rows) <= 600
    runner, ckpt = CliRunner(), tmp_path / "ckpt"
    trained = runner.invoke(app, ["train", "--dataset", "interactions", "--data-dir", str(tmp_path), "--out",
                                  str(ckpt), "--epochs", "1", "--no-progress"])
    assert trained.exit_code == 0, trained.output
    assert "timestamps read as epoch milliseconds" in trained.output
    line = json.loads([x for x in trained.stdout.splitlines() if x.startswith("{")][-1])
    assert line["data"]["timestamp_unit"] == "milliseconds" and line["data"]["rows"] == len(rows)
    # The checkpoint's vocabulary is the file's own ids, as the worker will receive them.
    vocab = json.loads((ckpt / "items.json").read_text())
    vocab = vocab["item_ids"] if isinstance(vocab, dict) else vocab
    assert set(vocab) == {r[1] for r in rows}

    ran = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--dataset", "interactions", "--data-dir",
                              str(tmp_path), "--json"])
    assert ran.exit_code == 0, ran.output
    metrics = json.loads(ran.stdout.strip().splitlines()[-1])
    assert metrics["timestamp_unit"] == "milliseconds"
    pop = evaluate_popularity(load_interactions(tmp_path))
    for k in ("hr@10", "ndcg@10"):
        assert 0.0 <= metrics[k] <= 1.0
        assert metrics[f"popular_{k}"] == pytest.approx(pop[k], abs=1e-6)  # same users, split, seen-item rule
    assert metrics["users"] == pop["users"]

    rec = runner.invoke(app, ["recommend", "--checkpoint", str(ckpt), "--dataset", "interactions", "--data-dir",
                              str(tmp_path), "--user", "customer 1", "--k", "3"])
    assert rec.exit_code == 0 and "Product" in rec.output, rec.output  # titles from items.csv


def test_a_broken_file_is_a_usage_error_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu,i,soon\n")
    ran = CliRunner().invoke(app, ["train", "--dataset", "interactions", "--data-dir", str(tmp_path), "--out",
                                   str(tmp_path / "c"), "--epochs", "1"], env={"COLUMNS": "300"})
    assert ran.exit_code == 2 and "line 2: timestamp 'soon' is not a number" in ran.output, ran.output


async def _send(bootstrap: str, topic: str, values: list[tuple[bytes, bytes | None]]) -> None:
    from genrec.ops.kafka_clients import make_producer
    from genrec.ops.replay import ReplayItem, replay

    p = make_producer(bootstrap, one_record_batches=True, acks="all")
    await p.start()
    try:
        items = (ReplayItem("event", k, v, None) for k, v in values)  # type: ignore[arg-type]
        await replay(p, items, events_topic=topic, requests_topic=topic, rate=0, progress=False)
    finally:
        await p.stop()


@pytest.mark.integration
@pytest.mark.timeout(120)
@both_brokers
def test_export_events_round_trips_the_topic_into_a_file_the_loader_reads(any_bootstrap: str, tmp_path: Path) -> None:
    bootstrap = any_bootstrap
    from genrec.ops.replay import dataset_events
    from genrec.ops.topics import TopicSpec, create_topics

    src = tmp_path / "src"
    src.mkdir()
    _own_file(src, users=12)
    ds = load_interactions(src)
    topic = f"own{uuid.uuid4().hex[:8]}.events"
    asyncio.run(create_topics(bootstrap, [TopicSpec(topic, 3)]))
    events = list(dataset_events(ds, real_times=True))
    values = [(e.user_id.encode(), encode(e)) for e in events]
    query = Event(event_id="q1", user_id="customer 1", ts=events[0].ts, type=EventType.QUERY, query="shampoo")
    values += [(b"customer 1", encode(query)), (b"x", b"{not json"), (b"x", None),
               (events[0].user_id.encode(), encode(events[0]))]  # a redelivery: the same event_id again
    asyncio.run(_send(bootstrap, topic, values))

    out = tmp_path / "exported"
    ran = CliRunner().invoke(app, ["export-events", "--topic", topic, "--out", str(out), "--bootstrap", bootstrap,
                                   "--idle", "1"])
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    assert report["records"] == len(values) and report["written"] == len(events)
    assert report["skipped_queries"] == 1 and report["skipped_duplicates"] == 1
    assert report["undecodable_by_reason"] == {"not_json": 1, "empty": 1}

    back = load_interactions(out)
    assert back.load_report["timestamp_unit"] == "milliseconds"
    assert back.user_ids == ds.user_ids and back.item_ids == ds.item_ids
    for u in range(ds.num_users):
        np.testing.assert_array_equal(back.items[u], ds.items[u])
        np.testing.assert_array_equal(back.actions[u], ds.actions[u])
        np.testing.assert_array_equal(back.ts[u], ds.ts[u])
    again = CliRunner().invoke(app, ["export-events", "--topic", topic, "--out", str(out), "--bootstrap", bootstrap])
    assert again.exit_code == 1 and "--force" in again.output


@pytest.mark.slow
def test_bench_quality_takes_your_own_file_with_its_popular_row(tmp_path: Path) -> None:
    _own_file(tmp_path, users=30)
    ran = CliRunner().invoke(app, ["bench", "quality", "--dataset", "interactions", "--data-dir", str(tmp_path),
                                   "--epochs", "1", "--rows", "joint", "--json"])
    assert ran.exit_code == 0, ran.output
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert set(result["rows"]) == {"joint", "popular"}
    assert result["data"]["timestamp_unit"] == "milliseconds" and result["dataset"] == "interactions"


def test_the_demo_refuses_a_broken_file_instead_of_generating_data(tmp_path: Path) -> None:
    from genrec.ops.demo import DemoError, DemoOptions, _load_data

    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu,i\n")
    opts = DemoOptions(data_dir=tmp_path, dataset="interactions", checkpoint=None, epochs=1, events=1, requests=1,
                       k=10, rate=0.0, show=0, partitions=1, threads=1, timeout_s=10.0, json_out=False)
    with pytest.raises(DemoError, match="missing column timestamp"):
        _load_data(opts)
    _own_file(tmp_path, users=5)
    ds, name, real = _load_data(opts)
    assert (name, real) == ("interactions", True) and ds.num_users == 5
