"""One inference boundary (issue 19 items 5 and 6): `serve_batch` for every runner, one `Recommendation` type,
and `probe`, the test inference a model version must pass before it serves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from genrec.model.serving import Recommendation
from genrec.model.tokens import History
from genrec.streams import history_codec
from genrec.streams import serving as serving
from genrec.streams.inference_process import decode_batch, decode_reply, encode_batch, encode_reply
from genrec.streams.serving import BatchItem, ProbeFailed, probe, serve_batch
from hypothesis import given, settings
from hypothesis import strategies as st

TS = 1_700_000_000_000


@dataclass
class _Fake:
    """A recommender whose answers a test chooses; records what it was asked."""

    version: str = "fake"
    max_events: int = 50
    item_ids: list[str] = field(default_factory=lambda: ["a", "b", "c", "d"])
    supports_queries: bool = False
    answer: Any = None  # (history, k, query) -> list[Recommendation]
    seen: list[tuple[list[str], int, bool, str | None, int]] = field(default_factory=list)

    def history_from_raw(self, item_ids: Sequence[str], actions: Sequence[int], ts_ms: Sequence[int]) -> Any:
        return list(item_ids)

    def recommend(self, histories: Sequence[History], k: Sequence[int], exclude_seen: Sequence[bool],
                  queries: Sequence[str | None] | None = None, now_ms: Sequence[int] | None = None) -> Any:
        out = []
        for h, kk, ex, q, t in zip(histories, k, exclude_seen, queries or [None] * len(k), now_ms or [0] * len(k),
                                   strict=True):
            self.seen.append((list(h), kk, ex, q, t))
            out.append(self.answer(h, kk, q) if self.answer else
                       [Recommendation(i, r + 1, 0.5, 0.1) for r, i in enumerate(self.item_ids[:kk])])
        return out


def _hist(*items: str) -> bytes:
    codec = history_codec.HistoryCodec(50, 8)
    buf = None
    for i, item in enumerate(items):
        buf = codec.append(buf, event_id=f"e{i}", item_id=item, action=1, ts_ms=TS + i)
    assert buf is not None
    return buf


def test_serve_batch_decodes_histories_and_passes_every_request_field() -> None:
    fake = _Fake()
    out = serve_batch(fake, [BatchItem(_hist("b", "c"), 2, False, "q", TS + 5), BatchItem(None, 3, True, None, TS)])
    assert fake.seen == [(["b", "c"], 2, False, "q", TS + 5), ([], 3, True, None, TS)]
    assert [[r.item_id for r in x] for x in out] == [["a", "b"], ["a", "b", "c"]]


def test_serve_batch_refuses_a_model_that_loses_requests() -> None:
    fake = _Fake()
    fake.recommend = lambda *a, **k: []  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="0 lists for 1 requests"):
        serve_batch(fake, [BatchItem(None, 3, True, None, TS)])


def test_there_is_one_recommendation_type() -> None:
    # streams reuses model.serving's; it defines none of its own.
    assert not hasattr(serving, "Recommendation") or serving.Recommendation is Recommendation


def test_probe_passes_a_model_that_serves_and_asks_a_search_only_of_a_search_model() -> None:
    plain, search = _Fake(), _Fake(supports_queries=True)
    probe(plain, now_ms=TS)
    probe(search, now_ms=TS)
    assert [q for *_, q, _t in plain.seen] == [None, None]
    assert [q for *_, q, _t in search.seen] == [None, None, serving.PROBE_QUERY]
    assert plain.seen[1][0] == ["a", "b", "c"]  # a user with a history of known items


def _query_breaks(h: Any, k: int, q: str | None) -> list[Recommendation]:
    if q:
        raise RuntimeError("text encoder 'missing' is not installed")
    return [Recommendation("a", 1, 0.5, 0.1)]


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda h, k, q: [], "empty list"),
        (lambda h, k, q: [Recommendation("zzz", 1, 0.5, 0.1)], "not in the vocabulary"),
        (lambda h, k, q: [Recommendation("a", 1, math.nan, 0.1)], "non-finite"),
        (lambda h, k, q: [Recommendation("a", 2, 0.5, 0.1)], "not 1..n"),
        (_query_breaks, "text encoder"),
    ],
    ids=["empty", "unknown item", "nan score", "ranks", "search fails"],
)
def test_probe_refuses_a_model_that_cannot_serve(answer: Any, match: str) -> None:
    with pytest.raises((ProbeFailed, RuntimeError), match=match):
        probe(_Fake(supports_queries=True, answer=answer), now_ms=TS)


# ---- the wire format to the inference child ------------------------------------------------------------------

_items = st.lists(st.builds(
    BatchItem,
    st.none() | st.binary(min_size=1, max_size=300),
    st.integers(1, 1000),
    st.booleans(),
    st.none() | st.text(max_size=40),
    st.integers(0, 2**62),
), max_size=8)
_recs = st.lists(st.lists(st.builds(Recommendation, st.text(max_size=20), st.integers(1, 1000),
                                    st.floats(allow_nan=False), st.floats(allow_nan=False)), max_size=5), max_size=8)


@settings(max_examples=200, deadline=None)
@given(items=_items, lists=_recs, version=st.text(max_size=30))
def test_batches_and_replies_round_trip_exactly(items: list[BatchItem], lists: list[list[Recommendation]],
                                                version: str) -> None:
    assert decode_batch(encode_batch(items)) == items
    assert decode_reply(encode_reply(version, lists)) == (version, lists)


@settings(max_examples=200, deadline=None)
@given(items=_items.filter(bool), cut=st.integers(1, 50), junk=st.binary(min_size=1, max_size=5))
def test_a_damaged_batch_is_refused_never_misread(items: list[BatchItem], cut: int, junk: bytes) -> None:
    wire = encode_batch(items)
    with pytest.raises(ValueError):
        decode_batch(wire[: max(1, len(wire) - cut)])
    with pytest.raises(ValueError):
        decode_batch(wire + junk)
