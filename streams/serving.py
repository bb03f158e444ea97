"""The model as the worker sees it: loading, and one micro-batch of requests → ranked lists.

`model.serving.Recommender` is synchronous and CPU/GPU heavy; it runs on one dedicated thread so that
the event loop keeps consuming, acking and producing while a batch is inferred (or in a child process,
streams/inference_process.py).

The inference boundary is one function, `serve_batch`, whichever runner calls it (this thread runner or the
child process): encoded histories and request fields in, `model.serving.Recommendation` lists out. A model
version is accepted only after `probe`, a test inference through that same function.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from genrec.model.tokens import History
from genrec.schemas.messages import RecRequest
from genrec.streams import history_codec
from genrec.streams.inference_errors import InferenceError

if TYPE_CHECKING:  # the one Recommendation type (model/recommendation.py)
    from genrec.model.recommendation import Recommendation

log = logging.getLogger(__name__)


class RecommenderLike(Protocol):
    """The part of `model.serving.Recommender` the worker uses."""

    version: str
    max_events: int
    item_ids: Sequence[str]
    supports_queries: bool

    def history_from_raw(self, item_ids: Sequence[str], actions: Sequence[int], ts_ms: Sequence[int]) -> History: ...

    def recommend(
        self,
        histories: Sequence[History],
        k: Sequence[int],
        exclude_seen: Sequence[bool],
        queries: Sequence[str | None] | None = None,
        now_ms: Sequence[int] | None = None,
    ) -> list[list[Recommendation]]: ...


def load_recommender(checkpoint: str | Path, device: str | None = None) -> RecommenderLike:
    from genrec.model.serving import Recommender

    return Recommender.from_checkpoint(checkpoint, device=device)


def load_version(path: str | Path, expected_sha256: str | None = None, expected_version: str | None = None,
                 device: str | None = None) -> RecommenderLike:
    """A model version ready to serve, or an exception: loaded and hash-checked (model.checkpoint), the version
    the caller expects, and past its test inference (`probe`). Runs where the model will serve: on the thread
    runner's side, or in the inference child."""
    from genrec.model.serving import Recommender

    rec = Recommender.from_checkpoint(path, device=device, expected_sha256=expected_sha256)
    if expected_version is not None and rec.version != expected_version:
        raise VersionMismatch(f"checkpoint holds version {rec.version}, the message names {expected_version}")
    probe(rec)
    return rec


class BatchItem(NamedTuple):
    """What the model needs of one request: the boundary's input, the same for every runner."""

    history: bytes | None  # the user's encoded history (streams/history_codec.py), None for a new user
    k: int
    exclude_seen: bool
    query: str | None
    ts: int  # the request's time, epoch ms (the model's "now")


@dataclass(frozen=True)
class InferenceInput:
    request: RecRequest
    history: bytes | None  # the user's encoded history when the request was received

    @property
    def item(self) -> BatchItem:
        r = self.request
        return BatchItem(self.history, r.k, r.exclude_seen, r.query, r.ts)


def serve_batch(rec: RecommenderLike, items: Sequence[BatchItem]) -> list[list[Recommendation]]:
    """One batch through the model: the inference boundary of both runners (thread and child process)."""
    histories = []
    for x in items:
        raw = history_codec.decode(x.history)
        histories.append(rec.history_from_raw(raw.item_ids, raw.actions.tolist(), raw.ts_ms.tolist()))
    out = rec.recommend(
        histories,
        k=[x.k for x in items],
        exclude_seen=[x.exclude_seen for x in items],
        queries=[x.query for x in items],
        now_ms=[x.ts for x in items],
    )
    if len(out) != len(items):
        raise RuntimeError(f"recommend returned {len(out)} lists for {len(items)} requests")
    return out


class ModelRefused(ValueError):
    """A model version that was loaded but is not taken: it is not swapped in, the current one serves on."""


class ProbeFailed(ModelRefused):
    """A model version failed its test inference: it cannot serve."""


class VersionMismatch(ModelRefused):
    """The checkpoint holds another version than the one asked for (a models-topic message names it)."""


PROBE_QUERY = "a test search"


