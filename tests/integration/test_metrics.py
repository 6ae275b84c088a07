"""``drkit metrics``: the Prometheus text parses and holds the values of what just happened (compared
with ``list --json`` and the stored drill), through stdout and a node-exporter textfile."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_mongodb_dumper import MongoEnv, menv  # noqa: F401 - the fixture

from drkit.repository.manifest import parse_iso


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_hold_the_values_of_the_runs_that_just_happened(menv: MongoEnv) -> None:  # noqa: F811
    menv.src.c.insert_many([{"_id": i} for i in range(20)])
    full = json.loads(menv.drkit("backup", "m", "--json").stdout)
    menv.src.c.insert_one({"_id": "x"})
    menv.drkit("backup", "m", "--type", "incremental")
    drill = json.loads(menv.drkit("drill", "m", "--json").stdout)
    listing = menv.list()
    got = samples(menv.drkit("metrics").stdout)
    src = (("source", "m"),)
    assert got[("drkit_backup_last_success_timestamp_seconds", (("source", "m"), ("type", "full")))] == \
        pytest.approx(parse_iso(full["finished"]).timestamp())
    assert got[("drkit_newest_safe_timestamp_seconds", src)] == \
        pytest.approx(parse_iso(listing["newest_safe_time"]).timestamp())
    assert got[("drkit_rpo_seconds", src)] == pytest.approx(listing["current_rpo_seconds"], abs=5)
    assert got[("drkit_drill_rto_seconds", src)] == pytest.approx(drill["rto_seconds"])
    assert got[("drkit_drill_rpo_seconds", src)] == pytest.approx(drill["rpo_seconds"])
    assert got[("drkit_drill_last_success_timestamp_seconds", src)] == pytest.approx(
        parse_iso(drill["finished"]).timestamp())
    assert got[("drkit_log_backlog_segments", src)] == 0
    assert got[("drkit_backup_read_bytes_total", src)] == sum(b["size"] for b in listing["backups"])
    path = menv.root / "textfile" / "drkit.prom"
    path.parent.mkdir()
    menv.drkit("metrics", "--textfile", str(path))
    again = samples(path.read_text())
    assert again[("drkit_drill_rto_seconds", src)] == got[("drkit_drill_rto_seconds", src)]
    assert list(path.parent.iterdir()) == [path]  # written atomically: no temporary file left
