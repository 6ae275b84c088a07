"""``drkit list`` of a source that exists nowhere is an error naming what is known (exit 2)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

DRKIT = "/opt/drkit/venv/bin/drkit"


def test_list_of_an_unknown_source_exits_2_naming_the_known_ones(tmp_path: Path):
    key = tmp_path / "master.key"
    key.write_text(os.urandom(32).hex())
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(yaml.safe_dump({
        "repository": {"url": f"file://{tmp_path / 'repo'}"}, "encryption": {"key_file": str(key)},
        "sources": {"main": {"type": "postgres", "dsn": "host=127.0.0.1 port=1 user=postgres"}}}))
    (tmp_path / "repo").mkdir()
    run = lambda *a: subprocess.run([DRKIT, "--config", str(cfg), *a], capture_output=True, text=True)  # noqa: E731
    assert run("init").returncode == 0
    bad = run("list", "nosuch")
    assert bad.returncode == 2, bad.stderr
    assert "nosuch" in bad.stderr and "main" in bad.stderr
    good = run("list", "main", "--json")
    assert good.returncode == 0 and '"restore_points": []' in good.stdout
