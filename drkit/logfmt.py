"""Log output: human text on a terminal (the default), or one JSON event per line for the ELK
stack (``--log-format json`` or ``$DRKIT_LOG_FORMAT=json``).

A JSON event has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and any structured
fields a caller passed with ``extra={...}`` (``source``, ``backup``, ``phase``, ``bytes``,
``seconds``...).  Secrets never reach a log record in the first place (passwords are read from the
environment or files and never formatted into messages); as a second line of defence the values
of ``$DRKIT_SECRET_ENV_VARS``-named and known password variables are masked in every event.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _secrets() -> list[str]:
    names = {n for n in os.environ if n.endswith(("PASSWORD", "_PW", "_KEY", "SECRET")) or n.startswith("DRKIT_KEY")}
    names |= {n.strip() for n in os.environ.get("DRKIT_SECRET_ENV_VARS", "").split(",") if n.strip()}
    return [v for n in names if len(v := os.environ.get(n, "")) >= 6]


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._mask = _secrets()

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                event[k] = v
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        text = json.dumps(event, default=str)
        for secret in self._mask:
            text = text.replace(secret, "***")
        return text


def configure(level: int, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
