"""The worker's log format: text (the default) or, with `GENREC_LOG_FORMAT=json`, one JSON object a line.

JSON lines are for log shippers (Loki, Elasticsearch, CloudWatch): each record carries `time` (UTC, ISO 8601,
milliseconds), `level`, `logger`, `message`, `process` and `worker_id` (and `role`), plus `exc_info` with the
formatted traceback when there is one, so that a multi-line traceback stays inside its record. The same
configuration goes to Faust's Worker (`logging_config`), which otherwise replaces the root handlers with its
own colored text handler when it starts.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

from genrec.streams.settings import StreamSettings

TEXT_FORMAT = "[%(asctime)s] [%(process)d] %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def __init__(self, worker_id: str | None = None, role: str | None = None) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if self.worker_id is not None:
            out["worker_id"] = self.worker_id
        if self.role is not None:
            out["role"] = self.role
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def logging_config(settings: StreamSettings) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the settings' format, on stderr as Faust's own logs are."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "worker_id": settings.worker_id, "role": settings.role}
        if settings.log_format == "json"
        else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        # Loggers created at import time (genrec.worker, faust.*, aiokafka) must keep logging.
        "disable_existing_loggers": False,
        "formatters": {"genrec": formatter},
        "handlers": {"genrec": {"class": "logging.StreamHandler", "formatter": "genrec",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": settings.log_level.upper(), "handlers": ["genrec"]},
    }


def setup_logging(settings: StreamSettings) -> dict[str, Any] | None:
    """Configure logging now; returns the configuration Faust's Worker must be given (None: Faust's default)."""
    config = logging_config(settings)
    logging.config.dictConfig(config)
    # Text keeps Faust's own format once its Worker starts, as before; JSON must survive that start.
    return config if settings.log_format == "json" else None
