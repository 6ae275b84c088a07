"""JSON log events: one valid JSON object per line, structured fields kept, secrets masked."""

from __future__ import annotations

import json
import logging

import pytest

from drkit.logfmt import JsonFormatter


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("drkit.ops", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_an_event_is_one_json_line_with_its_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    line = JsonFormatter().format(record("backup of %s committed", "main", source="main", backup="B1",
                                         bytes=123, seconds=1.5))
    assert "\n" not in line
    event = json.loads(line)
    assert event["message"] == "backup of main committed" and event["level"] == "info"
    assert (event["source"], event["backup"], event["bytes"], event["seconds"]) == ("main", "B1", 123, 1.5)
    assert event["time"].endswith("Z") and event["logger"] == "drkit.ops"


def test_secret_values_from_the_environment_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("CUSTOM_TOKEN", "abcdef-token")
    monkeypatch.setenv("DRKIT_SECRET_ENV_VARS", "CUSTOM_TOKEN")
    fmt = JsonFormatter()
    line = fmt.format(record("connecting with %s and %s", "hunter2-secret", "abcdef-token", note="hunter2-secret"))
    assert "hunter2" not in line and "abcdef-token" not in line and line.count("***") == 3
    try:
        raise RuntimeError("failed: hunter2-secret")
    except RuntimeError:
        import sys

        rec = record("boom")
        rec.exc_info = sys.exc_info()
    assert "hunter2" not in fmt.format(rec)
