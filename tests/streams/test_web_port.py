"""streams/web_port.py: port 0 picks a free port, a taken port is one line naming --web-port, and Faust's web
server serves on the socket claimed before it started."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from genrec.streams.settings import StreamSettings
from genrec.streams.web_port import WebPortError, bound_port, claim_web_port, read_port_file, write_port_file


def test_port_0_and_auto_pick_a_free_port() -> None:
    assert StreamSettings(web_port="auto").web_port == 0  # type: ignore[arg-type]
    assert StreamSettings(web_port=" AUTO ").web_port == 0  # type: ignore[arg-type]
    a, b = claim_web_port("127.0.0.1", 0), claim_web_port("127.0.0.1", 0)
    try:
        assert bound_port(a) != bound_port(b) and 0 not in (bound_port(a), bound_port(b))
    finally:
        a.close()
        b.close()


def test_a_taken_port_is_one_line_that_names_the_flag() -> None:
    held = claim_web_port("127.0.0.1", 0)
    try:
        with pytest.raises(WebPortError) as info:
            claim_web_port("127.0.0.1", bound_port(held))
        text = str(info.value)
        assert "\n" not in text and "--web-port" in text and str(bound_port(held)) in text
    finally:
        held.close()


def test_a_port_held_by_a_plain_listener_is_refused_too() -> None:
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        with pytest.raises(WebPortError, match="taken"):
            claim_web_port("0.0.0.0", other.getsockname()[1])
    finally:
        other.close()


def test_the_port_file_is_read_back(tmp_path: Path) -> None:
    assert read_port_file(tmp_path / "none") is None
    write_port_file(tmp_path / "state", 41234)
    assert read_port_file(tmp_path / "state") == 41234


async def test_faust_serves_on_the_claimed_socket(tmp_path: Path) -> None:
    import aiohttp
    from genrec.streams.app import GenrecWorker

    sock = claim_web_port("127.0.0.1", 0)
    port = bound_port(sock)
    worker = GenrecWorker(StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_port=port,
                                         web_bind="127.0.0.1"))
    worker.app.web_socket = sock
    web = worker.app.web
    web.init_server()
    await web.start_server()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/health") as r:
            assert r.status == 200
            assert (await r.json())["status"] == "ok"
    finally:
        await web.stop_server()
