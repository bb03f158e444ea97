"""Inference in a child process, so that the model does not share the worker's GIL.

Every torch op of a batch gives the GIL up and must take it back; in a thread beside Faust's event loop it
waits whenever the loop holds it. Measured on the 2-core box (synthetic model, batch 16): 1.1 ms/request
alone, 1.7 with a Python thread holding the GIL 30 % of the time, 3.2 at 60 % — and a busy worker's loop
holds it about that much. A child process has a GIL of its own.

The parent keeps the `InferenceRunner` contract (one batch at a time, swaps between batches, per-request
retry of a failed batch). The two processes talk over a pipe in JSON (histories as base64): nothing is
unpickled on either side. The child ignores SIGINT/SIGTERM (the parent decides when it stops, after its
in-flight batch) and exits when the pipe closes, so a SIGKILLed worker leaves no orphan.
"""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing as mp
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from streams.serving import InferenceInput, InferenceRunner, RecommenderLike, default_torch_threads

log = logging.getLogger(__name__)

# A batch of 4096 requests with 200-event histories stays far below this; a reply is a few KB per request.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class InferenceProcessError(RuntimeError):
    """The child process is gone or broke the protocol: the worker must restart, not dead-letter requests."""


class ChildError(RuntimeError):
    """The child ran the command and it failed (a bad checkpoint, a request the model could not serve)."""


# ------------------------------------------------------------------------------------------- the child


