"""Why an inference call failed, as the worker's poison handling needs to tell (issue 19).

The inference runner (`streams/inference_process.py`) raises these; the worker (`streams/app.py`) reads
them. Kept in a module of their own, with no imports, so that neither side depends on the other's code.

- `InferenceTimeout`: the model gave no answer within the inference timeout. The runner has killed and
  restarted the child; the batch may be retried, and a request that keeps timing out is poison.
- `InferenceCrashed`: the child died (or broke the pipe protocol) while serving the batch. The runner has
  restarted it; as above, a request that keeps crashing it is poison.

Both count as one failed attempt of every request of the batch they hit; the worker narrows a failing
batch down to the request that fails alone and dead-letters it with reason `poison` after N attempts.
"""

from __future__ import annotations


class InferenceError(RuntimeError):
    """An inference call failed as a whole (not one request's model error inside a served batch)."""


class InferenceTimeout(InferenceError):
    """The model did not answer in time; the child was killed and restarted."""


class InferenceCrashed(InferenceError):
    """The child process died or broke the protocol mid-call; it was restarted."""
