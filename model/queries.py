"""Search queries for data sets without logged queries (issue 5; the evaluation protocol is in model/evaluate.py).

Unified search-and-recommendation papers build the query for a target item from that item's
metadata: MovieLens genres and title words, Amazon attribute ids rendered as tokens. This module
reads the metadata files of the evaluation data (described in the data folder's README), makes such queries
reproducibly from a numpy ``Generator``, and gives the text that is embedded for each item.

Nothing here invents a query for an item without metadata: `make_query` returns None and the caller
skips the query, so no generic query leaks into training or evaluation.

Reference: the queries feed SynerGen's unified search and recommendation ("SynerGen: Contextualized Generative
Recommender for Unified Search and Recommendation", arXiv 2509.21777), implemented in model/search.py.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ML-100K's u.genre order (flag columns 5..23 of u.item); ML-1M uses the same 18 names minus "unknown".
ML100K_GENRE_COLUMNS: tuple[str, ...] = (
    *("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary"),
    *("Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller"),
    *("War", "Western"),
)
# "unknown" is a missing label, not a genre anyone searches for.
MOVIELENS_GENRES: tuple[str, ...] = ML100K_GENRE_COLUMNS[1:]
_NOT_A_GENRE = frozenset({"unknown", "(no genres listed)"})

# Function words and the articles of the languages in MovieLens titles: a query word should name
# something. Words of one character are skipped as well.
STOPWORDS: frozenset[str] = frozenset(
    (
        *("a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "for", "from", "with", "by", "as"),
        *("is", "it", "its", "be", "are", "was", "were", "this", "that", "my", "me", "you", "your", "he"),
        *("she", "his", "her", "we", "our", "they", "their", "not", "no", "so", "but", "all", "up", "out"),
        *("into", "over", "about", "s", "t", "ll", "d", "re", "ve", "la", "le", "les", "l", "el", "los"),
        *("las", "lo", "il", "i", "de", "del", "della", "des", "du", "der", "die", "das", "den", "det"),
        *("dem", "un", "une", "una", "uno", "et", "y", "e", "und", "och", "og"),
    )
)

_YEAR_RE = re.compile(r"\s*\((\d{4})\)")
_ARTICLES = (
    *("The", "A", "An", "La", "Le", "Les", "L'", "El", "Los", "Las", "Lo", "Il", "Der", "Die", "Das"),
    *("Den", "Det", "Un", "Une"),
)
# "Shawshank Redemption, The" → "The Shawshank Redemption"; MovieLens moves leading articles back.
_TRAILING_ARTICLE_RE = re.compile(r"^(?P<rest>.+), (?P<art>" + "|".join(map(re.escape, _ARTICLES)) + r")$")
# French and Italian elided articles and prepositions: "L'Appartement" is searched as "appartement".
_ELIDED = frozenset({"l", "d", "j", "m", "n", "s", "c", "qu", "dell", "dall", "nell", "sull", "all"})
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass(frozen=True)
class ItemMeta:
    """What a data set says about an item. MovieLens: title (with year) and genres; Amazon: attributes; your own
    items.csv (model/interactions.py): title, categories (as genres) and a free text."""

    title: str = ""
    genres: tuple[str, ...] = ()
    attributes: tuple[int, ...] = ()
    text: str = ""

    @property
    def empty(self) -> bool:
        return not (self.title or self.genres or self.attributes or self.text)


# ------------------------------------------------------------------------------------------------ titles


def _front_article(part: str) -> str:
    m = _TRAILING_ARTICLE_RE.match(part.strip())
    if m is None:
        return part.strip()
    art = m.group("art")
    return f"{art}{m.group('rest')}" if art.endswith("'") else f"{art} {m.group('rest')}"


def _split_title(title: str) -> tuple[str, list[str], str | None]:
    """(main title, alternative titles in parentheses, year) of a MovieLens title."""
    years = list(_YEAR_RE.finditer(title))
    year = None
    if years:
        last = years[-1]
        year = last.group(1)
        title = title[: last.start()] + title[last.end() :]
    title = title.strip()
    main, _, rest = title.partition(" (")
    alts = re.findall(r"\(([^()]*)\)", "(" + rest) if rest else []
    return _front_article(main), [_front_article(a) for a in alts if a.strip()], year


def display_title(title: str) -> str:
    """Natural word order, year kept.

    "Shawshank Redemption, The (1994)" → "The Shawshank Redemption (1994)".
    """
    main, alts, year = _split_title(title)
    out = main + "".join(f" ({a})" for a in alts)
    return f"{out} ({year})" if year else out


def _drop_elision(word: str) -> str:
    head, sep, tail = word.partition("'")
    return tail if sep and head in _ELIDED else word


def title_words(title: str) -> tuple[str, ...]:
    """Lower-cased content words of a title, year and stopwords left out, first occurrence order."""
    main, alts, _ = _split_title(title)
    text = unicodedata.normalize("NFKC", " ".join([main, *alts])).replace("\u2019", "'").casefold()
    words = [_drop_elision(w.strip("'")) for w in _WORD_RE.findall(text)]
    return tuple(dict.fromkeys(w for w in words if len(w) > 1 and w not in STOPWORDS))


# ------------------------------------------------------------------------------------------------ readers


def _clean_genres(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(g.strip() for g in names if g.strip() and g.strip() not in _NOT_A_GENRE))


def _read_genre_columns(u_genre_path: Path) -> tuple[str, ...]:
    pairs: list[tuple[int, str]] = []
    for lineno, line in enumerate(u_genre_path.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, idx = line.rpartition("|")
        if not sep or not idx.strip().isdigit():
            raise ValueError(f"{u_genre_path}:{lineno}: expected 'name|index', got {line!r}")
        pairs.append((int(idx), name))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ValueError(f"{u_genre_path}: genre indices are not 0..{len(pairs) - 1}")
    return tuple(name for _, name in pairs)


def movielens_item_meta(u_item_path: str | Path) -> dict[str, ItemMeta]:
    """ML-100K ``u.item`` → {raw item id: ItemMeta}. Genre names come from ``u.genre`` beside it."""
    u_item_path = Path(u_item_path)
    u_genre = u_item_path.with_name("u.genre")
    columns = _read_genre_columns(u_genre) if u_genre.is_file() else ML100K_GENRE_COLUMNS
    out: dict[str, ItemMeta] = {}
    for lineno, line in enumerate(u_item_path.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5 + len(columns):
            raise ValueError(
                f"{u_item_path}:{lineno}: expected {5 + len(columns)} '|'-separated fields, got {len(fields)}"
            )
        item_id, title = fields[0].strip(), fields[1].strip()
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise ValueError(f"{u_item_path}:{lineno}: genre flags must be 0 or 1")
        # Item 267 is a placeholder row whose title is literally "unknown": it has no metadata.
        if title.casefold() == "unknown":
            title = ""
        genres = _clean_genres([g for g, f in zip(columns, flags, strict=True) if f == "1"])
        out[item_id] = ItemMeta(title=title, genres=genres)
    return out


def movielens_1m_item_meta(movies_dat_path: str | Path) -> dict[str, ItemMeta]:
    """ML-1M ``movies.dat`` (``id::title::A|B``, latin-1) → {raw item id: ItemMeta}."""
    path = Path(movies_dat_path)
    out: dict[str, ItemMeta] = {}
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'id::title::genres', got {line!r}")
        item_id, title, genres = fields
        out[item_id.strip()] = ItemMeta(title=title.strip(), genres=_clean_genres(genres.split("|")))
    return out


def amazon_item_meta(item2attributes_json: str | Path) -> dict[str, ItemMeta]:
    """Amazon ``*_item2attributes.json`` ({item id: [attribute id, …]}) → {raw item id: ItemMeta}."""
    path = Path(item2attributes_json)
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of item id → attribute ids")
    out: dict[str, ItemMeta] = {}
    for item_id, attrs in raw.items():
        if not isinstance(attrs, list) or not all(type(a) is int and a >= 0 for a in attrs):
            raise ValueError(f"{path}: item {item_id!r}: attributes must be a list of non-negative ints")
        out[str(item_id)] = ItemMeta(attributes=tuple(dict.fromkeys(attrs)))
    return out


# ------------------------------------------------------------------------------------------------ queries


def attribute_token(attribute: int) -> str:
    return f"attr_{attribute}"


def _pick(rng: np.random.Generator, pool: Sequence[str], most: int) -> list[str]:
    k = int(rng.integers(1, min(most, len(pool)) + 1))
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def make_query(
    meta: ItemMeta,
    rng: np.random.Generator,
    noise: float = 0.2,
    genre_vocab: Sequence[str] = MOVIELENS_GENRES,
) -> str | None:
    """A search query whose target is the item, or None when the item has no metadata.

    Items with attributes (Amazon) get 1–3 distinct attribute tokens, ``"attr_123 attr_9"``, and no
    noise: there is no attribute vocabulary to draw a plausible wrong one from. Otherwise (MovieLens)
    the query is 1–2 genres, 1–2 title words, or both, lower-cased and shuffled; with probability
    `noise` a genre the item does not have (from `genre_vocab`) replaces one word, or is added when the
    query has a single word, so every query keeps at least one true word of its item.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError("noise must be in [0, 1]")
    if meta.attributes:
        attrs = [attribute_token(a) for a in dict.fromkeys(meta.attributes)]
        return " ".join(_pick(rng, attrs, 3))
    genres = [g.casefold() for g in meta.genres]
    words_t = list(title_words(meta.title))
    modes = [m for m, ok in (("genre", genres), ("title", words_t), ("both", genres and words_t)) if ok]
    if not modes:
        return None
    mode = modes[int(rng.integers(len(modes)))]
    words: list[str] = []
    if mode in ("genre", "both"):
        words += _pick(rng, genres, 2)
    if mode in ("title", "both"):
        words += [w for w in _pick(rng, words_t, 2) if w not in words]
    # Drawn whatever `noise` is, so the same seed gives the same base query at every noise level.
    if rng.random() < noise:
        taken = {*genres, *words}
        others = [g.casefold() for g in genre_vocab if g.casefold() not in taken]
        if others:
            wrong = others[int(rng.integers(len(others)))]
            if len(words) >= 2:
                words[int(rng.integers(len(words)))] = wrong
            else:
                words.append(wrong)
    return " ".join(words[i] for i in rng.permutation(len(words)))


def item_text(meta: ItemMeta) -> str:
    """The text embedded for an item: "Title (year). Genres: A, B", or its attribute tokens, then its free text (an
    items.csv `text`); "" if none."""
    parts: list[str] = []
    if meta.title:
        parts.append(display_title(meta.title) + ".")
    if meta.genres:
        parts.append("Genres: " + ", ".join(meta.genres))
    if meta.attributes:
        parts.append(" ".join(attribute_token(a) for a in meta.attributes))
    if meta.text:
        parts.append(meta.text)
    return " ".join(parts)
