"""The image's install steps (Dockerfile, build stage) in a clean virtualenv: dependencies from
requirements.lock only, each file's hash checked, then drkit without dependencies; the entry
point then works -- every command group loads, including each dumper's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_locked_install_gives_a_working_entry_point() -> None:
    work = Path(tempfile.mkdtemp(prefix="drkit-image-venv-", dir="/var/tmp"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=120)
        pip = [str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        for step in (["--require-hashes", "--no-deps", "-r", str(ROOT / "requirements.lock")],
                     ["--no-deps", str(ROOT)]):
            proc = subprocess.run(pip + step, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        check = subprocess.run([str(work / "venv" / "bin" / "python"), "-m", "pip", "check"],
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr  # the lock holds every runtime dependency
        drkit = str(work / "venv" / "bin" / "drkit")
        version = subprocess.run([drkit, "--version"], capture_output=True, text=True, timeout=60)
        assert version.returncode == 0 and "0.1" in version.stdout, version.stderr
        for group in (["backup"], ["restore"], ["pg", "receive"], ["redis", "follow"], ["mongodb", "follow"],
                      ["schedule", "run"], ["k8s", "render"], ["drill"], ["report", "quarterly"]):
            res = subprocess.run([drkit, *group, "--help"], capture_output=True, text=True, timeout=60,
                                 cwd=work)
            assert res.returncode == 0, (group, res.stdout, res.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
