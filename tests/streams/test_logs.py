"""GENREC_LOG_FORMAT=json: one JSON object a line, tracebacks inside it; text stays the default."""

from __future__ import annotations

import json
import logging
import logging.config

import pytest
from genrec.streams.logs import JsonFormatter, logging_config
from genrec.streams.settings import StreamSettings


def _record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("genrec.worker", logging.ERROR, __file__, 1, msg, ("x",), exc_info)


def test_a_record_is_one_line_of_json_with_the_fields() -> None:
    try:
        raise ValueError("broken\nacross lines")
    except ValueError as exc:
        line = JsonFormatter(worker_id="w-1", role="infer").format(_record("first %s\nsecond", exc))
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "first x\nsecond" and out["level"] == "ERROR" and out["logger"] == "genrec.worker"
    assert out["worker_id"] == "w-1" and out["role"] == "infer" and isinstance(out["process"], int)
    assert out["time"].endswith("Z") and "ValueError: broken" in out["exc_info"]


def test_the_setting_chooses_the_formatter(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert StreamSettings().log_format == "text"
    monkeypatch.setenv("GENREC_LOG_FORMAT", "json")
    s = StreamSettings(worker_id="w-json")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(logging_config(s))
        logging.getLogger("faust.test").warning("hello %d", 7)
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert json.loads(line)["message"] == "hello 7" and json.loads(line)["worker_id"] == "w-json"
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    monkeypatch.setenv("GENREC_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError):
        StreamSettings()
