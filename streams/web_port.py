"""The worker's web port (/health, /ready, /metrics), claimed before Faust starts.

Several replicas on one host each need a port of their own. `--web-port 0` (or `auto`) asks the kernel for a
free one; a fixed port that another process holds is refused at once with one line naming `--web-port`, instead
of a traceback from deep inside Faust's web service after the worker has joined the group (issue 20 item 9).

The socket is bound and listening here and handed to Faust's web server as it is (streams/transport.py), so
there is no window between choosing a free port and binding it in which another worker could take it. The
port chosen is logged (`web port: N`) and written to `STATE_DIR/web-port`, where a supervisor or a test that
started the worker with port 0 reads it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("genrec.web")

PORT_FILE = "web-port"


class WebPortError(RuntimeError):
    """The web port cannot be bound; the message is one line for the operator."""


def claim_web_port(bind: str, port: int) -> socket.socket:
    """A listening TCP socket on (bind, port); port 0 picks a free one. WebPortError when that fails."""
    try:
        infos = socket.getaddrinfo(bind or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WebPortError(f"cannot resolve the web bind address {bind!r} ({exc.strerror})") from exc
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As aiohttp's own TCPSite does: a restart may bind while the last run's connections sit in TIME_WAIT.
        # On Linux this never lets two listeners share a port, so a taken port is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        # Listen now: a socket only bound, not listening, would not stop another SO_REUSEADDR bind to the port.
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise WebPortError(
                f"web port {port} on {bind} is taken (another worker on this host?): give each worker its own "
                "--web-port (env GENREC_WEB_PORT), or --web-port 0 to pick a free one"
            ) from exc
        raise WebPortError(f"cannot bind web port {port} on {bind}: {exc.strerror} (--web-port)") from exc
    return sock


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def write_port_file(state_dir: Path, port: int) -> Path:
    """`STATE_DIR/web-port`, replaced atomically: a reader never sees a half-written number."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / PORT_FILE
    tmp = state_dir / f".{PORT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(f"{port}\n", encoding="ascii")
    tmp.replace(path)
    return path


def read_port_file(state_dir: Path) -> int | None:
    """The port a worker on this state folder wrote, or None (not written yet, or unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        return int((state_dir / PORT_FILE).read_text(encoding="ascii").strip())
    return None
