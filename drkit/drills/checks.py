"""A drill's user checks, declared in the source's policy (``drills: {SOURCE: {checks, app}}``).

* **Data checks** ``{name, query, expect}`` / ``{name, query, expect_rows}``: the query runs
  against the restored, serving instance through the source's dumper (``Dumper.run_query``,
  rows as text); ``expect`` is compared with the first row, ``expect_rows`` with the number of rows.
* **HTTP checks** ``{name, url, expect_status}`` against the operator's application (``app``),
  which drkit starts in its own process group with the restored instance's address in its
  environment (``DRKIT_RESTORED_URL`` and the dumper's own variables, ``Dumper.restored_env``),
  and stops afterwards (SIGTERM, SIGKILL after a grace).  Each attempt has a 5 s timeout; a check
  passes after 2 consecutive answers with the expected status and is retried (every second)
  until its deadline (``deadline``, else the app's ``ready_timeout``, default 60 s).

Each result is ``{name, ok, detail}``; the detail says what was expected and what came back.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drkit.errors import DrkitError

if TYPE_CHECKING:
    from drkit.dumpers import Dumper, RestoreResult
    from drkit.scheduling.policy import App, Check, DrillSpec

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT = 5.0  # seconds per HTTP attempt (the seed's health check)
PASSES = 2  # consecutive passes that make a check healthy
INTERVAL = 1.0  # seconds between attempts
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL after this
OUTPUT_LIMIT = 4000  # characters of the app's output kept in the drill record (its tail)
SHOWN = 200  # characters of a row shown in a check's detail
# What the app inherits from drkit's environment: nothing else (drkit's keys and passwords stay here).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")


def _show(text: str | None) -> str:
    if text is None:
        return "no row"
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + "...")


def data_check(dumper: Dumper, result: RestoreResult, check: Check) -> dict[str, Any]:
    try:
        rows = dumper.run_query(result, check.query, check.database)
    except DrkitError as exc:
        return {"name": check.name, "ok": False, "detail": f"the query failed: {exc}"}
    if check.expect_rows is not None:
        ok = len(rows) == check.expect_rows
        return {"name": check.name, "ok": ok, "detail": f"expected {check.expect_rows} row(s), got {len(rows)}"}
    got = rows[0] if rows else None
    return {"name": check.name, "ok": got == check.expect,
            "detail": f"expected first row {_show(check.expect)}, got {_show(got)}"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a 3xx is the answer, not followed
        return None


def _status(opener: urllib.request.OpenerDirector, url: str) -> tuple[int | None, str]:
    try:
        with opener.open(url, timeout=ATTEMPT_TIMEOUT) as r:
            return r.status, f"status {r.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, f"status {exc.code}"
    except urllib.error.URLError as exc:
        return None, f"no answer ({exc.reason})"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"no answer ({type(exc).__name__}: {exc})"


def http_check(check: Check, deadline: float, app: AppProcess | None) -> dict[str, Any]:
    want = check.expect_status or 200
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    t0 = time.monotonic()
    end = t0 + deadline
    attempts = passes = 0
    last = "no attempt"
    while True:
        if app is not None and app.exited() is not None:
            return {"name": check.name, "ok": False,
                    "detail": f"expected status {want}, but the app exited with code {app.exited()} "
                              f"(last answer: {last})"}
        attempts += 1
        status, last = _status(opener, check.url or "")
        passes = passes + 1 if status == want else 0
        if passes >= PASSES:
            return {"name": check.name, "ok": True,
                    "detail": f"expected status {want}, got it {PASSES} times in a row ({attempts} attempt(s), "
                              f"{time.monotonic() - t0:.1f} s)"}
        if time.monotonic() >= end:
            return {"name": check.name, "ok": False,
                    "detail": f"expected status {want} {PASSES} times in a row within {deadline:.0f} s, got "
                              f"{last} (last of {attempts} attempt(s))"}
        time.sleep(max(0.0, min(INTERVAL, end - time.monotonic())))


class AppProcess:
    """The operator's application: its own process group, output into a file."""

    def __init__(self, app: App, env: dict[str, str], workdir: Path) -> None:
        self.app = app
        self.output = workdir / "drill-app-output.log"
        self.record: dict[str, Any] = {"command": list(app.command), "env": sorted(env), "started": False}
        base = {k: os.environ[k] for k in INHERITED if k in os.environ}
        self.env = {**base, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str | None:
        """Start it; the reason it could not start, or None."""
        try:
            with open(self.output, "wb") as out:
                self.proc = subprocess.Popen(self.app.command, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                                             cwd=self.output.parent)
        except OSError as exc:
            self.record["error"] = f"could not start {self.app.command[0]!r}: {exc.strerror or exc}"
            return self.record["error"]
        self.record.update(started=True, pid=self.proc.pid)
        return None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> dict[str, Any]:
        if self.proc is not None:
            how = "exited by itself"
            if self.proc.poll() is None:
                how = "stopped (SIGTERM)"
                self._signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    how = f"killed (SIGKILL: still running {STOP_GRACE:.0f} s after SIGTERM)"
                    self._signal(signal.SIGKILL)
                    self.proc.wait()
            # what the app left behind in its group (it may have spawned children) goes too
            self._signal(signal.SIGKILL)
            self.record.update(exit_code=self.proc.returncode, end=how)
        try:
            text = self.output.read_text(errors="replace")
        except OSError:
            text = ""
        self.record["output_truncated"] = len(text) > OUTPUT_LIMIT
        self.record["output"] = text[-OUTPUT_LIMIT:]
        return self.record

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]
        except (ProcessLookupError, PermissionError):
            pass


def run_user_checks(dumper: Dumper, result: RestoreResult, spec: DrillSpec,
                    workdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every check of ``spec`` against the restored instance of ``result``: (results, the app's
    record or None).  The app, when the checks need it, is started once and always stopped."""
    out = [data_check(dumper, result, c) for c in spec.checks if not c.http]
    web = [c for c in spec.checks if c.http]
    if not web or spec.app is None:
        return out, None
    restored = dumper.restored_env(result)
    if "DRKIT_RESTORED_URL" not in restored:
        reason = f"the {dumper.datastore} dumper gives no address of the restored instance"
        return out + [{"name": c.name, "ok": False, "detail": reason} for c in web], None
    env = {**restored, **spec.app.env, **{k: v for k, v in restored.items() if k.startswith("DRKIT_RESTORED_")}}
    app = AppProcess(spec.app, env, workdir)
    try:
        why = app.start()
        if why is not None:
            out += [{"name": c.name, "ok": False, "detail": f"the app did not start: {why}"} for c in web]
        else:
            out += [http_check(c, c.deadline or spec.app.ready_timeout, app) for c in web]
    finally:
        record = app.stop()
    return out, record
