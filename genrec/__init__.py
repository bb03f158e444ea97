"""genrec: a streaming recommender worker with one generative model that retrieves and ranks.

Installed, its packages are `genrec.schemas` (the messages), `genrec.model` (the model, no Kafka), `genrec.streams`
(the Faust worker), `genrec.ops` (CLI, brokers, benchmarks) and `genrec.client` (for apps: pydantic and aiokafka
only). In the repository the four folders stay at the top, beside this one; `pip install .` maps them under
`genrec/` (pyproject.toml's `package-dir`), and from a source tree (PYTHONPATH=<repo>, an editable install)
this package looks for them one folder up.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_here = Path(__file__).resolve().parent
if not (_here / "model").is_dir():
    __path__.append(str(_here.parent))  # the source tree: genrec.model is <repo>/model
