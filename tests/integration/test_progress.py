"""Long-running commands show a progress bar on stderr only when stderr is a terminal: ``drkit
backup`` and ``drkit restore`` of a real Redis under a pseudo-terminal show it (with the bytes the
repository writer took in), with plain pipes, ``--json`` or ``--log-format json`` they print
nothing extra."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading

from pgenv import DRKIT
from test_redis_dumper import PASSWORD, RedisEnv, renv  # noqa: F401 - the fixture


def under_pty(env: RedisEnv, *args: str) -> tuple[int, str, str]:  # noqa: F811
    """Run drkit with stderr on a pseudo-terminal (stdout a pipe); return (rc, stdout, the terminal's bytes)."""
    master, slave = os.openpty()
    out: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the slave
                return
            if not data:
                return
            out.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([DRKIT, "--config", str(env.config_path), *args], stdout=subprocess.PIPE,
                              stderr=slave, stdin=subprocess.DEVNULL, timeout=600, text=True,
                              env={**os.environ, "REDIS_PW": PASSWORD, "TERM": "xterm-256color",
                                   "COLUMNS": "120"})
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    return proc.returncode, proc.stdout, b"".join(out).decode(errors="replace")


def fill(env: RedisEnv) -> None:  # noqa: F811
    c = env.primary.client()
    c.flushall()
    blob = os.urandom(1 << 16).hex()  # 128 KiB values: ~40 MB, so the backup takes a while
    pipe = c.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"big:{i}", blob + str(i))
    pipe.execute()


BYTES = re.compile(r"\b([1-9][\d.]*|0\.\d*[1-9]\d*) (kB|MB|GB)\b")  # a non-zero byte count
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_backup_and_restore_show_progress_on_a_terminal_only(renv: RedisEnv) -> None:  # noqa: F811
    fill(renv)
    rc, stdout, tty = under_pty(renv, "backup", "cache")
    assert rc == 0, (stdout, tty)
    assert stdout.startswith("backup ") and "committed" in stdout  # the result still goes to stdout
    assert "\x1b[" in tty  # drawn with terminal control sequences (and erased when done)
    shown = ANSI.sub("", tty)
    assert "backup cache (full)" in shown and "━" in shown and BYTES.search(shown), shown[-2000:]

    # Log lines written meanwhile come out whole, above the bar (not appended to its line).
    rc, stdout, tty = under_pty(renv, "-v", "backup", "cache")
    assert rc == 0, tty
    lines = [seg for line in ANSI.sub("", tty).split("\n") for seg in line.split("\r")]
    logged = [seg for seg in lines if "backup of cache (full) committed" in seg]
    assert logged and all(re.match(r"\d{4}-\d\d-\d\d .* INFO drkit\.ops: backup of cache", seg) for seg in logged), \
        lines

    # Plain pipes: exactly what drkit printed before progress bars existed -- nothing on stderr.
    r = renv.drkit("backup", "cache")
    assert r.stderr == "" and r.stdout.startswith("backup ") and "committed" in r.stdout
    # A terminal, but machine-readable output: no bar either.
    rc, stdout, tty = under_pty(renv, "backup", "cache", "--json")
    assert rc == 0 and json.loads(stdout)["source"] == "cache" and tty == "", tty
    rc, stdout, tty = under_pty(renv, "--log-format", "json", "backup", "cache")
    assert rc == 0 and "backup cache" not in tty and not BYTES.search(tty), tty

    target = renv.root / "restored"
    rc, stdout, tty = under_pty(renv, "restore", "cache", "--target-dir", str(target))
    assert rc == 0 and stdout.startswith("restored cache"), (stdout, tty)
    assert "restore cache" in tty, tty[-2000:]
    r = renv.drkit("restore", "cache", "--target-dir", str(renv.root / "restored-2"))
    assert r.stderr == "" and r.stdout.startswith("restored cache")
