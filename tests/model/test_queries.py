"""Metadata-built search queries: readers on the real files, query content, determinism, item text."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from genrec.model.queries import (
    MOVIELENS_GENRES,
    ItemMeta,
    amazon_item_meta,
    display_title,
    item_text,
    make_query,
    movielens_1m_item_meta,
    movielens_item_meta,
    title_words,
)
from hypothesis import given, settings
from hypothesis import strategies as st

DATA_DIR = Path(os.environ.get("GENREC_DATA_DIR", Path(__file__).parents[2].parent / "shared" / "data"))


def _data_file(*parts: str) -> Path:
    path = DATA_DIR.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} not found: real data lives in ../shared/data (or set GENREC_DATA_DIR)")
    return path


def _true_words(meta: ItemMeta) -> set[str]:
    return {g.casefold() for g in meta.genres} | set(title_words(meta.title))


# --------------------------------------------------------------------------------------- titles and text


@pytest.mark.parametrize(
    ("raw", "shown", "words"),
    [
        ("Shawshank Redemption, The (1994)", "The Shawshank Redemption (1994)", ("shawshank", "redemption")),
        ("Star Wars (1977)", "Star Wars (1977)", ("star", "wars")),
        (
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            "The City of Lost Children (La Cité des enfants perdus) (1995)",
            ("city", "lost", "children", "cité", "enfants", "perdus"),
        ),
        ("Appartement, L' (1996)", "L'Appartement (1996)", ("appartement",)),
        ("2001: A Space Odyssey (1968)", "2001: A Space Odyssey (1968)", ("2001", "space", "odyssey")),
        ("Schindler's List (1993)", "Schindler's List (1993)", ("schindler's", "list")),
        (
            "Land Before Time III: The Time of the Great Giving (1995) (V)",
            "Land Before Time III: The Time of the Great Giving (V) (1995)",
            ("land", "before", "time", "iii", "great", "giving"),
        ),
        ("", "", ()),
    ],
)
def test_titles(raw: str, shown: str, words: tuple[str, ...]) -> None:
    assert display_title(raw) == shown
    assert title_words(raw) == words


def test_item_text() -> None:
    star_wars = ItemMeta("Star Wars (1977)", ("Action", "Adventure", "Romance", "Sci-Fi", "War"))
    assert item_text(star_wars) == "Star Wars (1977). Genres: Action, Adventure, Romance, Sci-Fi, War"
    assert item_text(ItemMeta("Usual Suspects, The (1995)")) == "The Usual Suspects (1995)."
    assert item_text(ItemMeta(attributes=(12, 9))) == "attr_12 attr_9"
    assert item_text(ItemMeta()) == ""


def test_no_metadata_no_query() -> None:
    rng = np.random.default_rng(0)
    assert make_query(ItemMeta(), rng) is None
    # A title made only of stopwords and a year names nothing to search for.
    assert make_query(ItemMeta(title="It (1990)"), rng) is None
    assert make_query(ItemMeta(title="It (1990)", genres=("Horror",)), rng, noise=0.0) == "horror"
    with pytest.raises(ValueError):
        make_query(ItemMeta(genres=("Drama",)), rng, noise=1.5)


# "War" is also a genre and "The"/"of" are stopwords: the cases where a query could repeat or lose a word.
_TITLE_WORDS = ["Star", "Wars", "The", "of", "Lost", "Café", "War", "L'Ark"]
_metas = st.builds(
    ItemMeta,
    title=st.one_of(
        st.just(""),
        st.builds(
            lambda words, year: f"{' '.join(words)} ({year})",
            st.lists(st.sampled_from(_TITLE_WORDS), max_size=5),
            st.integers(1900, 2020),
        ),
    ),
    genres=st.lists(st.sampled_from(MOVIELENS_GENRES), max_size=4, unique=True).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(_metas, st.integers(0, 2**32), st.sampled_from([0.0, 0.2, 1.0]))
def test_make_query_properties(meta: ItemMeta, seed: int, noise: float) -> None:
    q = make_query(meta, np.random.default_rng(seed), noise=noise)
    assert q == make_query(meta, np.random.default_rng(seed), noise=noise), "deterministic given the seed"
    truth = _true_words(meta)
    if not truth:
        assert q is None
        return
    assert q is not None and q == q.strip() and q == q.casefold()
    words = q.split()
    assert 1 <= len(words) <= 4 and len(set(words)) == len(words)
    assert truth & set(words), "every query keeps a true word of its item"
    vocab = {g.casefold() for g in MOVIELENS_GENRES}
    assert set(words) <= truth | vocab
    if noise == 0.0:
        assert set(words) <= truth


def test_noise_never_repeats_a_title_word() -> None:
    # "war" is a title word here but not the item's genre: the noise genre must not be "war" again.
    meta = ItemMeta("War Western Horror Games (1983)", ("Drama",))
    for seed in range(300):
        words = (make_query(meta, np.random.default_rng(seed), noise=1.0) or "").split()
        assert len(set(words)) == len(words), words


# --------------------------------------------------------------------------------------- real data sets


@pytest.fixture(scope="module")
def ml100k() -> dict[str, ItemMeta]:
    return movielens_item_meta(_data_file("ml-100k", "u.item"))


def test_ml100k_reader(ml100k: dict[str, ItemMeta]) -> None:
    assert len(ml100k) == 1682
    assert ml100k["1"] == ItemMeta("Toy Story (1995)", ("Animation", "Children's", "Comedy"))
    assert ml100k["50"].genres == ("Action", "Adventure", "Romance", "Sci-Fi", "War")
    assert display_title(ml100k["64"].title) == "The Shawshank Redemption (1994)"
    assert ml100k["267"] == ItemMeta(), "the 'unknown' placeholder row has no metadata"
    # latin-1 decoded, not mangled.
    assert any("é" in m.title for m in ml100k.values())
    assert all("unknown" not in m.genres for m in ml100k.values())


def test_ml100k_queries_name_their_item(ml100k: dict[str, ItemMeta]) -> None:
    modes = {"genre": 0, "title": 0, "both": 0}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for item_id, meta in ml100k.items():
            q = make_query(meta, rng, noise=0.0)
            if meta.empty:
                assert q is None, item_id
                continue
            assert q, item_id
            words = set(q.split())
            genres = {g.casefold() for g in meta.genres}
            titles = set(title_words(meta.title))
            assert words <= genres | titles, (item_id, meta, q)
            in_g, in_t = bool(words & genres), bool(words - genres)
            modes["both" if in_g and in_t else "genre" if in_g else "title"] += 1
    # All three kinds of query occur, none rare.
    assert min(modes.values()) > 0.15 * sum(modes.values()), modes


def test_ml100k_noise_adds_a_wrong_genre(ml100k: dict[str, ItemMeta]) -> None:
    rng = np.random.default_rng(1)
    vocab = {g.casefold() for g in MOVIELENS_GENRES}
    for item_id, meta in ml100k.items():
        q = make_query(meta, rng, noise=1.0)
        if q is None:
            continue
        assert len(set(q.split())) == len(q.split()), (item_id, q)
        words = set(q.split())
        own = {g.casefold() for g in meta.genres}
        assert words & _true_words(meta), (item_id, q)
        assert words & (vocab - own), (item_id, q)


def test_ml100k_queries_reproducible(ml100k: dict[str, ItemMeta]) -> None:
    metas = list(ml100k.values())[:200]
    a = [make_query(m, np.random.default_rng(7)) for m in metas]
    b = [make_query(m, np.random.default_rng(7)) for m in metas]
    c = [make_query(m, np.random.default_rng(8)) for m in metas]
    assert a == b and a != c


def test_ml1m_reader_and_queries() -> None:
    meta = movielens_1m_item_meta(_data_file("ml-1m", "movies.dat"))
    assert len(meta) == 3883
    assert meta["1"] == ItemMeta("Toy Story (1995)", ("Animation", "Children's", "Comedy"))
    rng = np.random.default_rng(0)
    for item_id, m in meta.items():
        assert m.genres and set(m.genres) <= set(MOVIELENS_GENRES), item_id
        q = make_query(m, rng, noise=0.0)
        assert q and set(q.split()) <= _true_words(m), (item_id, q)


def test_amazon_queries_use_only_the_items_attributes() -> None:
    meta = amazon_item_meta(_data_file("amazon-beauty", "Beauty_item2attributes.json"))
    assert len(meta) == 12101
    assert meta["4"] == ItemMeta(attributes=(1, 2, 3))
    rng = np.random.default_rng(0)
    sizes = set()
    for item_id, m in meta.items():
        q = make_query(m, rng, noise=1.0)
        assert q is not None, item_id
        tokens = q.split()
        sizes.add(len(tokens))
        assert len(set(tokens)) == len(tokens) and 1 <= len(tokens) <= 3
        assert set(tokens) <= {f"attr_{a}" for a in m.attributes}, (item_id, q)
    assert sizes == {1, 2, 3}


# ------------------------------------------------------------------------------------------- bad files


def test_readers_reject_malformed_files(tmp_path: Path) -> None:
    u_item = tmp_path / "u.item"
    u_item.write_text("1|Toy Story (1995)|01-Jan-1995||url|0|1\n", encoding="latin-1")
    with pytest.raises(ValueError, match="fields"):
        movielens_item_meta(u_item)
    movies = tmp_path / "movies.dat"
    movies.write_text("1::Toy Story (1995)\n", encoding="latin-1")
    with pytest.raises(ValueError, match="id::title::genres"):
        movielens_1m_item_meta(movies)
    attrs = tmp_path / "attrs.json"
    attrs.write_text('{"1": ["brand"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="non-negative ints"):
        amazon_item_meta(attrs)


def test_u_item_without_u_genre_uses_the_standard_columns(tmp_path: Path) -> None:
    flags = ["0"] * 19
    flags[15] = "1"  # Sci-Fi
    flags[0] = "1"  # unknown: dropped
    line = "|".join(["9", "Caf\xe9 Ark, The (1980)", "01-Jan-1980", "", "url", *flags])
    (tmp_path / "u.item").write_bytes((line + "\n").encode("latin-1"))
    meta = movielens_item_meta(tmp_path / "u.item")
    assert meta == {"9": ItemMeta("Café Ark, The (1980)", ("Sci-Fi",))}
    assert item_text(meta["9"]) == "The Café Ark (1980). Genres: Sci-Fi"
