"""Your own data: `interactions.csv` (or `.parquet`) and an optional `items.csv` → a `SequenceDataset`.

    interactions.csv   user_id,item_id,timestamp[,event_type,value]
    items.csv          item_id[,title,text,categories]

Ids are strings, stripped of surrounding whitespace as the message schemas strip them, at most
`schemas.messages.MAX_ID_LEN` characters, so that every id a checkpoint learns can also arrive on the events topic.
The vocabulary keeps them (`SequenceDataset.item_ids`, a checkpoint's `items.json`): the model's contiguous indices
1..N map back to the file's own ids.

Timestamps are epoch seconds or epoch milliseconds, decided once for the whole file: every value below 1e11 →
seconds (1e11 s is the year 5138), every value at or above → milliseconds (1e11 ms is March 1973); a file mixing
both is refused rather than guessed. The unit found is logged and kept in `SequenceDataset.load_report`.

`event_type` maps to the same action tokens the worker uses for the same events on `genrec.events`
(`model.tokens.action_from_event`): click, impression, purchase, rating (with `value`: ≥ 4 positive, below
negative; without: no label); empty or no column: an unlabelled interaction. Every item event forms the sequence,
negative ones too, as ML-100K's low ratings do and as the worker's histories do: the action token after each item
says how the user reacted, and the leave-one-out targets are each user's last two events whatever their type.
Keep only positive events in the file for a positives-only sequence. `query` events are refused (they have no
item). Exact duplicate rows (same user, item, timestamp, type and value) are kept once.

Rows are ordered per user by a stable sort on the timestamp (in the file's own unit, so milliseconds order events
within a second): ties keep the file's order, as the built-in loaders do (the data README's ML-100K note).

`genrec export-events` (ops/export_events.py) writes this format from the events topic.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from genrec.model.tokens import Action, action_from_event
from genrec.schemas.messages import MAX_ID_LEN

log = logging.getLogger(__name__)

NAME = "interactions"
REQUIRED = ("user_id", "item_id", "timestamp")
OPTIONAL = ("event_type", "value")
ITEM_COLUMNS = ("item_id", "title", "text", "categories")
CATEGORY_SEP = "|"  # categories: "Hair|Shampoo", as MovieLens separates genres
MS_THRESHOLD = 1e11
# Above this (in milliseconds: 2100-01-01) a timestamp is garbage, whatever its unit.
MAX_TS_MS = 4_102_444_800_000
EVENT_TYPES = ("click", "impression", "purchase", "rating")


class InteractionsError(ValueError):
    """The file is not in the format: the message names the file, the line (or row) and what is wrong."""


@dataclass(frozen=True)
class InteractionsLimits:
    """Bounds on what one load reads, checked before the rows are parsed (a wrong path can name a huge file)."""

    max_bytes: int = 4 * 1024**3
    max_rows: int = 30_000_000
    max_items_bytes: int = 1024**3


def interactions_path(data_dir: Path | str) -> Path:
    """DIR/interactions.csv or DIR/interactions.parquet (exactly one of them)."""
    data_dir = Path(data_dir)
    found = [p for p in (data_dir / "interactions.csv", data_dir / "interactions.parquet") if p.is_file()]
    if not found:
        raise FileNotFoundError(f"{data_dir}: no interactions.csv or interactions.parquet (columns "
                                f"{','.join(REQUIRED)}[,{','.join(OPTIONAL)}])")
    if len(found) > 1:
        raise InteractionsError(f"{data_dir}: both interactions.csv and interactions.parquet; keep one")
    return found[0]


def detect_unit(ts: np.ndarray, source: str = "timestamps") -> str:
    """"seconds" when every value is below 1e11, "milliseconds" when every value is at or above; else an error."""
    if len(ts) == 0:
        return "seconds"
    low, high = float(ts.min()), float(ts.max())
    if high < MS_THRESHOLD:
        return "seconds"
    if low >= MS_THRESHOLD:
        return "milliseconds"
    raise InteractionsError(f"{source}: timestamps mix seconds and milliseconds (smallest {low:.0f} is below 1e11, "
                            f"largest {high:.0f} is not); write them all in one unit")


def _id(raw: Any, column: str, where: str) -> str:
    value = "" if raw is None else str(raw).strip()
    if not value:
        raise InteractionsError(f"{where}: empty {column}")
    if len(value) > MAX_ID_LEN:
        raise InteractionsError(f"{where}: {column} of {len(value)} characters (at most {MAX_ID_LEN})")
    return value


def _number(raw: Any, column: str, where: str) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InteractionsError(f"{where}: {column} {str(raw)[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise InteractionsError(f"{where}: {column} {raw!r} is not finite")
    return value


class _Rows:
    """Validated rows, in file order, exact duplicates dropped."""

    def __init__(self, source: str, has_type: bool, has_value: bool) -> None:
        self.source, self.has_type, self.has_value = source, has_type, has_value
        self.users: list[str] = []
        self.items: list[str] = []
        self.ts: list[float] = []
        self.actions: list[int] = []
        self.duplicates = 0
        self._seen: set[tuple[str, str, float, str, float | None]] = set()

    def add(self, where: str, user: Any, item: Any, ts: Any, etype: Any, value: Any) -> None:
        u, i = _id(user, "user_id", where), _id(item, "item_id", where)
        t = _number(ts, "timestamp", where)
        if t is None:
            raise InteractionsError(f"{where}: empty timestamp (epoch seconds or milliseconds expected)")
        if t < 0 or t > MAX_TS_MS:
            raise InteractionsError(f"{where}: timestamp {ts!r} is outside epoch 0 .. 2100 (seconds or milliseconds)")
        v = _number(value, "value", where) if self.has_value else None
        kind = str(etype).strip().lower() if self.has_type and etype is not None else ""
        if kind == "":
            action = Action.INTERACT
        elif kind in EVENT_TYPES:
            action = action_from_event(kind, v)
        elif kind == "query":
            raise InteractionsError(f"{where}: a query event has no item; leave queries out of interactions")
        else:
            raise InteractionsError(f"{where}: event_type {str(etype)[:40]!r} is not one of "
                                    f"{', '.join(EVENT_TYPES)} (or empty)")
        key = (u, i, t, kind, v)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        self.users.append(u)
        self.items.append(i)
        self.ts.append(t)
        self.actions.append(int(action))


def _check_header(header: list[str], required: tuple[str, ...], source: str) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise InteractionsError(f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                f"(header: {','.join(header)[:200]!r}; expected {','.join(required)} first)")
    dup = sorted({n for n in names if names.count(n) > 1 and n})
    if dup:
        raise InteractionsError(f"{source}: column{'s' if len(dup) > 1 else ''} {', '.join(dup)} appear twice")
    return {n: k for k, n in enumerate(names)}


def _csv_rows(path: Path, limits: InteractionsLimits) -> Iterator[tuple[str, list[str]]]:
    """(where, fields) of each non-blank line after the header, header first as ("header", names)."""
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InteractionsError(f"{path}: line 1: {exc}") from None
        if header is None:
            raise InteractionsError(f"{path}: empty file (expected a header {','.join(REQUIRED)}…)")
        yield "header", header
        rows = 0
        while True:
            try:
                fields = next(reader, None)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InteractionsError(f"{path}: line {reader.line_num + 1}: {exc}") from None
            if fields is None:
                return
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            rows += 1
            if rows > limits.max_rows:
                raise InteractionsError(f"{path}: more than {limits.max_rows:,} rows (InteractionsLimits.max_rows)")
            if len(fields) != len(header):
                raise InteractionsError(f"{path}: line {reader.line_num}: {len(fields)} fields, the header has "
                                        f"{len(header)}")
            yield f"{path}: line {reader.line_num}", fields


def _read_csv(path: Path, limits: InteractionsLimits) -> _Rows:
    it = _csv_rows(path, limits)
    _, header = next(it)
    col = _check_header(header, REQUIRED, str(path))
    cu, ci, ct = col["user_id"], col["item_id"], col["timestamp"]
    ce, cv = col.get("event_type"), col.get("value")
    rows = _Rows(str(path), ce is not None, cv is not None)
    for where, f in it:
        rows.add(where, f[cu], f[ci], f[ct], f[ce] if ce is not None else None, f[cv] if cv is not None else None)
    return rows


def _read_parquet(path: Path, limits: InteractionsLimits) -> _Rows:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InteractionsError(f"{path}: reading Parquet needs pyarrow, which is not installed: "
                                "pip install 'genrec[parquet]' (or write interactions.csv)") from None
    try:
        pfile = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InteractionsError(f"{path}: not a readable Parquet file ({exc})") from None
    if pfile.metadata.num_rows > limits.max_rows:
        raise InteractionsError(f"{path}: {pfile.metadata.num_rows:,} rows, more than {limits.max_rows:,} "
                                "(InteractionsLimits.max_rows)")
    names = list(pfile.schema_arrow.names)
    col = _check_header(names, REQUIRED, str(path))
    table = pfile.read(columns=[names[col[c]] for c in (*REQUIRED, *OPTIONAL) if c in col])
    if table.num_rows == 0:
        raise InteractionsError(f"{path}: no rows")

    def column(name: str) -> list[Any]:
        arr = table.column(names[col[name]])
        if pa.types.is_timestamp(arr.type):  # a Parquet time column: epoch milliseconds, then the same checks
            arr = arr.cast(pa.timestamp("ms")).cast(pa.int64())
        return arr.to_pylist()

    data = {c: column(c) for c in (*REQUIRED, *OPTIONAL) if c in col}
    none = [None] * table.num_rows
    rows = _Rows(str(path), "event_type" in data, "value" in data)
    for k, (u, i, t, e, v) in enumerate(zip(data["user_id"], data["item_id"], data["timestamp"],
                                            data.get("event_type", none), data.get("value", none), strict=True)):
        rows.add(f"{path}: row {k + 1}", u, i, t, e, v)
    return rows


def load_interactions(data_dir: Path | str, limits: InteractionsLimits | None = None) -> Any:
    """DIR/interactions.{csv,parquet} → SequenceDataset named "interactions" (see the module docstring)."""
    from genrec.model.data import _build

    limits = limits or InteractionsLimits()
    path = interactions_path(data_dir)
    size = path.stat().st_size
    if size == 0:
        raise InteractionsError(f"{path}: empty file (expected a header {','.join(REQUIRED)}…)")
    if size > limits.max_bytes:
        raise InteractionsError(f"{path}: {size:,} bytes, more than {limits.max_bytes:,} (InteractionsLimits."
                                "max_bytes)")
    rows = _read_parquet(path, limits) if path.suffix == ".parquet" else _read_csv(path, limits)
    if not rows.users:
        raise InteractionsError(f"{path}: no rows after the header")
    ts = np.asarray(rows.ts, np.float64)
    unit = detect_unit(ts, str(path))
    # One stable sort by time over the whole file, then a stable grouping by user (model.data._build): each user's
    # events come out in time order, ties in file order. Sorted in the file's unit, before seconds are taken.
    order = np.argsort(ts, kind="stable")
    seconds = np.floor(ts / 1000.0 if unit == "milliseconds" else ts).astype(np.int64)
    # Object arrays: numpy's fixed-width str arrays drop trailing NULs, and an id must survive whole.
    users = np.array(rows.users, dtype=object)[order]
    items = np.array(rows.items, dtype=object)[order]
    actions = np.asarray(rows.actions, np.int8)[order]
    labels = set(np.unique(actions).tolist())
    # Feedback (action tokens, AUC) only where both kinds of label occur, as ML-100K's ratings give.
    has_feedback = bool(labels & {Action.POSITIVE, Action.PURCHASE}) and Action.NEGATIVE in labels
    ds = _build(NAME, users, items, actions, seconds[order], has_time=bool(len(np.unique(seconds)) > 1),
                has_feedback=has_feedback, sort_by_time=False)
    ds.load_report = {"file": str(path), "rows": len(rows.users) + rows.duplicates,
                      "duplicates_dropped": rows.duplicates, "timestamp_unit": unit}
    log.info("%s: %d rows (%d exact duplicates dropped), timestamps read as epoch %s (%s)", path,
             len(rows.users) + rows.duplicates, rows.duplicates, unit,
             "every value below 1e11" if unit == "seconds" else "every value at or above 1e11")
    return ds


def read_items_csv(path: Path | str, limits: InteractionsLimits | None = None) -> dict[str, Any]:
    """items.csv (item_id[,title,text,categories]) → {item id: ItemMeta}; categories split on '|'."""
    from genrec.model.queries import ItemMeta

    path = Path(path)
    limits = limits or InteractionsLimits()
    size = path.stat().st_size
    if size == 0:
        raise InteractionsError(f"{path}: empty file (expected a header {','.join(ITEM_COLUMNS)})")
    if size > limits.max_items_bytes:
        raise InteractionsError(f"{path}: {size:,} bytes, more than {limits.max_items_bytes:,}")
    it = _csv_rows(path, limits)
    _, header = next(it)
    col = _check_header(header, ("item_id",), str(path))
    if not any(c in col for c in ITEM_COLUMNS[1:]):
        raise InteractionsError(f"{path}: no title, text or categories column: nothing to read")
    out: dict[str, ItemMeta] = {}
    first: dict[str, str] = {}

    def get(f: list[str], name: str) -> str:
        return f[col[name]].strip() if name in col else ""

    for where, f in it:
        item = _id(f[col["item_id"]], "item_id", where)
        if item in out:
            raise InteractionsError(f"{where}: item_id {item!r} again (first at {first[item].rsplit(': ', 1)[-1]})")
        first[item] = where
        cats = tuple(dict.fromkeys(c.strip() for c in get(f, "categories").split(CATEGORY_SEP) if c.strip()))
        out[item] = ItemMeta(title=get(f, "title"), genres=cats, text=get(f, "text"))
    return out


def write_interactions_csv(path: Path | str, rows: Iterable[tuple[str, str, int, str, float | None]]) -> int:
    """Write (user_id, item_id, timestamp, event_type, value) rows in this format; returns the row count."""
    n = 0
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow([*REQUIRED, *OPTIONAL])
        for user, item, ts, etype, value in rows:
            w.writerow([user, item, ts, etype, "" if value is None else repr(float(value))])
            n += 1
    return n
