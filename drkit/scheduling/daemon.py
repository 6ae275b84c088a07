"""``drkit schedule run``: the long-running scheduler (APScheduler), its followers, /metrics and /health.

Each policy job is an APScheduler cron trigger in the policy's time zone (coalescing on, so a
backlog of missed fires is one run; a misfire grace so a late wake-up still runs).  When a trigger
fires, the daemon runs :func:`drkit.scheduling.due.due` for that source -- the same code as
``schedule due``, which decides from the repository whether the job is due and runs it under
``leases/job/<source>``.  So:

* after a restart (or SIGKILL) the daemon runs ``due`` once at start: a run missed while it was
  down runs once, not twice, and a run that already happened is not repeated -- what ran is in
  the repository, not in a local job store (any host, any pod, sees the same thing; a SQLite
  job store would only be a second, disagreeing record);
* two daemons on one repository do not both run a job: the job lease serialises them, and the
  second then finds the job not due.

It also supervises the continuous jobs the policies ask for (``continuous: true`` and a dumper
with a follower command, e.g. ``drkit redis follow``, ``drkit mongodb follow``): each runs as a
child process and is restarted with back-off when it exits.  HTTP on ``--listen`` (default
127.0.0.1:9464): ``/metrics`` (Prometheus text, computed from the repository per scrape) and
``/health`` (200 while the scheduler runs and no job's last run failed, else 503 with the reason).

SIGTERM/SIGINT: no new job starts; a running job gets ``--stop-timeout`` seconds to finish
(then the process exits and the job's lease expires -- a backup that did not commit left nothing
visible); followers get SIGTERM (they seal their open slice).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from drkit.config import Config

from .policy import Policy

log = logging.getLogger(__name__)


@dataclass
class State:
    started: float = field(default_factory=time.time)
    runs: int = 0
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> last job result
    running: set[str] = field(default_factory=set)
    followers: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def unhealthy(self) -> list[str]:
        with self.lock:
            bad = [f"{s}: {r['job']} {r['action']}: {r['detail']}" for s, r in self.last.items()
                   if r.get("exit_code")]
            bad += [f"follower of {s} restarting ({f.get('exits', 0)} exits)" for s, f in self.followers.items()
                    if f.get("exits", 0) >= 3 and not f.get("alive")]
        return bad


class Daemon:
    def __init__(self, config: Config, policies: list[Policy], *, config_path: str | None, wait: float = 600.0,
                 stop_timeout: float = 300.0, listen: tuple[str, int] | None = ("127.0.0.1", 9464),
                 followers: bool = True, jobs: bool = True) -> None:
        self.config, self.policies = config, policies
        self.with_jobs = jobs  # False: followers and /metrics only (the jobs run as CronJobs)
        self.config_path = config_path
        self.wait, self.stop_timeout = wait, stop_timeout
        self.listen = listen
        self.with_followers = followers
        self.state = State()
        self.stopping = threading.Event()
        self._jobs = threading.Semaphore(1)  # one job at a time (per source: the job lease)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self.http: ThreadingHTTPServer | None = None

    # -- jobs -------------------------------------------------------------------------------------
    def run_due(self, sources: list[str] | None = None) -> None:
        if self.stopping.is_set():
            return
        from drkit import ops

        from .due import due

        with self._jobs:
            if self.stopping.is_set():
                return
            names = sources or [s for p in self.policies for s in p.sources]
            with self.state.lock:
                self.state.running.update(names)
            try:
                report = due(self.config, ops.open_repository(self.config), self.policies, names, wait=self.wait)
                with self.state.lock:
                    self.state.runs += 1
                    for j in report.jobs:
                        if j.action != "not due" or j.source not in self.state.last:
                            self.state.last[j.source] = j.as_dict()
                for j in report.jobs:
                    log.info("schedule %s: %s %s: %s %s", j.policy, j.source, j.job, j.action, j.detail)
            except Exception as exc:  # noqa: BLE001 - a failed run is reported, the daemon goes on
                log.error("schedule run for %s failed: %s", ", ".join(names), exc)
                with self.state.lock:
                    for n in names:
                        self.state.last[n] = {"job": "all", "action": "failed", "detail": str(exc), "exit_code": 1}
            finally:
                with self.state.lock:
                    self.state.running.difference_update(names)

    # -- followers ----------------------------------------------------------------------------------
    def _follower_argv(self, source: str) -> list[str] | None:
        from drkit.dumpers import dumper_for

        cmd = dumper_for(self.config, source).follower_command(source)
        if cmd is None:
            return None
        base = [sys.executable, "-m", "drkit"]
        if self.config_path:
            base += ["--config", self.config_path]
        return base + cmd

    def _supervise(self) -> None:
        backoff: dict[str, float] = {}
        next_start: dict[str, float] = {}
        wanted = [s for p in self.policies if p.continuous for s in p.sources]
        while not self.stopping.is_set():
            for source in wanted:
                argv = self._follower_argv(source)
                if argv is None:
                    continue
                child = self._children.get(source)
                info = self.state.followers.setdefault(source, {"exits": 0, "alive": False})
                if child is not None and child.poll() is None:
                    info["alive"] = True
                    backoff[source] = 1.0
                    continue
                if child is not None:
                    info["exits"] += 1
                    info["alive"] = False
                    info["last_exit"] = child.returncode
                    self._children.pop(source)
                    next_start[source] = time.monotonic() + backoff.get(source, 1.0)
                    backoff[source] = min(60.0, backoff.get(source, 1.0) * 2)
                    log.warning("follower of %s exited with %s; restarting in %.0f s", source, child.returncode,
                                next_start[source] - time.monotonic())
                if time.monotonic() >= next_start.get(source, 0.0):
                    self._children[source] = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
                    info["pid"] = self._children[source].pid
                    info["alive"] = True
            self.stopping.wait(1.0)

    # -- HTTP -------------------------------------------------------------------------------------
    def _serve(self) -> None:
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: the daemon logs what matters
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.startswith("/metrics"):
                    try:
                        from drkit import ops

                        from .metrics import add_job_results, registry, render

                        reg = registry(daemon.config, ops.open_repository(daemon.config))
                        with daemon.state.lock:
                            add_job_results(reg, dict(daemon.state.last))
                        body = render(reg).encode()
                        self._send(200, body, "text/plain; version=0.0.4")
                    except Exception as exc:  # noqa: BLE001
                        self._send(500, f"metrics failed: {exc}\n".encode(), "text/plain")
                elif self.path.startswith("/health"):
                    bad = daemon.state.unhealthy()
                    with daemon.state.lock:
                        body = json.dumps({"ok": not bad, "problems": bad, "runs": daemon.state.runs,
                                           "running": sorted(daemon.state.running),
                                           "followers": daemon.state.followers}, default=str).encode()
                    self._send(503 if bad else 200, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        assert self.listen is not None
        self.http = ThreadingHTTPServer(self.listen, Handler)
        log.info("serving /metrics and /health on http://%s:%d", *self.http.server_address[:2])
        self.http.serve_forever()

    # -- main -------------------------------------------------------------------------------------
    def run(self, duration: float | None = None) -> State:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger

        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                      "misfire_grace_time": 3600})
        for p in self.policies if self.with_jobs else []:
            for job, cron in p.jobs().items():
                scheduler.add_job(self.run_due, CronTrigger.from_crontab(cron, timezone=p.zone), args=[list(p.sources)],
                                  id=f"{p.name}:{job}", name=f"{p.name} {job}")
        threads = []
        if self.listen is not None:
            threads.append(threading.Thread(target=self._serve, name="drkit-http", daemon=True))
        if self.with_followers:
            threads.append(threading.Thread(target=self._supervise, name="drkit-followers", daemon=True))
        for t in threads:
            t.start()
        scheduler.start()
        if self.with_jobs:
            catch_up = threading.Thread(target=self.run_due, name="drkit-catch-up", daemon=True)
            catch_up.start()  # what was missed while the daemon was down, once
        deadline = time.monotonic() + duration if duration else None
        try:
            while not self.stopping.is_set() and not (deadline and time.monotonic() > deadline):
                self.stopping.wait(0.5)
        finally:
            self.stopping.set()
            scheduler.shutdown(wait=False)
            if not self._jobs.acquire(timeout=self.stop_timeout):
                log.error("a job did not finish within %.0f s of the stop; exiting (its lease expires, an "
                          "uncommitted backup leaves nothing visible)", self.stop_timeout)
            for source, child in self._children.items():
                if child.poll() is None:
                    child.terminate()
                    try:
                        child.wait(60)
                    except subprocess.TimeoutExpired:
                        child.kill()
                    log.info("follower of %s stopped", source)
            if self.http is not None:
                self.http.shutdown()
        return self.state
