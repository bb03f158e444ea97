"""Your own data (model/interactions.py): any string ids survive, seconds vs milliseconds, order, clear errors."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from genrec.model.data import load_dataset, load_item_meta
from genrec.model.interactions import (
    MS_THRESHOLD,
    InteractionsError,
    InteractionsLimits,
    load_interactions,
    read_items_csv,
    write_interactions_csv,
)
from genrec.model.queries import item_text
from genrec.model.tokens import Action
from genrec.schemas.messages import MAX_ID_LEN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Any text a producer could send as an id: no lone surrogates (not UTF-8), no surrounding whitespace (the schemas
# strip it), not blank, within the schemas' bound.
ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24).filter(
    lambda s: s == s.strip() and bool(s))


def _write(tmp: Path, text: str, name: str = "interactions.csv") -> Path:
    (tmp / name).write_text(text, encoding="utf-8")
    return tmp


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(ids, ids), min_size=1, max_size=30))
def test_any_string_ids_survive_and_the_vocabulary_maps_back_to_them(events: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        rows = [(u, i, 1_600_000_000 + k, "click", None) for k, (u, i) in enumerate(events)]
        write_interactions_csv(Path(d) / "interactions.csv", rows)
        ds = load_interactions(d)
    assert sorted(ds.item_ids) == sorted({i for _, i in events})
    assert len(set(ds.item_ids)) == ds.num_items
    got = {u: [ds.item_ids[x - 1] for x in ds.items[k]] for k, u in enumerate(ds.user_ids)}
    want: dict[str, list[str]] = {}
    for u, i in events:
        want.setdefault(u, []).append(i)
    assert got == want  # every user, every event, in file (= time) order


@settings(max_examples=40, deadline=None)
@given(ts=st.lists(st.integers(0, int(MS_THRESHOLD) - 1) | st.integers(int(MS_THRESHOLD), 4_102_444_800_000),
                   min_size=1, max_size=20))
def test_seconds_below_1e11_milliseconds_above_and_a_mix_refused(ts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as d:
        write_interactions_csv(Path(d) / "interactions.csv", [("u", f"i{k}", t, "", None) for k, t in enumerate(ts)])
        seconds, millis = all(t < MS_THRESHOLD for t in ts), all(t >= MS_THRESHOLD for t in ts)
        if not (seconds or millis):
            with pytest.raises(InteractionsError, match="mix seconds and milliseconds"):
                load_interactions(d)
            return
        ds = load_interactions(d)
    assert ds.load_report["timestamp_unit"] == ("seconds" if seconds else "milliseconds")
    expect = sorted(t if seconds else t // 1000 for t in ts)
    assert ds.ts[0].tolist() == expect


def test_time_order_is_stable_and_milliseconds_order_within_a_second(tmp_path: Path) -> None:
    _write(tmp_path, "user_id,item_id,timestamp\n"
                     "u,c,1700000000900\nu,a,1700000000100\nu,b,1700000000100\nv,x,1700000005000\nu,d,1700000001000\n")
    ds = load_dataset("interactions", tmp_path)
    u = ds.user_ids.index("u")
    assert [ds.item_ids[i - 1] for i in ds.items[u]] == ["a", "b", "c", "d"]  # a, b tie: file order
    assert ds.ts[u].tolist() == [1_700_000_000] * 3 + [1_700_000_001]


def test_event_types_map_to_the_workers_actions_and_duplicates_are_dropped(tmp_path: Path) -> None:
    _write(tmp_path, "user_id,item_id,timestamp,event_type,value\n"
                     "u,a,1,click,\nu,b,2,impression,\nu,c,3,Purchase,\nu,d,4,rating,4.5\nu,e,5,rating,1\n"
                     "u,f,6,rating,\nu,g,7,,\nu,g,7,,\nu,g,7,click,\n")
    ds = load_interactions(tmp_path)
    assert ds.actions[0].tolist() == [Action.POSITIVE, Action.NEGATIVE, Action.PURCHASE, Action.POSITIVE,
                                      Action.NEGATIVE, Action.INTERACT, Action.INTERACT, Action.POSITIVE]
    assert ds.load_report["duplicates_dropped"] == 1 and ds.load_report["rows"] == 9
    assert ds.has_feedback and ds.load_report["timestamp_unit"] == "seconds"
    # Clicks only: no negative label, so no feedback task (as ML-1M/Amazon), the order-only setting.
    _write(tmp_path, "user_id,item_id,timestamp,event_type\nu,a,1,click\nu,b,2,click\n")
    assert not load_interactions(tmp_path).has_feedback


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty file"),
    ("user_id,item_id,timestamp\n", "no rows"),
    ("user,item_id,timestamp\nu,i,1\n", "missing column user_id"),
    ("item_id\ni\n", "missing columns user_id, timestamp"),
    ("user_id,item_id,timestamp,item_id\nu,i,1,j\n", "item_id appear twice"),
    ("user_id,item_id,timestamp\nu,i,yesterday\n", r"line 2: timestamp 'yesterday' is not a number"),
    ("user_id,item_id,timestamp\nu,i,\n", "line 2: empty timestamp"),
    ("user_id,item_id,timestamp\nu,i,nan\n", "not finite"),
    ("user_id,item_id,timestamp\nu,i,-5\n", "outside epoch"),
    ("user_id,item_id,timestamp\nu,i,1\nu,j\n", "line 3: 2 fields, the header has 3"),
    ("user_id,item_id,timestamp\n ,i,1\n", "line 2: empty user_id"),
    (f"user_id,item_id,timestamp\nu,{'x' * (MAX_ID_LEN + 1)},1\n", "item_id of 129 characters"),
    ("user_id,item_id,timestamp,event_type\nu,i,1,view\n", "event_type 'view' is not one of"),
    ("user_id,item_id,timestamp,event_type\nu,i,1,query\n", "a query event has no item"),
    ("user_id,item_id,timestamp,value\nu,i,1,five\n", "value 'five' is not a number"),
])
def test_format_errors_name_the_file_line_and_problem(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path, text)
    with pytest.raises(InteractionsError, match=message) as err:
        load_dataset("interactions", tmp_path)
    assert "interactions.csv" in str(err.value)


def test_missing_ambiguous_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no interactions\.csv or interactions\.parquet"):
        load_interactions(tmp_path)
    _write(tmp_path, "user_id,item_id,timestamp\n" + "".join(f"u,i{k},{k}\n" for k in range(5)))
    with pytest.raises(InteractionsError, match="more than 4 rows"):
        load_interactions(tmp_path, InteractionsLimits(max_rows=4))
    with pytest.raises(InteractionsError, match="more than 10 "):
        load_interactions(tmp_path, InteractionsLimits(max_bytes=10))
    (tmp_path / "interactions.parquet").write_bytes(b"PAR1")
    with pytest.raises(InteractionsError, match=r"both interactions\.csv and interactions\.parquet"):
        load_interactions(tmp_path)


def test_parquet_is_read_with_pyarrow_or_refused_with_the_install_line(tmp_path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "interactions.parquet").write_bytes(b"PAR1")
        with pytest.raises(InteractionsError, match=r"needs pyarrow.*genrec\[parquet\]"):
            load_interactions(tmp_path)
        return
    table = pa.table({"user_id": [7, 7, 8], "item_id": ["a", "b", "a"],
                      "timestamp": pa.array([1_700_000_000_000, 1_700_000_001_000, 1_700_000_002_000],
                                            pa.timestamp("ms")),
                      "event_type": ["click", None, "impression"]})
    pq.write_table(table, tmp_path / "interactions.parquet")
    ds = load_interactions(tmp_path)
    assert ds.user_ids == ["7", "8"] and ds.load_report["timestamp_unit"] == "milliseconds"
    assert ds.ts[0].tolist() == [1_700_000_000, 1_700_000_001]
    assert ds.actions[0].tolist() == [Action.POSITIVE, Action.INTERACT]


def test_items_csv_gives_titles_categories_and_text(tmp_path: Path) -> None:
    _write(tmp_path, "user_id,item_id,timestamp\nu,sku-1,1\nu,sku-2,2\nu,sku-1,3\n")
    _write(tmp_path, 'item_id,title,text,categories\nsku-1,Blue shampoo,"Gentle, daily",Hair | Shampoo\n'
                     "unused,Other,,\n", "items.csv")
    ds = load_dataset("interactions", tmp_path)
    meta = load_item_meta(ds, tmp_path)
    assert meta["sku-1"].genres == ("Hair", "Shampoo")
    assert item_text(meta["sku-1"]) == "Blue shampoo. Genres: Hair, Shampoo Gentle, daily"
    assert "sku-2" not in meta  # an item without a row has no metadata; no items.csv at all: none
    (tmp_path / "items.csv").unlink()
    assert load_item_meta(ds, tmp_path) == {}


@pytest.mark.parametrize(("text", "message"), [
    ("item_id,title\na,A\na,B\n", r"line 3: item_id 'a' again \(first at line 2\)"),
    ("id,title\na,A\n", "missing column item_id"),
    ("item_id,price\na,3\n", "no title, text or categories column"),
    ("", "empty file"),
])
def test_items_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path, text, "items.csv")
    with pytest.raises(InteractionsError, match=message):
        read_items_csv(tmp_path / "items.csv")


def test_the_built_dataset_matches_the_leave_one_out_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [(f"user {u}", f"item/{int(rng.integers(20))}", 1_650_000_000 + 60 * k, "click", None)
            for u in range(6) for k in range(5)]
    write_interactions_csv(tmp_path / "interactions.csv", rows)
    ds = load_interactions(tmp_path)
    assert ds.num_users == 6 and ds.num_events == 30 and all(len(x) == 5 for x in ds.items)
    assert ds.summary()["timestamp_unit"] == "seconds" and ds.has_time


def test_search_queries_come_from_items_csv_and_their_noise_from_its_own_categories(tmp_path: Path) -> None:
    from genrec.model.search import search_data_for

    rows = [(f"u{u}", f"s{(u + k) % 6}", 1_650_000_000 + k, "click", None) for u in range(8) for k in range(6)]
    write_interactions_csv(tmp_path / "interactions.csv", rows)
    _write(tmp_path, "item_id,title,categories\n" + "".join(
        f"s{k},Bar {k},{'Soap' if k % 2 else 'Hair'}|{'Face' if k % 3 else 'Body'}\n" for k in range(6)), "items.csv")
    search = search_data_for(load_interactions(tmp_path), tmp_path, "hashed", share=1.0, noise=1.0)
    words = {w for t in (*search.texts, *search.target_texts) for w in t.split()}
    assert words and words <= {"soap", "hair", "face", "body", "bar", *(str(k) for k in range(6))}