def _child_main(conn: Connection, torch_threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import torch

    from model.serving import Recommender
    from streams import history_codec

    torch.set_num_threads(torch_threads)
    rec: Recommender | None = None
    while True:
        try:
            raw = conn.recv_bytes(MAX_MESSAGE_BYTES)
        except (EOFError, OSError):
            return  # the parent is gone
        msg = json.loads(raw)
        op = msg.get("op")
        if op == "close":
            return
        try:
            if op == "load":
                new = Recommender.from_checkpoint(msg["path"], expected_sha256=msg.get("sha256"))
                rec = new
                reply: dict[str, Any] = {"ok": True, "version": rec.version, "max_events": rec.max_events}
            elif op == "infer":
                if rec is None:
                    raise RuntimeError("no model loaded")
                reply = {"ok": True, "version": rec.version, "lists": _infer(rec, msg["items"], history_codec)}
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        conn.send_bytes(json.dumps(reply).encode("utf-8"))


def _infer(rec: Any, items: list[dict[str, Any]], history_codec: Any) -> list[list[list[Any]]]:
    histories = []
    for x in items:
        raw = history_codec.decode(base64.b64decode(x["history"]) if x["history"] else None)
        histories.append(rec.history_from_raw(raw.item_ids, raw.actions.tolist(), raw.ts_ms.tolist()))
    out = rec.recommend(
        histories,
        k=[x["k"] for x in items],
        exclude_seen=[x["exclude_seen"] for x in items],
        queries=[x["query"] for x in items],
        now_ms=[x["ts"] for x in items],
    )
    return [[[r.item_id, r.rank, r.score, r.retrieval_score] for r in recs] for recs in out]


# ------------------------------------------------------------------------------------------ the parent


class ProcessInferenceRunner(InferenceRunner):
    """`InferenceRunner` whose model lives in a spawned child process (see the module docstring)."""

    def __init__(self, checkpoint: Path | str, *, expected_sha256: str | None = None,
                 torch_threads: int | None = None, start_timeout_s: float = 300.0) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs an event loop and torch threads
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_child_main,
            args=(child_conn, torch_threads or default_torch_threads()),
            name="genrec-infer",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        self._lock = threading.Lock()  # one command on the pipe at a time (batches and swaps)
        self._start_timeout_s = start_timeout_s
        try:
            reply = self._call({"op": "load", "path": str(checkpoint), "sha256": expected_sha256},
                               timeout_s=start_timeout_s)
        except BaseException:
            self._stop_child()
            raise
        self._version: str = reply["version"]
        self.max_events: int = int(reply["max_events"])
        self.last_version = self._version
        super().__init__(_VersionOnly(self._version, self.max_events), torch_threads=torch_threads)

    # The parent's inference thread only waits on the pipe: no torch work happens in this process.
    def _init_thread(self) -> None:
        pass

    @property
    def version(self) -> str:
        return self._version

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _call(self, msg: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        with self._lock:
            if not self._proc.is_alive():
                raise InferenceProcessError(f"inference process exited with status {self._proc.exitcode}")
            try:
                self._conn.send_bytes(json.dumps(msg).encode("utf-8"))
                # Poll in slices so that a child that dies mid-batch is noticed, not waited on forever.
                waited = 0.0
                while not self._conn.poll(0.5):
                    waited += 0.5
                    if not self._proc.is_alive():
                        raise InferenceProcessError(
                            f"inference process exited with status {self._proc.exitcode} during {msg['op']}")
                    if timeout_s is not None and waited >= timeout_s:
                        # Its late answer would be read as the next command's: the child is done for.
                        self._proc.kill()
                        raise InferenceProcessError(f"inference process gave no answer to {msg['op']} "
                                                    f"in {timeout_s:.0f} s (killed)")
                reply = json.loads(self._conn.recv_bytes(MAX_MESSAGE_BYTES))
            except (EOFError, OSError, ValueError) as exc:
                raise InferenceProcessError(f"inference process pipe failed: {exc!r}") from exc
        if not reply.get("ok"):
            raise ChildError(str(reply.get("error", "unknown error"))[:2000])
        return reply

    def infer_sync(self, batch: Sequence[InferenceInput]) -> list[list[Any]]:
        from model.serving import Recommendation

        items = [
            {
                "history": base64.b64encode(x.history).decode("ascii") if x.history else None,
                "k": x.request.k,
                "exclude_seen": x.request.exclude_seen,
                "query": x.request.query,
                "ts": x.request.ts,
            }
            for x in batch
        ]
        reply = self._call({"op": "infer", "items": items})
        self.last_version = reply["version"]
        lists = reply["lists"]
        if len(lists) != len(batch):
            raise InferenceProcessError(f"inference process returned {len(lists)} lists for {len(batch)} requests")
        return [[Recommendation(str(i), int(r), float(s), float(rs)) for i, r, s, rs in recs] for recs in lists]

    async def infer(self, batch: Sequence[InferenceInput]) -> tuple[list[list[Any] | Exception], float]:
        outcomes, seconds = await super().infer(batch)
        # A dead child is not the requests' fault: re-raise so the worker restarts and they are redelivered.
        for o in outcomes:
            if isinstance(o, InferenceProcessError):
                raise o
        return outcomes, seconds

    async def swap(self, loader: Callable[[], RecommenderLike]) -> RecommenderLike:
        """The loader runs here first (it verifies the checkpoint and raises on a bad one, as for the thread
        runner); then the child loads the same files, between two batches."""
        import asyncio

        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(None, loader)
        path = getattr(new, "path", None)
        if path is None:
            raise TypeError("a process inference runner needs a recommender loaded from a checkpoint path")
        sha = (getattr(new, "meta", None) or {}).get("sha256")
        old = self._version
        reply = await loop.run_in_executor(
            self._executor, lambda: self._call({"op": "load", "path": str(path), "sha256": sha},
                                               timeout_s=self._start_timeout_s))
        self._version = reply["version"]
        self.max_events = int(reply["max_events"])
        log.info("model %s → %s (inference process %s)", old, self._version, self._proc.pid)
        return new

    def close(self) -> None:
        super().close()
        self._stop_child()

    def _stop_child(self) -> None:
        try:
            with self._lock:
                self._conn.send_bytes(b'{"op": "close"}')
        except (OSError, ValueError):
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()


class _VersionOnly:
    """What the base class keeps of a recommender: the parent never runs the model itself."""

    def __init__(self, version: str, max_events: int) -> None:
        self.version = version
        self.max_events = max_events