def probe(rec: RecommenderLike, now_ms: int | None = None) -> None:
    """The test inference a version must pass before it serves: a new user, a user with a history of known
    items, and (when the model reads queries) a search. Each must return a non-empty list of known items with
    finite scores, ranked 1..n. Raises ProbeFailed (or what the model raised) otherwise."""
    import math

    now = int(time.time() * 1000) if now_ms is None else now_ms
    codec = history_codec.HistoryCodec(max_events=max(1, min(rec.max_events, 200)), max_ids=0)
    known = list(rec.item_ids[:3])
    if not known:
        raise ProbeFailed("the model has no items")
    hist: bytes | None = None
    for i, item in enumerate(known):
        hist = codec.append(hist, event_id=f"probe-{i}", item_id=item, action=1, ts_ms=now - 60_000 * (3 - i))
    items = [BatchItem(None, 5, True, None, now), BatchItem(hist, 5, True, None, now)]
    if rec.supports_queries:
        items.append(BatchItem(hist, 5, True, PROBE_QUERY, now))
    vocabulary = set(rec.item_ids)
    for item, recs in zip(items, serve_batch(rec, items), strict=True):
        what = "search" if item.query else ("new user" if item.history is None else "user with a history")
        if not recs:
            raise ProbeFailed(f"test inference ({what}): an empty list")
        if [r.rank for r in recs] != list(range(1, len(recs) + 1)):
            raise ProbeFailed(f"test inference ({what}): ranks {[r.rank for r in recs][:10]} are not 1..n")
        for r in recs:
            if r.item_id not in vocabulary:
                raise ProbeFailed(f"test inference ({what}): item {r.item_id!r} is not in the vocabulary")
            if not (math.isfinite(r.score) and math.isfinite(r.retrieval_score)):
                raise ProbeFailed(f"test inference ({what}): a non-finite score for item {r.item_id!r}")


def default_torch_threads() -> int:
    """One core fewer than the process may use (at least one): the event loop, the Kafka clients and, on the
    embedded default, the broker need a core too. torch's default (every core) oversubscribes a small box:
    intra-op workers spin while the event loop waits for the CPU, and batches take several times longer."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


class InferenceRunner:
    """Runs batches on a single inference thread; one call at a time (the model is not re-entrant)."""

    def __init__(self, recommender: RecommenderLike, *, torch_threads: int | None = None,
                 device: str | None = None) -> None:
        self.recommender = recommender
        # Versions swapped in later load onto the same device as the first (model/device.py).
        self.device = device
        # The version that served the latest batch: a swap may land right after a batch and before its
        # results are written, so results must not read `version`.
        self.last_version = recommender.version
        self._torch_threads = torch_threads
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="genrec-infer", initializer=self._init_thread
        )

    def _init_thread(self) -> None:
        import torch

        torch.set_num_threads(self._torch_threads or default_torch_threads())

    @property
    def version(self) -> str:
        return self.recommender.version

    async def swap(self, path: str | Path, *, expected_sha256: str | None = None,
                   expected_version: str | None = None) -> str:
        """Serve the checkpoint at `path` from the next batch on; returns its version. If it cannot serve (a
        `CheckpointError` for a corrupted, truncated or sha-mismatched checkpoint, another version than
        expected, a failed test inference) the exception reaches the caller and the current model keeps serving.

        The load (hashing, reading, building, the probe) runs on the loop's default executor so that batches
        keep being served meanwhile; the switch itself runs on the inference thread, so it falls between two
        batches and never under one.
        """
        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(None, load_version, path, expected_sha256, expected_version, self.device)
        old = self.recommender.version
        await loop.run_in_executor(self._executor, self._set, new)
        log.info("model %s → %s", old, new.version)
        return new.version

    def _set(self, recommender: RecommenderLike) -> None:
        self.recommender = recommender

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def infer_sync(self, batch: Sequence[InferenceInput]) -> list[list[Recommendation]]:
        rec = self.recommender
        self.last_version = rec.version
        return serve_batch(rec, [x.item for x in batch])

    async def infer(self, batch: Sequence[InferenceInput]) -> tuple[list[list[Recommendation] | Exception], float]:
        """One outcome per input (a ranked list, or the error for that request) and the model seconds.

        A batch that fails as a whole is retried one request at a time, so that one poisonous request
        fails alone instead of taking its batch-mates with it.
        """
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            lists: list[list[Recommendation] | Exception] = list(
                await loop.run_in_executor(self._executor, self.infer_sync, batch)
            )
        except InferenceError:
            raise  # the model was lost (and restarted) mid-call: the caller decides whose fault it was
        except Exception as exc:
            log.warning("batch of %d failed (%r); retrying one by one", len(batch), exc)
            lists = []
            for x in batch:
                try:
                    lists.append((await loop.run_in_executor(self._executor, self.infer_sync, [x]))[0])
                except Exception as one:
                    log.exception("request %s failed", x.request.request_id)
                    lists.append(one)
        return lists, time.perf_counter() - t0
