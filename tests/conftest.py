"""Suite-wide rules: in CI (CI=true) a skipped test fails the run instead of passing it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "integration"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        if reporter:
            reporter.write_line(f"CI: {skipped} test(s) were skipped; a skipped test fails CI", red=True)
        session.exitstatus = 1
