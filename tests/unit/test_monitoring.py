"""The alert rules pass promtool's own tests; every dashboard query and rule names only metrics
drkit exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"


def exported() -> set[str]:
    text = (ROOT / "drkit" / "scheduling" / "metrics.py").read_text()
    return set(re.findall(r'Gauge\("(drkit_[a-z_]+)"', text))


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bdrkit_[a-z_]+", expr))


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:  # installed by scripts/install.sh (Debian's prometheus package); never skipped
        pytest.fail("promtool not found: run scripts/install.sh (it installs the prometheus package)")
    return found


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(MON / "alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=MON, capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_every_alert_is_tested_firing() -> None:
    rules = {r["alert"] for g in yaml.safe_load((MON / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((MON / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t.get("exp_alerts")}
    quiet = {t["alertname"] for case in tests for t in case["alert_rule_test"] if not t.get("exp_alerts")}
    assert rules == fired == quiet  # each fires where it should and stays quiet where it should not


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    have = exported() | {"drkit_job_last_exit_code"}
    rules = yaml.safe_load((MON / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert names_in(rule["expr"]) and names_in(rule["expr"]) <= have, rule["alert"]
    dash = json.loads((MON / "grafana" / "drkit-dashboard.json").read_text())
    assert dash["panels"]
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used = names_in(target["expr"])
            assert used and used <= have, (panel["title"], used - have)
    variable = dash["templating"]["list"][1]["query"]["query"]
    assert names_in(variable) <= have
