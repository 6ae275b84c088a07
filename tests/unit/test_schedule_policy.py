"""Schedule policies and ``schedule lint`` (pure: no server, no waiting; time is passed in)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from drkit.config import load_config
from drkit.errors import ConfigError
from drkit.scheduling.lint import lint
from drkit.scheduling.policy import load_policies

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schedules"


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("DRKIT_MASTER_KEY", "unused")
    return load_config(EXAMPLES / "drkit.yaml")


def write(dirpath: Path, name: str, body: dict | str) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    p = dirpath / f"{name}.yaml"
    p.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return p


def test_the_seed_policy_fails_lint_with_the_arithmetic_and_the_fix(config) -> None:  # noqa: ANN001
    findings = lint(config, load_policies(EXAMPLES / "seed", config), live=False,
                    now=datetime(2026, 12, 7, 12, tzinfo=UTC))
    by = {f.source: f for f in findings}
    assert not any(f.ok for f in findings)
    assert by["records"].worst_rpo_seconds == 6 * 3600  # its incrementals are real: every 6 h
    assert "6 h" in by["records"].how and "continuous: true" in by["records"].fix
    assert by["main-pg"].worst_rpo_seconds == 24 * 3600  # WAL is not a cron job: only the fulls count
    assert "archive_timeout" in by["main-pg"].fix
    assert by["cache"].worst_rpo_seconds == 24 * 3600
    assert all(f.rpo_target_seconds == 15 * 60 for f in findings)
    assert "FAILS" in by["records"].text() and "fix:" in by["records"].text()


def test_the_continuous_policy_passes(config) -> None:  # noqa: ANN001
    findings = lint(config, load_policies(EXAMPLES / "continuous", config), live=False)
    assert all(f.ok for f in findings), [f.text() for f in findings]
    assert max(f.worst_rpo_seconds for f in findings) <= 15 * 60


def test_dst_change_lengthens_the_gap_of_a_daily_schedule(tmp_path: Path, config) -> None:  # noqa: ANN001
    write(tmp_path, "ny", {"sources": ["records"], "timezone": "America/New_York", "full": "0 0 * * *",
                           "targets": {"rpo": "24h"}})
    # US clocks go back on 2026-11-01: that night, midnight to midnight is 25 h.
    f = lint(config, load_policies(tmp_path, config), live=False, now=datetime(2026, 10, 28, tzinfo=UTC))[0]
    assert f.worst_rpo_seconds == 25 * 3600 and not f.ok
    f = lint(config, load_policies(tmp_path, config), live=False, now=datetime(2026, 12, 1, tzinfo=UTC))[0]
    assert f.worst_rpo_seconds == 24 * 3600 and f.ok


def test_cron_edges_uneven_hours_give_the_longest_stretch(tmp_path: Path, config) -> None:  # noqa: ANN001
    write(tmp_path, "p", {"sources": ["records"], "full": "0 0 * * *", "incremental": "0 8,12,16 * * 1-5",
                          "targets": {"rpo": "8h"}})
    f = lint(config, load_policies(tmp_path, config), live=False, now=datetime(2026, 12, 7, tzinfo=UTC))[0]
    assert f.worst_rpo_seconds == 24 * 3600  # weekends: only the fulls, midnight to midnight
    write(tmp_path, "p", {"sources": ["records"], "full": "0 0 * * *", "incremental": "0 8,12,16 * * *",
                          "targets": {"rpo": "8h"}})
    f = lint(config, load_policies(tmp_path, config), live=False, now=datetime(2026, 12, 7, tzinfo=UTC))[0]
    assert f.worst_rpo_seconds == 8 * 3600 and f.ok


def test_measured_backup_duration_adds_to_the_worst_case(tmp_path: Path, config) -> None:  # noqa: ANN001
    write(tmp_path, "p", {"sources": ["records"], "full": "0 * * * *", "targets": {"rpo": "1h"}})
    f = lint(config, load_policies(tmp_path, config), live=False, durations={"records": 300.0})[0]
    assert f.worst_rpo_seconds == 3900 and not f.ok and "5 min" in f.how


def test_policy_problems_name_file_line_and_field(tmp_path: Path, config) -> None:  # noqa: ANN001
    p = write(tmp_path, "bad", "sources: [records]\nfull: '61 * * * *'\ntimezone: Mars/Olympus\n"
              "targets:\n  rpo: soon\nsurprise: 1\n")
    with pytest.raises(ConfigError) as err:
        load_policies(tmp_path, config)
    text = str(err.value)
    assert f"{p}: line 2: full" in text and "cron" in text
    assert "line 3: timezone" in text and "IANA" in text
    assert "line 5: targets.rpo" in text
    assert "line 6: surprise: unknown setting" in text


def test_a_source_in_two_policies_or_with_retention_twice_is_refused(tmp_path: Path, config) -> None:  # noqa: ANN001
    write(tmp_path, "a", {"sources": ["records"], "full": "0 0 * * *"})
    write(tmp_path, "b", {"sources": ["records", "nosuch"], "full": "0 0 * * *"})
    with pytest.raises(ConfigError) as err:
        load_policies(tmp_path, config)
    assert "already scheduled by" in str(err.value) and "no source 'nosuch'" in str(err.value)
    shutil.rmtree(tmp_path)
    cfg_text = (EXAMPLES / "drkit.yaml").read_text().replace(
        "    read_preference: secondaryPreferred\n", "    read_preference: secondaryPreferred\n    retention:\n"
        "      keep_last: 3\n")
    (tmp_path / "cfg").mkdir(parents=True)
    (tmp_path / "cfg" / "drkit.yaml").write_text(cfg_text)
    both = load_config(tmp_path / "cfg" / "drkit.yaml")
    write(tmp_path / "cfg" / "schedules", "p", {"sources": ["records"], "full": "0 0 * * *",
                                                "retention": {"keep_last": 5}})
    with pytest.raises(ConfigError, match="also has sources.records.retention"):
        load_policies(tmp_path / "cfg" / "schedules", both)


def test_an_empty_or_missing_directory_is_a_clear_error(tmp_path: Path, config) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="no schedules directory"):
        load_policies(tmp_path / "none", config)
    with pytest.raises(ConfigError, match="holds no policy"):
        load_policies(tmp_path, config)
