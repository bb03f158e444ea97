"""The model as the worker sees it: loading, and one micro-batch of requests → ranked lists.

`model.serving.Recommender` is synchronous and CPU/GPU heavy; it runs on one dedicated thread so that
the event loop keeps consuming, acking and producing while a batch is inferred.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from model.tokens import History
from schemas.messages import RecRequest
from streams import history_codec

log = logging.getLogger(__name__)


class Recommendation(Protocol):
    item_id: str
    rank: int
    score: float
    retrieval_score: float


class RecommenderLike(Protocol):
    """The part of `model.serving.Recommender` the worker uses."""

    version: str
    max_events: int

    def history_from_raw(self, item_ids: Sequence[str], actions: Sequence[int], ts_ms: Sequence[int]) -> History: ...

    def recommend(
        self,
        histories: Sequence[History],
        k: Sequence[int],
        exclude_seen: Sequence[bool],
        queries: Sequence[str | None] | None = None,
        now_ms: Sequence[int] | None = None,
    ) -> list[list[Any]]: ...


def load_recommender(checkpoint: str | Path, device: str | None = None) -> RecommenderLike:
    from model.serving import Recommender

    return Recommender.from_checkpoint(checkpoint, device=device)


@dataclass(frozen=True)
class InferenceInput:
    request: RecRequest
    history: bytes | None  # the user's encoded history when the request was received


def default_torch_threads() -> int:
    """One core fewer than the process may use (at least one): the event loop, the Kafka clients and, on the
    embedded default, the broker need a core too. torch's default (every core) oversubscribes a small box:
    intra-op workers spin while the event loop waits for the CPU, and batches take several times longer."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


class InferenceRunner:
    """Runs batches on a single inference thread; one call at a time (the model is not re-entrant)."""

    def __init__(self, recommender: RecommenderLike, *, torch_threads: int | None = None) -> None:
        self.recommender = recommender
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

    async def swap(self, loader: Callable[[], RecommenderLike]) -> RecommenderLike:
        """Load a model and serve it from the next batch on; if loading fails the current model keeps serving.

        The load (hashing, reading, building) runs on the loop's default executor so that batches keep
        being served meanwhile; the switch itself runs on the inference thread, so it falls between two
        batches and never under one. Whatever the loader raises (a `CheckpointError` for a corrupted,
        truncated or sha-mismatched checkpoint) reaches the caller with nothing changed.
        """
        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(None, loader)
        old = self.recommender.version
        await loop.run_in_executor(self._executor, self._set, new)
        log.info("model %s → %s", old, new.version)
        return new

    def _set(self, recommender: RecommenderLike) -> None:
        self.recommender = recommender

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def infer_sync(self, batch: Sequence[InferenceInput]) -> list[list[Any]]:
        rec = self.recommender
        self.last_version = rec.version
        histories = []
        for x in batch:
            raw = history_codec.decode(x.history)
            histories.append(rec.history_from_raw(raw.item_ids, raw.actions.tolist(), raw.ts_ms.tolist()))
        out = rec.recommend(
            histories,
            k=[x.request.k for x in batch],
            exclude_seen=[x.request.exclude_seen for x in batch],
            queries=[x.request.query for x in batch],
            now_ms=[x.request.ts for x in batch],
        )
        if len(out) != len(batch):
            raise RuntimeError(f"recommend returned {len(out)} lists for {len(batch)} requests")
        return out

    async def infer(self, batch: Sequence[InferenceInput]) -> tuple[list[list[Any] | Exception], float]:
        """One outcome per input (a ranked list, or the error for that request) and the model seconds.

        A batch that fails as a whole is retried one request at a time, so that one poisonous request
        fails alone instead of taking its batch-mates with it.
        """
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            lists: list[list[Any] | Exception] = list(
                await loop.run_in_executor(self._executor, self.infer_sync, batch)
            )
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
