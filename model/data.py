"""Data sets as per-user event sequences (item, action, timestamp), and the leave-one-out split.

Readers take a path and read the standard files in place; nothing is ever copied into the project.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from genrec.model.tokens import Action

if TYPE_CHECKING:
    from genrec.model.queries import ItemMeta

DATASETS = ("ml-100k", "ml-1m", "amazon", "amazon-beauty", "amazon-sports", "synthetic", "interactions")


@dataclass
class SequenceDataset:
    name: str
    item_ids: list[str]  # vocabulary: index i (1-based) ↔ item_ids[i - 1], the data set's own id
    user_ids: list[str]
    items: list[np.ndarray]  # per user, int32 vocabulary indices, oldest first
    actions: list[np.ndarray]  # per user, int8 Action
    ts: list[np.ndarray]  # per user, int64 seconds (all zero when the data set has order only)
    has_time: bool
    has_feedback: bool
    # Synthetic data carries its own item metadata (title, genres); real sets read theirs from disk.
    synthetic_meta: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # What a loader of user files found (model/interactions.py: rows, duplicates dropped, timestamp unit).
    load_report: dict[str, object] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_events(self) -> int:
        return int(sum(len(x) for x in self.items))

    def item_index(self) -> dict[str, int]:
        return {raw: i + 1 for i, raw in enumerate(self.item_ids)}

    def summary(self) -> dict[str, object]:
        return {"dataset": self.name, "users": self.num_users, "items": self.num_items, "events": self.num_events,
                "has_time": self.has_time, "has_feedback": self.has_feedback, **self.load_report}


def _vocab(raw_items: np.ndarray) -> tuple[list[str], dict[str, int]]:
    uniq = sorted(set(raw_items.tolist()), key=lambda s: (len(s), s) if s.isdigit() else (1 << 30, s))
    return uniq, {raw: i + 1 for i, raw in enumerate(uniq)}


def _group(users: np.ndarray, *cols: np.ndarray) -> Iterator[tuple[str, list[np.ndarray]]]:
    """Group rows by user keeping the original row order within each user (stable)."""
    order = np.argsort(users, kind="stable")
    u_sorted = users[order]
    bounds = np.flatnonzero(u_sorted[1:] != u_sorted[:-1]) + 1
    for idx in np.split(order, bounds):
        if len(idx):
            yield str(users[idx[0]]), [c[idx] for c in cols]


def _build(name: str, users: np.ndarray, raw_items: np.ndarray, actions: np.ndarray, ts: np.ndarray,
           has_time: bool, has_feedback: bool, sort_by_time: bool) -> SequenceDataset:
    item_ids, index = _vocab(raw_items)
    idx = np.fromiter((index[r] for r in raw_items.tolist()), dtype=np.int32, count=len(raw_items))
    user_ids, seq_items, seq_actions, seq_ts = [], [], [], []
    groups = sorted(_group(users, idx, actions, ts), key=lambda g: (len(g[0]), g[0]))
    for user, (it, ac, t) in groups:
        if sort_by_time:
            o = np.argsort(t, kind="stable")  # stable: ties keep file order (data README)
            it, ac, t = it[o], ac[o], t[o]
        user_ids.append(user)
        seq_items.append(it.astype(np.int32))
        seq_actions.append(ac.astype(np.int8))
        seq_ts.append(t.astype(np.int64))
    return SequenceDataset(name, item_ids, user_ids, seq_items, seq_actions, seq_ts, has_time, has_feedback)


def _dir(data_dir: Path, sub: str) -> Path:
    data_dir = Path(data_dir)
    return data_dir / sub if (data_dir / sub).is_dir() else data_dir


def load_ml100k(data_dir: Path) -> SequenceDataset:
    path = _dir(data_dir, "ml-100k") / "u.data"
    raw = np.loadtxt(path, dtype=np.int64, delimiter="\t")
    if raw.ndim != 2 or raw.shape[1] != 4:
        raise ValueError(f"{path}: expected 4 tab-separated columns (user, item, rating, unix seconds)")
    rating = raw[:, 2]
    actions = np.where(rating >= 4, Action.POSITIVE, Action.NEGATIVE).astype(np.int8)
    return _build("ml-100k", raw[:, 0].astype(str), raw[:, 1].astype(str), actions, raw[:, 3],
                  has_time=True, has_feedback=True, sort_by_time=True)


def load_ml1m(data_dir: Path) -> SequenceDataset:
    path = _dir(data_dir, "ml-1m") / "ml-1m_seq_timeordered.txt.gz"
    users: list[str] = []
    items: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            users.extend([parts[0]] * (len(parts) - 1))
            items.extend(parts[1:])
    n = len(items)
    return _build("ml-1m", np.array(users), np.array(items), np.full(n, Action.INTERACT, np.int8),
                  np.zeros(n, np.int64), has_time=False, has_feedback=False, sort_by_time=False)


def load_amazon(data_dir: Path, category: str = "beauty") -> SequenceDataset:
    sub = {"beauty": ("amazon-beauty", "Beauty"), "sports": ("amazon-sports", "Sports")}[category]
    path = _dir(data_dir, sub[0]) / f"{sub[1]}_5core_timestamped.tsv.gz"
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        cu, ci, ct = header.index("user_id"), header.index("item_id"), header.index("timestamp")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            users.append(parts[cu])
            items.append(parts[ci])
            ts.append(int(parts[ct]))
    n = len(items)
    # Rows are already in each user's time order (ties in a day keep the preprocessing's order).
    return _build(f"amazon-{category}", np.array(users), np.array(items), np.full(n, Action.INTERACT, np.int8),
                  np.array(ts, np.int64), has_time=True, has_feedback=False, sort_by_time=False)


def synthetic_dataset(n_users: int = 400, n_items: int = 300, n_genres: int = 8, events_per_user: int = 60,
                      seed: int = 0) -> SequenceDataset:
    """A generated data set with learnable structure, for the demo and tests when real data is absent.

    Items belong to genres; each user prefers two genres and mostly consumes items of those, with a
    within-genre sequential drift (next item tends to be near the previous one), and rates preferred-genre
    items highly.
    """
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, n_genres, n_items)
    by_genre = [np.flatnonzero(genre == g) for g in range(n_genres)]
    # Distinct words (not "genre1", "genre2"…), so that text encoders can tell the genres apart.
    words = ["comedy", "drama", "horror", "western", "musical", "documentary", "fantasy", "thriller", "romance",
             "animation", "war", "mystery"]
    genre_names = [words[g % len(words)] + ("" if g < len(words) else str(g // len(words))) for g in range(n_genres)]
    users, raw_items, actions, ts = [], [], [], []
    t0 = 1_600_000_000
    for u in range(n_users):
        fav = rng.choice(n_genres, 2, replace=False)
        n = int(rng.integers(events_per_user // 2, events_per_user * 3 // 2))
        t = t0 + int(rng.integers(0, 86_400 * 30))
        pos = int(rng.integers(0, n_items))
        for _ in range(n):
            if rng.random() < 0.85:
                pool = by_genre[int(rng.choice(fav))]
                near = pool[np.argsort(np.abs(pool - pos))[:6]] if len(pool) else np.arange(n_items)
                item = int(rng.choice(near))
            else:
                item = int(rng.integers(0, n_items))
            pos = item
            liked = genre[item] in fav
            users.append(str(u + 1))
            raw_items.append(str(item + 1))
            actions.append(Action.POSITIVE if (liked and rng.random() < 0.85) or rng.random() < 0.15
                           else Action.NEGATIVE)
            t += int(rng.exponential(3_600))
            ts.append(t)
    ds = _build("synthetic", np.array(users), np.array(raw_items), np.array(actions, np.int8),
                np.array(ts, np.int64), has_time=True, has_feedback=True, sort_by_time=True)
    ds.synthetic_meta = {str(i + 1): (f"Synthetic item {i + 1}", (genre_names[genre[i]],)) for i in range(n_items)}
    return ds


def load_dataset(name: str, data_dir: Path | str | None = None) -> SequenceDataset:
    if name == "synthetic":
        return synthetic_dataset()
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir")
    data_dir = Path(data_dir)
    if name == "interactions":
        from genrec.model.interactions import load_interactions

        return load_interactions(data_dir)
    if name == "ml-100k":
        return load_ml100k(data_dir)
    if name == "ml-1m":
        return load_ml1m(data_dir)
    if name in ("amazon", "amazon-beauty"):
        return load_amazon(data_dir, "beauty")
    if name == "amazon-sports":
        return load_amazon(data_dir, "sports")
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# ---- leave-one-out split ------------------------------------------------------------------------
def split_lengths(ds: SequenceDataset, split: str) -> np.ndarray:
    """Number of leading events of each user visible as input for `split` (its target is the next one).

    Leave-one-out by time: per user, events [:n-2] train, event n-2 is the validation target, n-1 the test.
    """
    n = np.array([len(x) for x in ds.items])
    if split == "train":
        return n - 2
    if split == "valid":
        return n - 2
    if split == "test":
        return n - 1
    raise ValueError(split)


def eval_users(ds: SequenceDataset) -> np.ndarray:
    """Users with at least 3 events: one to train on, one validation, one test."""
    return np.flatnonzero(np.array([len(x) for x in ds.items]) >= 3)


def load_item_meta(ds: SequenceDataset, data_dir: Path | str | None) -> dict[str, ItemMeta]:
    """Item metadata (titles, genres, attribute ids) keyed by the data set's own item ids; {} if none on disk."""
    from genrec.model.queries import ItemMeta, amazon_item_meta, movielens_1m_item_meta, movielens_item_meta

    if ds.synthetic_meta:
        return {k: ItemMeta(title=t, genres=g) for k, (t, g) in ds.synthetic_meta.items()}
    if data_dir is None:
        return {}
    data_dir = Path(data_dir)
    if ds.name == "interactions":
        from genrec.model.interactions import read_items_csv

        items_csv = data_dir / "items.csv"
        return read_items_csv(items_csv) if items_csv.is_file() else {}
    candidates = {
        "ml-100k": (_dir(data_dir, "ml-100k") / "u.item", movielens_item_meta),
        "ml-1m": (_dir(data_dir, "ml-1m") / "movies.dat", movielens_1m_item_meta),
        "amazon-beauty": (_dir(data_dir, "amazon-beauty") / "Beauty_item2attributes.json", amazon_item_meta),
        "amazon-sports": (_dir(data_dir, "amazon-sports") / "Sports_and_Outdoors_item2attributes.json",
                          amazon_item_meta),
    }
    if ds.name not in candidates or not candidates[ds.name][0].is_file():
        return {}
    path, reader = candidates[ds.name]
    return reader(path)


def train_popularity(ds: SequenceDataset) -> np.ndarray:
    """Interaction counts per item [N] over the training part (vocabulary order), for cold-start serving."""
    counts = np.zeros(ds.num_items + 1, np.int64)
    for items, n in zip(ds.items, split_lengths(ds, "train"), strict=True):
        np.add.at(counts, items[: max(int(n), 0)], 1)
    return counts[1:]
